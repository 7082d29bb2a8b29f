package web_test

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/terminal"
	"github.com/yikatong/yikatong/internal/web"
)

// debtor enrols a resident with an empty wallet.
func debtor(t *testing.T, tn *nodetest.Node, seed uint64) (rid, card string) {
	t.Helper()
	num := idnum.Generate(rand.New(rand.NewPCG(seed, 11)), idnum.KindCitizen, "410105", time.Now().AddDate(-30, 0, -int(seed)), "F")
	res, c, err := tn.Node.Enrol(t.Context(), auth.Principal{Kind: auth.KindStaff, Subject: "test", Role: auth.RoleHRAdmin},
		resident.EnrolInput{Name: "赊账测试", IDNumber: num, Category: resident.CategoryLocal}, true, "246810")
	if err != nil {
		t.Fatal(err)
	}
	return res.ID, c.Number
}

// rideOffline uploads one offline bus ride of card (record id) from the
// demo's bus terminal: what the wallet cannot pay becomes debt.
func rideOffline(t *testing.T, tn *nodetest.Node, card, id string, seq int64) {
	t.Helper()
	for _, trm := range tn.Demo.Terminals {
		if trm.Scenario != "transit.bus" {
			continue
		}
		key, err := terminal.ParseBatchKey(trm.BatchKey)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		sb, err := terminal.SignBatch(terminal.Batch{Terminal: trm.ID, ID: "b-" + id, CreatedAt: now,
			Records: []terminal.Record{{ID: id, Seq: seq, At: now.Add(-time.Minute), Scenario: "transit.bus", CardNumber: card}}}, key)
		if err != nil {
			t.Fatal(err)
		}
		tn.Client(trm.Token).JSON(t, "POST", "/v1/terminals/"+trm.ID+"/batches", sb, 200, nil)
		return
	}
	t.Fatal("no bus terminal in the demo")
}

// owed is a resident's outstanding offline debt.
func owed(t *testing.T, tn *nodetest.Node, rid string) int64 {
	t.Helper()
	n, err := tn.Node.DebtCollector().Owed(t.Context(), rid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// creditBooksOK checks the debt collector's books against the ledger:
// the credit account that advances "ride first, pay later" fares holds
// minus what residents still owe on them (internal/scan/collect.go).
func creditBooksOK(t *testing.T, tn *nodetest.Node, when string) {
	t.Helper()
	var debt, collected int64
	tn.DB.R.QueryRowContext(t.Context(), `SELECT COALESCE(SUM(debt_fen), 0) FROM scans WHERE debt_fen > 0 AND decision = 'accepted'`).Scan(&debt)
	tn.DB.R.QueryRowContext(t.Context(), `SELECT COALESCE(SUM(amount_fen), 0) FROM scan_debt_collections`).Scan(&collected)
	if bal := balance(t, tn, scan.CreditAccount); bal != -(debt - collected) {
		t.Fatalf("%s: %s holds %d, but residents owe %d (debt %d, collected %d)", when, scan.CreditAccount, bal, debt-collected, debt, collected)
	}
	ledgerOK(t, tn)
}

// TestMoneyDisputeOfRideOnCredit: a ride taken on credit ("ride first,
// pay later") shows on the resident's statement as the part the wallet
// paid at the ride and as the debt collections of later top-ups. A
// dispute of one of those lines is refunded by cancelling the whole ride
// (scan.CancelRide): the wallet gets back all it paid for the ride, the
// ride's debt is owed no more (the refund is not collected straight back
// by the next sweep), the credit account still holds minus what residents
// owe, and the ledger checks. A double click refunds once; a dispute of
// another line of a ride already cancelled is refused, nothing moves and
// it stays open.
func TestMoneyDisputeOfRideOnCredit(t *testing.T) {
	eachBackend(t, 2, func(t *testing.T, tn *nodetest.Node) {
		ctx := t.Context()
		w, err := web.New(web.Deps{DB: tn.DB, Auth: tn.Auth, Residents: tn.Residents, Catalog: tn.Catalog, Ledger: tn.Ledger, City: tn.City})
		if err != nil {
			t.Fatal(err)
		}
		staff := auth.Principal{Kind: auth.KindStaff, Subject: "fin-test", Role: auth.RoleFinance}
		op := tn.Client(tn.Demo.Staff["operator"].Token)
		creditBooksOK(t, tn, "at start")

		t.Run("a debt collection", func(t *testing.T) {
			rid, card := debtor(t, tn, 1)
			rideOffline(t, tn, card, "credit-1", 1)
			fare := owed(t, tn, rid)
			if fare <= 0 {
				t.Fatalf("owed %d after a ride on an empty wallet", fare)
			}
			op.JSON(t, "POST", "/v1/topups", map[string]any{"idempotency_key": "dc-1", "resident_id": rid, "amount_fen": fare}, 200, nil)
			if o := owed(t, tn, rid); o != 0 {
				t.Fatalf("owed %d after a top-up of the fare", o)
			}
			creditBooksOK(t, tn, "after the collection")
			var coll string
			if err := tn.DB.R.QueryRowContext(ctx, `SELECT transfer_id FROM scan_debt_collections WHERE resident_id = $1`, rid).Scan(&coll); err != nil {
				t.Fatal(err)
			}
			d, err := w.OpenDispute(ctx, rid, card, coll, "I never took that bus")
			if err != nil {
				t.Fatal(err)
			}
			// A double click: refunded once.
			var wg sync.WaitGroup
			var rerr [2]error
			for i := range rerr {
				wg.Add(1)
				go func() { defer wg.Done(); _, rerr[i] = w.RefundDispute(ctx, staff, d.ID, "") }()
			}
			wg.Wait()
			if rerr[0] != nil && rerr[1] != nil {
				t.Fatalf("refund: %v, %v", rerr[0], rerr[1])
			}
			tn.Node.DebtCollector().Sweep(ctx)
			if wallet, o := balance(t, tn, ledger.WalletID(rid)), owed(t, tn, rid); wallet != fare || o != 0 || disputeStatus(t, w, rid, d.ID) != web.DisputeRefunded {
				t.Fatalf("refunded: wallet %d (want %d), owed %d, dispute %s", wallet, fare, o, disputeStatus(t, w, rid, d.ID))
			}
			creditBooksOK(t, tn, "after the dispute")
			finReverses(t, tn, coll, fare)
		})

		t.Run("the wallet's part of a ride partly on credit", func(t *testing.T) {
			rid, card := debtor(t, tn, 2)
			if _, err := tn.Ledger.TopUp(ctx, "split-top", ledger.WalletID(rid), 50, nil); err != nil {
				t.Fatal(err)
			}
			rideOffline(t, tn, card, "credit-2", 2)
			debt := owed(t, tn, rid)
			if debt <= 0 || balance(t, tn, ledger.WalletID(rid)) != 0 {
				t.Fatalf("owed %d, wallet %d after a ride on 50", debt, balance(t, tn, ledger.WalletID(rid)))
			}
			var seq int64
			if err := tn.DB.R.QueryRowContext(ctx, `SELECT seq FROM ledger_journal WHERE debit = $1 AND type = 'transfer'`, ledger.WalletID(rid)).Scan(&seq); err != nil {
				t.Fatal(err)
			}
			d, err := w.OpenDispute(ctx, rid, card, ledger.TransferID(seq), "I never took that bus")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.RefundDispute(ctx, staff, d.ID, ""); err != nil {
				t.Fatal(err)
			}
			tn.Node.DebtCollector().Sweep(ctx) // as the node does every few minutes
			if wallet, o := balance(t, tn, ledger.WalletID(rid)), owed(t, tn, rid); wallet != 50 || o != 0 {
				t.Fatalf("refunded, but the ride still counts: wallet %d (want the 50 back), owed %d (want 0)", wallet, o)
			}
			creditBooksOK(t, tn, "after the dispute")
			finReverses(t, tn, ledger.TransferID(seq), 50)
		})

		t.Run("a ride partly collected", func(t *testing.T) {
			rid, card := debtor(t, tn, 4)
			if _, err := tn.Ledger.TopUp(ctx, "part-top", ledger.WalletID(rid), 50, nil); err != nil {
				t.Fatal(err)
			}
			rideOffline(t, tn, card, "credit-4", 4)
			debt := owed(t, tn, rid)
			half := debt / 2
			op.JSON(t, "POST", "/v1/topups", map[string]any{"idempotency_key": "part-1", "resident_id": rid, "amount_fen": half}, 200, nil)
			if o, wallet := owed(t, tn, rid), balance(t, tn, ledger.WalletID(rid)); o != debt-half || wallet != 0 {
				t.Fatalf("after a top-up of %d: owed %d, wallet %d", half, o, wallet)
			}
			creditBooksOK(t, tn, "after the partial collection")
			var seq int64
			if err := tn.DB.R.QueryRowContext(ctx, `SELECT seq FROM ledger_journal WHERE debit = $1 AND type = 'transfer' AND kind <> $2`, ledger.WalletID(rid), scan.KindDebtCollection).Scan(&seq); err != nil {
				t.Fatal(err)
			}
			var coll string
			if err := tn.DB.R.QueryRowContext(ctx, `SELECT transfer_id FROM scan_debt_collections WHERE resident_id = $1`, rid).Scan(&coll); err != nil {
				t.Fatal(err)
			}
			d, err := w.OpenDispute(ctx, rid, card, ledger.TransferID(seq), "I never took that bus")
			if err != nil {
				t.Fatal(err)
			}
			done, err := w.RefundDispute(ctx, staff, d.ID, "")
			if err != nil {
				t.Fatal(err)
			}
			check := func(when string) {
				t.Helper()
				tn.Node.DebtCollector().Sweep(ctx)
				if wallet, o := balance(t, tn, ledger.WalletID(rid)), owed(t, tn, rid); wallet != 50+half || o != 0 {
					t.Fatalf("%s: wallet %d (want %d: the 50 before the ride and the %d topped up), owed %d", when, wallet, 50+half, half, o)
				}
				creditBooksOK(t, tn, when)
			}
			check("after the refund")
			if done.Status != web.DisputeRefunded || done.RefundTransfer == "" {
				t.Fatalf("dispute %+v", done)
			}
			// Retried: the dispute is resolved, nothing moves.
			if _, err := w.RefundDispute(ctx, staff, d.ID, ""); err == nil {
				t.Fatal("a resolved dispute refunded again")
			}
			check("after the retry")
			// Finance cannot undo one transfer of the cancellation alone.
			var cancels []string
			rows, err := tn.DB.R.QueryContext(ctx, `SELECT seq FROM ledger_journal WHERE kind = $1`, scan.KindRideCancel)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var s int64
				rows.Scan(&s)
				cancels = append(cancels, ledger.TransferID(s))
			}
			rows.Close()
			if len(cancels) == 0 {
				t.Fatal("no cancellation transfers in the journal")
			}
			for _, id := range cancels {
				tr, err := tn.Ledger.GetTransfer(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				finReverses(t, tn, id, tr.Amount)
			}
			check("after finance's refused reversals")
			// A dispute of the ride's collection: the ride is cancelled
			// already, so there is nothing left to dispute.
			if _, err := w.OpenDispute(ctx, rid, card, coll, "that bus again"); err != scan.ErrRideCancelled {
				t.Fatalf("a dispute of a line of a cancelled ride: %v", err)
			}
			check("after the second dispute")
		})

		t.Run("a charge not on credit is not cancelled", func(t *testing.T) {
			rid, _ := debtor(t, tn, 5)
			top, err := tn.Ledger.TopUp(ctx, "nc-top", ledger.WalletID(rid), 70, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := scan.CancelRide(ctx, tn.DB, tn.Ledger, time.Now, "nc", top.ID); err != scan.ErrNotOnCredit {
				t.Fatalf("cancelling a top-up: %v", err)
			}
			if wallet := balance(t, tn, ledger.WalletID(rid)); wallet != 70 {
				t.Fatalf("wallet %d, want 70", wallet)
			}
			creditBooksOK(t, tn, "after the refused cancellation")
		})

		t.Run("an offline ride the wallet paid in full is refunded", func(t *testing.T) {
			rid, card := debtor(t, tn, 3)
			if _, err := tn.Ledger.TopUp(ctx, "full-top", ledger.WalletID(rid), 500, nil); err != nil {
				t.Fatal(err)
			}
			rideOffline(t, tn, card, "paid-3", 3)
			var seq int64
			if err := tn.DB.R.QueryRowContext(ctx, `SELECT seq FROM ledger_journal WHERE debit = $1 AND type = 'transfer'`, ledger.WalletID(rid)).Scan(&seq); err != nil {
				t.Fatal(err)
			}
			if owed(t, tn, rid) != 0 || balance(t, tn, ledger.WalletID(rid)) >= 500 {
				t.Fatalf("owed %d, wallet %d", owed(t, tn, rid), balance(t, tn, ledger.WalletID(rid)))
			}
			d, err := w.OpenDispute(ctx, rid, card, ledger.TransferID(seq), "I never took that bus")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.RefundDispute(ctx, staff, d.ID, ""); err != nil {
				t.Fatal(err)
			}
			if got := balance(t, tn, ledger.WalletID(rid)); got != 500 {
				t.Fatalf("wallet %d after the refund, want 500", got)
			}
			creditBooksOK(t, tn, "after the refund")
		})
	})
}

// finReverses: finance's reversal endpoint refuses to reverse a part of a
// ride on credit alone (409 conflict), and the books stay as they were.
func finReverses(t *testing.T, tn *nodetest.Node, transferID string, amount int64) {
	t.Helper()
	fin := tn.Client(tn.Demo.Staff["finance"].Token)
	r := fin.Do(t, "POST", "/v1/transfers/"+transferID+"/reversal", map[string]any{"idempotency_key": "fin-" + transferID, "amount_fen": amount, "reason": "test"})
	if r.Status != 409 || r.Code() != "conflict" {
		t.Fatalf("finance reversing %s alone: %d %s, want 409 conflict", transferID, r.Status, r.Body)
	}
	creditBooksOK(t, tn, "after finance's refused reversal")
}
