package web_test

import (
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestSubsidyPayoutListWithBOM: a payout list saved by Excel as UTF-8 CSV
// starts with a byte order mark; its first line is paid like the others.
func TestSubsidyPayoutListWithBOM(t *testing.T) {
	eachBackend(t, 3, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		if _, err := tn.Subsidies.CreateProgramme(ctx, "bom-2026", "BOM"); err != nil {
			t.Fatal(err)
		}
		if _, err := tn.Subsidies.Fund(ctx, "bom-2026", "fund-bom", 1000); err != nil {
			t.Fatal(err)
		}
		hr := newBrowser(t, tn.URL).staffAs(tn, "hr_admin")
		r := tn.Demo.Residents
		for _, list := range []string{
			"\ufeff" + r[0].IDNumber + ",1.00,ref-bom-1\n" + r[1].CardNumber + ",2,ref-bom-2\n", // yuan, without a header
			"\ufeff\"" + r[2].IDNumber + "\",3.00,ref-bom-3\n",                                  // a quoted first field
		} {
			snap, page := payList(t, hr, "bom-2026", list)
			if n := strings.Count(list, "\n"); snap.Total != n || snap.Paid != n || snap.Refused != 0 || strings.Contains(page, "查无此人") {
				t.Fatalf("list %q: %+v %.2000s", list, snap, page)
			}
		}
		if got := balance(t, tn, ledger.ProgrammeID("bom-2026")); got != 400 {
			t.Fatalf("programme left %d fen, want 400", got)
		}
	})
}

var fundFormRe = regexp.MustCompile(`<form method="post" action="(/console/subsidies/[^"]*/fund)"[^>]*><input type="hidden" name="csrf" value="[^"]*"><input type="hidden" name="key" value="([^"]+)">`)

// fundForms returns the fund forms of the subsidies page: action → key.
func fundForms(t *testing.T, b *browser) map[string]string {
	t.Helper()
	_, page, _ := b.do("GET", "/console/subsidies", nil)
	out := map[string]string{}
	for _, m := range fundFormRe.FindAllStringSubmatch(page, -1) {
		out[html.UnescapeString(m[1])] = m[2]
	}
	return out
}

// TestSubsidyProgrammeIDsInConsole: the console refuses unsafe programme
// ids, and a programme made with such an id before they were refused is
// still funded through its (path-escaped) form.
func TestSubsidyProgrammeIDsInConsole(t *testing.T) {
	eachBackend(t, 1, func(t *testing.T, tn *nodetest.Node) {
		fin := newBrowser(t, tn.URL).staffAs(tn, "finance")
		tok := fin.csrf("/console/subsidies")
		for _, id := range []string{"../x", "a/b", "a?b#c", ".", "%2e%2e", "Heating"} {
			st, body, _ := fin.do("POST", "/console/subsidies", url.Values{"csrf": {tok}, "id": {id}, "label": {"x"}})
			if st != http.StatusUnprocessableEntity || !strings.Contains(body, "补贴项目编号") {
				t.Fatalf("id %q: %d %.400s", id, st, body)
			}
		}
		legacy := []string{"../x", "a/b", "a?b#c", "%2e%2e", "Old-Programme"}
		for _, id := range legacy {
			if _, err := tn.Ledger.CreateAccount(t.Context(), ledger.Account{ID: ledger.ProgrammeID(id), Kind: ledger.KindSubsidy, Label: "legacy " + id}); err != nil {
				t.Fatal(err)
			}
		}
		forms := fundForms(t, fin)
		for _, id := range legacy {
			action := "/console/subsidies/" + url.PathEscape(id) + "/fund"
			key, ok := forms[action]
			if !ok {
				t.Fatalf("no fund form %s for %q among %v", action, id, forms)
			}
			st, body, h := fin.do("POST", action, url.Values{"csrf": {tok}, "key": {key}, "amount": {"1.00"}})
			if st != http.StatusSeeOther || h.Get("Location") != "/console/subsidies?m=funded" {
				t.Fatalf("fund %q: %d %.400s", id, st, body)
			}
			if got := balance(t, tn, ledger.ProgrammeID(id)); got != 100 {
				t.Fatalf("programme %q holds %d fen, want 100", id, got)
			}
		}
	})
}

// TestSubsidyFundFormsOwnKeys: every fund form on the page has its own
// idempotency key, so funding two programmes from one page funds both,
// and submitting one form twice still funds once.
func TestSubsidyFundFormsOwnKeys(t *testing.T) {
	eachBackend(t, 1, func(t *testing.T, tn *nodetest.Node) {
		for _, id := range []string{"prog-a", "prog-b"} {
			if _, err := tn.Subsidies.CreateProgramme(t.Context(), id, id); err != nil {
				t.Fatal(err)
			}
		}
		fin := newBrowser(t, tn.URL).staffAs(tn, "finance")
		tok := fin.csrf("/console/subsidies")
		forms := fundForms(t, fin) // one rendered page
		keys := map[string]bool{}
		for _, k := range forms {
			keys[k] = true
		}
		if len(forms) < 2 || len(keys) != len(forms) {
			t.Fatalf("fund forms and keys: %v", forms)
		}
		for _, id := range []string{"prog-a", "prog-b", "prog-a"} {
			action := "/console/subsidies/" + id + "/fund"
			st, body, _ := fin.do("POST", action, url.Values{"csrf": {tok}, "key": {forms[action]}, "amount": {"2.50"}})
			if st != http.StatusSeeOther {
				t.Fatalf("fund %s: %d %.400s", id, st, body)
			}
		}
		for _, id := range []string{"prog-a", "prog-b"} {
			if got := balance(t, tn, ledger.ProgrammeID(id)); got != 250 {
				t.Fatalf("programme %s holds %d fen, want 250", id, got)
			}
		}
	})
}
