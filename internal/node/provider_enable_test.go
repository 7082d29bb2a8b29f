package node_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// A provider disabled (a contract lapsed) is let back in by the operator:
// its staff sign in again (their old sessions stay ended), terminals can
// be onboarded, and its old terminals stay disabled until each is given
// new credentials.
func TestEnableProvider(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 5})
	op := tn.Client(tn.Demo.Staff["operator"].Token)
	var bus node.DemoTerminal
	for _, tm := range tn.Demo.Terminals {
		if tm.Scenario == "transit.bus" {
			bus = tm
		}
	}
	card := tn.Demo.Residents[0].CardNumber
	k := 0
	scan := func(token string) int {
		k++
		return nodetest.NewClient(tn.URL, token).Do(t, "POST", "/v1/scans", map[string]any{
			"idempotency_key": fmt.Sprintf("en-%d-%d", time.Now().UnixNano(), k), "scenario": "transit.bus", "card_number": card}).Status
	}
	password, oldSession := providerStaff(t, tn, bus.Provider, "bus_sun")
	signIn := func() (int, string) {
		r := nodetest.NewClient(tn.URL, "").Do(t, "POST", "/v1/auth/staff", map[string]string{"user": "bus_sun", "password": password})
		var tok struct {
			Token string `json:"token"`
		}
		if r.Status == 200 {
			r.Decode(t, &tok)
		}
		return r.Status, tok.Token
	}
	takings := func(token string) int {
		return tn.Client(token).Do(t, "GET", "/v1/providers/"+bus.Provider+"/takings", nil).Status
	}

	op.JSON(t, "POST", "/v1/providers/"+bus.Provider+"/disable", nil, 200, nil)
	if st, _ := signIn(); st == 200 {
		t.Fatal("staff of a disabled provider signed in")
	}
	if r := op.Do(t, "POST", "/v1/providers/"+bus.Provider+"/terminals", map[string]any{"name": "new gate"}); r.Status != 409 {
		t.Fatalf("onboarding for a disabled provider: %d %s", r.Status, r.Code())
	}

	// Only the operator; an unknown provider is not found.
	if r := tn.Client(tn.Demo.Staff["hr_admin"].Token).Do(t, "POST", "/v1/providers/"+bus.Provider+"/enable", nil); r.Status != 403 {
		t.Fatalf("hr_admin enabling a provider: %d", r.Status)
	}
	if r := op.Do(t, "POST", "/v1/providers/prv_nosuch/enable", nil); r.Status != 404 || r.Code() != "not_found" {
		t.Fatalf("unknown provider: %d %s", r.Status, r.Code())
	}

	var p terminal.Provider
	op.JSON(t, "POST", "/v1/providers/"+bus.Provider+"/enable", nil, 200, &p)
	if p.Disabled || p.ID != bus.Provider {
		t.Fatalf("enabled provider: %+v", p)
	}
	st, fresh := signIn()
	if st != 200 || takings(fresh) != 200 {
		t.Fatalf("staff after enable: sign-in %d", st)
	}
	if s := takings(oldSession); s != 401 {
		t.Fatalf("a session ended by the disable works again: %d", s)
	}
	// The old terminal stays disabled; new credentials bring it back.
	if s := scan(bus.Token); s == 200 {
		t.Fatal("a terminal of the re-enabled provider scans with its revoked token")
	}
	var listed []terminal.Terminal
	op.JSON(t, "GET", "/v1/providers/"+bus.Provider+"/terminals", nil, 200, &listed)
	for _, tm := range listed {
		if tm.ID == bus.ID && !tm.Disabled {
			t.Fatalf("old terminal listed enabled after the provider's enable: %+v", tm)
		}
	}
	var re node.ReissuedTerminal
	op.JSON(t, "POST", "/v1/terminals/"+bus.ID+"/credentials", nil, 200, &re)
	if s := scan(re.Credentials.Token); s != 200 {
		t.Fatalf("reissued terminal of the re-enabled provider: %d", s)
	}
	op.JSON(t, "POST", "/v1/providers/"+bus.Provider+"/terminals", map[string]any{"name": "new gate"}, 201, nil)

	// Enabling again changes nothing and is not audited again.
	op.JSON(t, "POST", "/v1/providers/"+bus.Provider+"/enable", nil, 200, &p)
	if rows := auditRows(t, tn, "enable_provider", bus.Provider); len(rows) != 1 {
		t.Fatalf("enable_provider audited %d times, want 1: %+v", len(rows), rows)
	}
}

// Provider and terminal names are counted in characters, as the console's
// forms count them: 100 Chinese characters (300 bytes) are a name, 101
// are not.
func TestNamesCountCharacters(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 1})
	op := tn.Client(tn.Demo.Staff["operator"].Token)
	long := strings.Repeat("郑", 100)
	var p terminal.Provider
	op.JSON(t, "POST", "/v1/providers", map[string]any{"name": long, "kind": "transit", "scenarios": []string{"transit.bus"}}, 201, &p)
	op.JSON(t, "POST", "/v1/providers/"+p.ID+"/terminals", map[string]any{"name": long}, 201, nil)
	r := op.Do(t, "POST", "/v1/providers", map[string]any{"name": long + "州", "kind": "transit", "scenarios": []string{"transit.bus"}})
	if r.Status != 422 || !strings.Contains(r.Problem()["detail_zh"].(string), "100个字符") {
		t.Fatalf("101 characters: %d %s", r.Status, r.Body)
	}
}
