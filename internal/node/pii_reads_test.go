package node_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestStaffReadsOfPersonalDataAreAudited: a search is recorded under each
// resident it showed; card and resident-account reads by staff are
// recorded before they are answered (a resident reading their own is
// not); and no staff view shows the birth date beside the masked ID
// number (the two together give the full number) unless the number is
// revealed.
func TestStaffReadsOfPersonalDataAreAudited(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	d := tn.Demo
	hr := tn.Client(d.Staff["hr_admin"].Token)
	fin := tn.Client(d.Staff["finance"].Token)
	r0 := d.Residents[0]
	audited := func(subject, action string) int {
		var log []struct{ Action, Subject, Actor string }
		hr.JSON(t, "GET", "/v1/audit?limit=500&subject="+subject, nil, 200, &log)
		n := 0
		for _, e := range log {
			if e.Action == action {
				n++
			}
		}
		return n
	}

	var found []map[string]any
	hr.JSON(t, "GET", "/v1/residents?q="+r0.CardNumber, nil, 200, &found)
	if len(found) != 1 || found[0]["id"] != r0.ResidentID {
		t.Fatalf("search: %v", found)
	}
	if _, ok := found[0]["birth_date"]; ok || found[0]["birth_year"] == nil {
		t.Fatalf("search shows the birth date beside the masked number: %v", found[0])
	}
	if audited(r0.ResidentID, "search_residents") != 1 {
		t.Fatal("the search is not recorded under the resident it showed")
	}
	// The same search by ID number in a body, not a URL.
	var byID []map[string]any
	hr.JSON(t, "POST", "/v1/residents/search", map[string]any{"q": r0.IDNumber}, 200, &byID)
	if len(byID) != 1 || byID[0]["id"] != r0.ResidentID || byID[0]["id_number"] != nil {
		t.Fatalf("search by ID number: %v", byID)
	}
	if audited(r0.ResidentID, "search_residents") != 2 {
		t.Fatal("the posted search is not audited")
	}
	if r := hr.Do(t, "POST", "/v1/residents/search", map[string]any{"q": " "}); r.Status != 422 {
		t.Fatalf("an empty search: %d %s", r.Status, r.Body)
	}

	var view map[string]any
	hr.JSON(t, "GET", "/v1/residents/"+r0.ResidentID, nil, 200, &view)
	if _, ok := view["birth_date"]; ok {
		t.Fatalf("read shows the birth date: %v", view)
	}
	hr.JSON(t, "GET", "/v1/residents/"+r0.ResidentID+"?reveal=id_number", nil, 200, &view)
	if view["birth_date"] == nil || view["id_number"] != r0.IDNumber {
		t.Fatalf("reveal: %v", view)
	}

	hr.JSON(t, "GET", "/v1/cards/"+r0.CardNumber, nil, 200, nil)
	if audited(r0.CardNumber, "read_card") != 1 {
		t.Fatal("card read not audited")
	}

	wallet := "w:" + r0.ResidentID
	fin.JSON(t, "GET", "/v1/accounts/"+wallet, nil, 200, nil)
	fin.JSON(t, "GET", "/v1/accounts/"+wallet+"/statement", nil, 200, nil)
	if audited(wallet, "read_account") != 1 || audited(wallet, "read_statement") != 1 {
		t.Fatal("staff reads of a wallet not audited")
	}
	// A provider's account is not personal data: not recorded.
	fin.JSON(t, "GET", "/v1/accounts/ext:bank", nil, 200, nil)
	if audited("ext:bank", "read_account") != 0 {
		t.Fatal("a non-personal account read was recorded")
	}
	// The resident reading their own wallet is not a staff read.
	var login struct{ Token string }
	tn.Client("").JSON(t, "POST", "/v1/auth/resident", map[string]any{"card_number": r0.CardNumber, "pin": r0.PIN}, 200, &login)
	tn.Client(login.Token).JSON(t, "GET", "/v1/accounts/"+wallet, nil, 200, nil)
	if audited(wallet, "read_account") != 1 {
		t.Fatal("the resident's own read was recorded as a staff read")
	}
}

// TestStatementCounterpartsAreAudited: a provider's statement names the
// resident wallet behind each fare (with terminal, scenario and time), so
// a staff read of it is recorded under each of those residents' accounts,
// once per page; the provider's account itself is not personal data.
func TestStatementCounterpartsAreAudited(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	d := tn.Demo
	hr := tn.Client(d.Staff["hr_admin"].Token)
	fin := tn.Client(d.Staff["finance"].Token)
	bus := demoTerminal(t, d, "transit.bus")
	riders := d.Residents[:3]
	for i, r := range riders {
		for j := 0; j < 2; j++ { // two rides each: one audit row per resident, not per line
			tn.Client(bus.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": fmt.Sprintf("cp-%d-%d", i, j), "scenario": "transit.bus", "card_number": r.CardNumber}, 200, nil)
		}
	}
	reads := func(subject string) (n int, detail string) {
		var log []struct{ Action, Subject, Detail string }
		hr.JSON(t, "GET", "/v1/audit?limit=500&subject="+subject, nil, 200, &log)
		for _, e := range log {
			if e.Action == "read_statement" {
				n++
				detail = e.Detail
			}
		}
		return n, detail
	}
	var page struct {
		Entries []struct{ Debit, Credit string }
	}
	prv := "prv:" + bus.Provider
	fin.JSON(t, "GET", "/v1/accounts/"+prv+"/statement", nil, 200, &page)
	shown := map[string]bool{}
	for _, e := range page.Entries {
		shown[e.Debit] = true
	}
	for _, r := range riders {
		w := "w:" + r.ResidentID
		if !shown[w] {
			t.Fatalf("the provider's statement does not show %s: %+v", w, page.Entries)
		}
		if n, detail := reads(w); n != 1 || !strings.Contains(detail, prv) {
			t.Fatalf("%s: %d read_statement records (%q), want 1 naming %s", w, n, detail, prv)
		}
	}
	if n, _ := reads(prv); n != 0 {
		t.Fatalf("the provider's own account was recorded %d times as personal data", n)
	}
}
