package web_test

import (
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/web"
)

// reversedOf is the sum of the reversals of a transfer.
func reversedOf(t *testing.T, tn *nodetest.Node, id string) int64 {
	t.Helper()
	var n int64
	if err := tn.DB.R.QueryRowContext(t.Context(), `SELECT COALESCE(SUM(amount), 0) FROM ledger_journal WHERE type = 'reversal' AND ref = $1`, refSeq(t, id)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func disputeStatus(t *testing.T, w *web.Web, rid, id string) string {
	t.Helper()
	ds, err := w.Disputes(t.Context(), rid, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.ID == id {
			return d.Status
		}
	}
	t.Fatalf("no dispute %s", id)
	return ""
}

// TestMoneyDisputeOfReversedCharge: a disputed charge that was reversed
// another way meanwhile (finance's reversal endpoint, a federation void) is
// never refunded beyond what was charged, and the dispute does not get
// stuck: reversed in part, the refund pays back the rest; reversed in
// full, the refund is refused and the dispute stays open (it can be
// rejected). A charge already reversed in full cannot be disputed. The
// books balance and the resident gets back exactly the charge.
func TestMoneyDisputeOfReversedCharge(t *testing.T) {
	eachBackend(t, 2, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		w, res, rid, wallet, prov := disputeSetup(t, tn)
		staff := auth.Principal{Kind: auth.KindStaff, Subject: "fin-test", Role: auth.RoleFinance}
		start := balance(t, tn, wallet)
		charge := func(key string) ledger.Transfer {
			tr, err := tn.Ledger.Transfer(ctx, ledger.TransferRequest{Key: key, Debit: wallet, Credit: prov, Amount: 200, Kind: "charge"})
			if err != nil {
				t.Fatal(err)
			}
			return tr
		}

		// Reversed in part (50 of 200) after the dispute was opened: the
		// refund pays back the other 150.
		c1 := charge("rv-1")
		d1, err := w.OpenDispute(ctx, rid, res.CardNumber, c1.ID, "charged twice")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tn.Ledger.Reverse(ctx, "fin-partial", c1.ID, 50); err != nil {
			t.Fatal(err)
		}
		got, err := w.RefundDispute(ctx, staff, d1.ID, "")
		if err != nil {
			t.Fatalf("refunding a charge reversed in part: %v (dispute %s)", err, disputeStatus(t, w, rid, d1.ID))
		}
		if got.Status != web.DisputeRefunded || reversedOf(t, tn, c1.ID) != 200 {
			t.Fatalf("dispute %+v, %d reversed of 200", got, reversedOf(t, tn, c1.ID))
		}
		// A retry (double click, timeout) changes nothing.
		if _, err := w.RefundDispute(ctx, staff, d1.ID, ""); apperr.CodeOf(err) != apperr.Conflict {
			t.Fatalf("a second refund: %v", err)
		}

		// Reversed in full after the dispute was opened: nothing more is
		// refunded, and the dispute can still be resolved.
		c2 := charge("rv-2")
		d2, err := w.OpenDispute(ctx, rid, res.CardNumber, c2.ID, "not me")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tn.Ledger.Reverse(ctx, "fin-full", c2.ID, 200); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if _, err := w.RefundDispute(ctx, staff, d2.ID, ""); err == nil {
				t.Fatal("refunded a charge already reversed in full")
			}
		}
		if st := disputeStatus(t, w, rid, d2.ID); st != web.DisputeOpen {
			t.Fatalf("dispute of a charge reversed meanwhile is %q, want open", st)
		}
		if _, err := w.RejectDispute(ctx, staff, d2.ID, "already refunded by finance"); err != nil {
			t.Fatalf("rejecting it: %v", err)
		}

		// Reversed in full before any dispute: nothing to dispute.
		c3 := charge("rv-3")
		if _, err := tn.Ledger.Reverse(ctx, "fin-full-3", c3.ID, 200); err != nil {
			t.Fatal(err)
		}
		if _, err := w.OpenDispute(ctx, rid, res.CardNumber, c3.ID, "not me"); err == nil {
			t.Fatal("disputed a charge already reversed in full")
		}

		if got := balance(t, tn, wallet); got != start {
			t.Fatalf("wallet %d, want %d (three charges, each refunded exactly once)", got, start)
		}
		for _, c := range []ledger.Transfer{c1, c2, c3} {
			if r := reversedOf(t, tn, c.ID); r != 200 {
				t.Fatalf("%s: %d reversed of 200", c.ID, r)
			}
		}
		ledgerOK(t, tn)
	})
}
