package web_test

import (
	"context"
	"testing"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/web"
)

// TestMoneyDisputeOfCrossCityCharge: a charge that A's resident incurred
// in city B is booked at home from the wallet to A's clearing account
// for B, mirrored by B's clearing account for A. Refunding it at home
// alone would move A's clearing account (A would owe B less) while B's
// books and the day's statement still say A owes the fare, and a later
// void of the charge by B could no longer be reversed. So A's staff may
// not refund it: the refund is refused, nothing moves, and the two
// clearing accounts still mirror each other.
func TestMoneyDisputeOfCrossCityCharge(t *testing.T) {
	t.Parallel()
	a, b := startFedPair(t)

	ctx := context.Background()
	res := a.demo.Residents[0]
	code, _, err := a.IssueCode(ctx, res.CardNumber)
	if err != nil {
		t.Fatal(err)
	}
	var term node.DemoTerminal
	for _, tm := range b.demo.Terminals {
		if tm.Scenario == "transit.bus" {
			term = tm
		}
	}
	var ans struct {
		Decision   string `json:"decision"`
		ChargedFen int64  `json:"charged_fen"`
	}
	nodetest.NewClient(b.url, term.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "xc-bus-1", "scenario": "transit.bus", "code": code}, 200, &ans)
	if ans.Decision != "accepted" || ans.ChargedFen <= 0 {
		t.Fatalf("bus at B: %+v", ans)
	}
	waitFor(t, "the outboxes to drain", func() bool {
		na, ea := a.Fed.Pending(ctx)
		nb, eb := b.Fed.Pending(ctx)
		return ea == nil && eb == nil && na == 0 && nb == 0
	})
	clr := func(c *fedCity, peer string) int64 {
		x, err := c.Ledger.Balance(ctx, ledger.ClearingID(peer))
		if err != nil {
			t.Fatal(err)
		}
		return x.Balance
	}
	mirror := func(when string) {
		t.Helper()
		if ab, ba := clr(a, b.id), clr(b, a.id); ab+ba != 0 || ab != ans.ChargedFen {
			t.Fatalf("%s: A's clr:B %d, B's clr:A %d (want %d and %d)", when, ab, ba, ans.ChargedFen, -ans.ChargedFen)
		}
	}
	mirror("after the ride")

	// The home city's transfer of that charge: wallet → clr:B.
	tn := &nodetest.Node{Node: a.Node}
	rid := residentID(t, tn, res.CardNumber)
	var seq int64
	if err := a.DB.R.QueryRowContext(ctx, `SELECT seq FROM ledger_journal WHERE debit = $1 AND credit = $2`, ledger.WalletID(rid), ledger.ClearingID(b.id)).Scan(&seq); err != nil {
		t.Fatal(err)
	}
	w, err := web.New(web.Deps{DB: a.DB, Auth: a.Auth, Residents: a.Residents, Catalog: a.Catalog, Ledger: a.Ledger, City: a.id})
	if err != nil {
		t.Fatal(err)
	}
	walletBefore := balance(t, tn, ledger.WalletID(rid))
	d, err := w.OpenDispute(ctx, rid, res.CardNumber, ledger.TransferID(seq), "I was never in that city")
	if err != nil {
		t.Fatal(err) // the resident may still say so; staff answer it
	}
	staff := auth.Principal{Kind: auth.KindStaff, Subject: "fin-a", Role: auth.RoleFinance}
	if _, err := w.RefundDispute(ctx, staff, d.ID, ""); err == nil {
		t.Error("a cross-city charge was refunded at home alone")
	}
	mirror("after the dispute")
	if got := balance(t, tn, ledger.WalletID(rid)); got != walletBefore {
		t.Fatalf("wallet %d, want %d", got, walletBefore)
	}
	if st := disputeStatus(t, w, rid, d.ID); st != web.DisputeOpen {
		t.Fatalf("dispute %q, want open (to be answered with a reason)", st)
	}
	if _, err := w.RejectDispute(ctx, staff, d.ID, "charged by CN-310000: ask its service desk"); err != nil {
		t.Fatal(err)
	}
	ledgerOK(t, tn)
}
