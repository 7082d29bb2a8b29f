package web_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestConsoleDisputesReadIsAudited: the disputes page shows a
// resident's card number, charge and own words to staff; like every staff
// read of personal data it is recorded in the audit log (by resident)
// before it is shown.
func TestConsoleDisputesReadIsAudited(t *testing.T) {
	t.Parallel()
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 2})
	ctx := t.Context()
	w, res, rid, wallet, prov := disputeSetup(t, tn)
	tr, err := tn.Ledger.Transfer(ctx, ledger.TransferRequest{Key: "review-disp-1", Debit: wallet, Credit: prov, Amount: 200, Kind: "charge"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.OpenDispute(ctx, rid, res.CardNumber, tr.ID, "not me"); err != nil {
		t.Fatal(err)
	}
	audited := func(actor string) int {
		var n int
		if err := tn.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM audit_log WHERE actor = $1 AND subject = $2`, actor, rid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, role := range []string{"finance", "hr_admin"} {
		s := tn.Demo.Staff[role]
		b := newBrowser(t, tn.URL)
		b.staffLogin(s.User, s.Password)
		actor := ""
		if err := tn.DB.R.QueryRowContext(ctx, `SELECT actor FROM audit_log WHERE action = 'console_sign_in' AND actor_role = $1 ORDER BY id DESC LIMIT 1`, role).Scan(&actor); err != nil {
			t.Fatal(err)
		}
		before := audited(actor)
		st, body, _ := b.do("GET", "/console/disputes", nil)
		if st != http.StatusOK || !strings.Contains(body, res.CardNumber) {
			t.Fatalf("%s: disputes page %d %.400s", role, st, body)
		}
		if audited(actor) <= before {
			t.Fatalf("%s saw resident %s's dispute (card %s) with no audit record", role, rid, res.CardNumber)
		}
		// Only finance refunds (a ledger reversal): hr_admin is not
		// offered a button the server would refuse.
		if offered := strings.Contains(body, "/refund\""); offered != (role == "finance") {
			t.Fatalf("%s: refund offered %v", role, offered)
		}
		// A rejection refused (its reason too long) keeps what was typed
		// in that dispute's form.
		if role == "hr_admin" {
			var id string
			if err := tn.DB.R.QueryRowContext(ctx, `SELECT id FROM disputes WHERE resident_id = $1`, rid).Scan(&id); err != nil {
				t.Fatal(err)
			}
			long := strings.Repeat("票", 501)
			st, page, _ := b.do("POST", "/console/disputes/"+id+"/reject", url.Values{"csrf": {b.csrf("/console/disputes")}, "reason": {long}})
			if st == http.StatusSeeOther || !strings.Contains(page, `value="`+long+`"`) {
				t.Fatalf("a refused rejection: %d, reason kept %v", st, strings.Contains(page, long))
			}
		}
	}
}

// TestConsoleScenarioFormInChinese: the scenario rules form names the
// scenario's kind and the fields a provider may see in words (the code
// beside them), not only as machine names on a Chinese page.
func TestConsoleScenarioFormInChinese(t *testing.T) {
	t.Parallel()
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 1})
	s := tn.Demo.Staff["hr_admin"]
	b := newBrowser(t, tn.URL)
	b.staffLogin(s.User, s.Password)
	st, body, _ := b.do("GET", "/console/scenarios/transit.bus", nil)
	if st != http.StatusOK {
		t.Fatalf("%d %.300s", st, body)
	}
	for _, want := range []string{"<b>收费</b>", "姓名（脱敏）", "扣款金额"} {
		if !strings.Contains(body, want) {
			t.Fatalf("scenario form lacks %q:\n%s", want, body)
		}
	}
}
