package scan_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// legOf is the transfer id of leg suffix ("debt0", "debt1") of offline
// record recID, "" if there is none.
func legOf(t testing.TB, c *city, recID, suffix string) string {
	t.Helper()
	var seq int64
	err := c.tn.DB.R.QueryRowContext(context.Background(), `SELECT seq FROM ledger_journal WHERE idem_key LIKE $1`, "%:off:"+recID+":"+suffix).Scan(&seq)
	if err != nil {
		return ""
	}
	return ledger.TransferID(seq)
}

func cancelRide(c *city, key, transferID string) (scan.RideCancellation, error) {
	return scan.CancelRide(context.Background(), c.tn.DB, c.tn.Ledger, time.Now, key, transferID)
}

// checkCancels checks every cancellation over the whole database, on top
// of checkCollections (numbering, the credit account holds minus what is
// owed, the books balance): a cancellation is its ride's last row and
// settles exactly what was still owed, and its transfers are of its ride.
func checkCancels(t testing.TB, c *city) {
	t.Helper()
	checkCollections(t, c)
	ctx := context.Background()
	rows, err := c.tn.DB.R.QueryContext(ctx, `SELECT k.terminal_id, k.idem_key, k.seq, k.transfer_id, s.debt_fen,
		(SELECT SUM(amount_fen) FROM scan_debt_collections x WHERE x.terminal_id = k.terminal_id AND x.idem_key = k.idem_key),
		(SELECT MAX(seq) FROM scan_debt_collections x WHERE x.terminal_id = k.terminal_id AND x.idem_key = k.idem_key)
		FROM scan_debt_collections k JOIN scans s ON s.terminal_id = k.terminal_id AND s.idem_key = k.idem_key`)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		terminal, key, tr        string
		seq, debt, settled, last int64
	}
	var all []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.terminal, &r.key, &r.seq, &r.tr, &r.debt, &r.settled, &r.last); err != nil {
			t.Fatal(err)
		}
		all = append(all, r)
	}
	rows.Close()
	n := 0
	for _, r := range all {
		tr, err := c.tn.Ledger.GetTransfer(ctx, r.tr)
		if err != nil {
			t.Fatal(err)
		}
		if tr.Kind != scan.KindRideCancel {
			continue
		}
		n++
		if r.seq != r.last || r.settled != r.debt || tr.Meta["scan"] != r.terminal+":"+r.key {
			t.Fatalf("cancellation %+v (transfer %+v): not the ride's last row, or the ride still owes", r, tr)
		}
	}
	// Every cancellation has its row (its transfers are ledger keys of one
	// set, the first of which the row names).
	var sets int
	if err := c.tn.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM ledger_journal WHERE kind = $1 AND idem_key LIKE '%:0'`, scan.KindRideCancel).Scan(&sets); err != nil {
		t.Fatal(err)
	}
	if sets != n {
		t.Fatalf("%d cancellations in the ledger, %d rows", sets, n)
	}
}

// TestCancelRidePartlyCollected: a ride partly paid by the wallet and
// partly on credit, its debt partly collected by a top-up, is cancelled
// from any of its transfers: the wallet gets back what it paid (its part
// and the collection), nothing is owed, the provider and the credit
// account end as before the ride; a retry under the same key cancels
// once and answers the same; another key is refused; later top-ups
// collect nothing for it.
func TestCancelRidePartlyCollected(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		p := debtor(t, c, 21)
		if _, err := c.tn.Ledger.TopUp(ctx, "pc-50", ledger.WalletID(p.id), 50, nil); err != nil {
			t.Fatal(err)
		}
		rides(t, c, p, "pc", 1) // fare 200: 50 from the wallet, 150 on credit
		if o, w := owed(t, c, p), wallet(t, c, p); o != 150 || w != 0 {
			t.Fatalf("after the ride: owed %d, wallet %d", o, w)
		}
		topUp(t, c, p, "pc-t1", 100) // collects 100 of the 150
		if o, w := owed(t, c, p), wallet(t, c, p); o != 50 || w != 0 {
			t.Fatalf("after the top-up: owed %d, wallet %d", o, w)
		}
		var coll string
		if err := c.tn.DB.R.QueryRowContext(ctx, `SELECT transfer_id FROM scan_debt_collections WHERE resident_id = $1`, p.id).Scan(&coll); err != nil {
			t.Fatal(err)
		}
		checkCancels(t, c)

		res, err := cancelRide(c, "k-1", coll)
		if err != nil {
			t.Fatal(err)
		}
		if res.Replayed || res.RefundedFen != 150 || res.CreditFen != 150 || res.ForgivenFen != 50 || len(res.Transfers) != 3 || res.ResidentID != p.id {
			t.Fatalf("cancellation: %+v", res)
		}
		check := func(when string) {
			t.Helper()
			if o, w := owed(t, c, p), wallet(t, c, p); o != 0 || w != 150 {
				t.Fatalf("%s: owed %d (want 0), wallet %d (want 150: the 50 before the ride and the 100 topped up)", when, o, w)
			}
			c.checkBooks(t, 0)
			if b := balanceOf(t, c, scan.CreditAccount); b != 0 {
				t.Fatalf("%s: credit account %d, want 0", when, b)
			}
			checkCancels(t, c)
		}
		check("cancelled")

		// Retried under the same key, from another of its transfers: the
		// same cancellation.
		for _, id := range []string{coll, legOf(t, c, "pc-0", "debt0"), legOf(t, c, "pc-0", "debt1")} {
			again, err := cancelRide(c, "k-1", id)
			if err != nil {
				t.Fatal(err)
			}
			if !again.Replayed || len(again.Transfers) != 3 || again.Transfers[0].ID != res.Transfers[0].ID || again.RefundedFen != 150 || again.RefundTransfer() != res.RefundTransfer() {
				t.Fatalf("retry: %+v, first %+v", again, res)
			}
		}
		// Another key: already cancelled.
		if _, err := cancelRide(c, "k-2", legOf(t, c, "pc-0", "debt0")); err != scan.ErrRideCancelled {
			t.Fatalf("second cancellation: %v", err)
		}
		check("after the retries")
		// A later top-up is not collected for it.
		topUp(t, c, p, "pc-t2", 100)
		if o, w := owed(t, c, p), wallet(t, c, p); o != 0 || w != 250 {
			t.Fatalf("after a later top-up: owed %d, wallet %d", o, w)
		}
		checkCancels(t, c)
	})
}

// TestCancelRideAllOnCredit: a ride the empty wallet paid nothing of has
// only its credit leg; it is cancelled from it (or cancelled once under
// concurrent retries of one key), and a fully collected ride is
// cancelled too (nothing was owed any more).
func TestCancelRideAllOnCredit(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		p := debtor(t, c, 22)
		rides(t, c, p, "ac", 2) // 200 + 200, all on credit
		if legOf(t, c, "ac-0", "debt0") != "" || legOf(t, c, "ac-0", "debt1") == "" {
			t.Fatal("the ride of an empty wallet should have its credit leg only")
		}
		var wg sync.WaitGroup
		res := make([]scan.RideCancellation, 4)
		errs := make([]error, 4)
		for i := range res {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res[i], errs[i] = cancelRide(c, "dbl", legOf(t, c, "ac-0", "debt1"))
			}()
		}
		wg.Wait()
		fresh := 0
		for i := range res {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			if !res[i].Replayed {
				fresh++
			}
			if res[i].ForgivenFen != 200 || res[i].RefundedFen != 0 || res[i].CreditFen != 200 || len(res[i].Transfers) != 1 {
				t.Fatalf("cancellation %d: %+v", i, res[i])
			}
		}
		if fresh != 1 {
			t.Fatalf("%d fresh cancellations of one key, want 1", fresh)
		}
		if o, w := owed(t, c, p), wallet(t, c, p); o != 200 || w != 0 {
			t.Fatalf("owed %d (want the other ride's 200), wallet %d", o, w)
		}
		c.checkBooks(t, 200)
		checkCancels(t, c)

		// The other ride, collected in full, then cancelled.
		topUp(t, c, p, "ac-t", 300)
		if o, w := owed(t, c, p), wallet(t, c, p); o != 0 || w != 100 {
			t.Fatalf("after the top-up: owed %d, wallet %d", o, w)
		}
		r, err := cancelRide(c, "full", legOf(t, c, "ac-1", "debt1"))
		if err != nil {
			t.Fatal(err)
		}
		if r.ForgivenFen != 0 || r.RefundedFen != 200 {
			t.Fatalf("cancellation of a collected ride: %+v", r)
		}
		if o, w := owed(t, c, p), wallet(t, c, p); o != 0 || w != 300 {
			t.Fatalf("after cancelling both: owed %d, wallet %d (want the 300 topped up)", o, w)
		}
		c.checkBooks(t, 0)
		checkCancels(t, c)
	})
}

// TestCancelRideNotOnCredit: a transfer that is not part of a ride on
// credit (a ride the wallet paid in full, a top-up) is refused, and
// nothing moves.
func TestCancelRideNotOnCredit(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		rich := c.people[0]
		rides(t, c, rich, "nc", 1)
		var fare, top int64
		if err := c.tn.DB.R.QueryRowContext(ctx, `SELECT seq FROM ledger_journal WHERE debit = $1 AND type = 'transfer'`, ledger.WalletID(rich.id)).Scan(&fare); err != nil {
			t.Fatal(err)
		}
		if err := c.tn.DB.R.QueryRowContext(ctx, `SELECT seq FROM ledger_journal WHERE credit = $1 AND type = 'transfer'`, ledger.WalletID(rich.id)).Scan(&top); err != nil {
			t.Fatal(err)
		}
		before := wallet(t, c, rich)
		for _, id := range []int64{fare, top} {
			if _, err := cancelRide(c, fmt.Sprint("nc-", id), ledger.TransferID(id)); err != scan.ErrNotOnCredit || apperr.CodeOf(err) != apperr.Conflict {
				t.Fatalf("cancelling %d: %v", id, err)
			}
		}
		if _, err := cancelRide(c, "nc-x", "tr-999999"); apperr.CodeOf(err) != apperr.NotFound {
			t.Fatalf("cancelling an unknown transfer: %v", err)
		}
		if w := wallet(t, c, rich); w != before {
			t.Fatalf("wallet %d, want %d", w, before)
		}
		var n int
		c.tn.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM ledger_journal WHERE kind = $1`, scan.KindRideCancel).Scan(&n)
		if n != 0 {
			t.Fatalf("%d cancellation transfers", n)
		}
		c.checkBooks(t, 200)
		checkCancels(t, c)
	})
}

// TestCancelRideRacesTopUp: a cancellation and a top-up that collects the
// ride's debt at the same moment, many times over: whichever comes first,
// the wallet ends with exactly the top-up, nothing is owed, and the
// credit account holds minus what is owed.
func TestCancelRideRacesTopUp(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		orders := map[int64]int{} // forgiven: 200 the cancellation first, 80 the collection
		for i := range 16 {
			p := debtor(t, c, uint64(100+i))
			batch := fmt.Sprintf("race%d", i)
			rides(t, c, p, batch, 1) // 200 on credit
			leg := legOf(t, c, batch+"-0", "debt1")
			var wg sync.WaitGroup
			var cerr [2]error
			var res [2]scan.RideCancellation
			// The top-up's money is in; its collection (what the top-up
			// handler runs next) races the cancellation and a double
			// click of it, started a little apart.
			if _, err := c.tn.Ledger.TopUp(context.Background(), batch+"-t", ledger.WalletID(p.id), 120, nil); err != nil {
				t.Fatal(err)
			}
			var collErr error
			wg.Add(3)
			go func() {
				defer wg.Done()
				_, collErr = c.tn.Node.DebtCollector().Collect(context.Background(), p.id)
			}()
			for j := range 2 {
				go func() {
					defer wg.Done()
					time.Sleep(time.Duration(i%4*(j+1)) * 300 * time.Microsecond)
					res[j], cerr[j] = cancelRide(c, batch+"-c", leg)
				}()
			}
			wg.Wait()
			if collErr != nil {
				t.Fatal(collErr)
			}
			for j, err := range cerr {
				if err != nil {
					t.Fatalf("round %d: %v", i, err)
				}
				if res[j].ForgivenFen+res[j].RefundedFen != 200 || res[j].Transfers[0].ID != res[1-j].Transfers[0].ID {
					t.Fatalf("round %d: %+v and %+v", i, res[j], res[1-j])
				}
			}
			orders[res[0].ForgivenFen]++
			if _, err := c.tn.Node.DebtCollector().Sweep(context.Background()); err != nil {
				t.Fatal(err)
			}
			if o, w := owed(t, c, p), wallet(t, c, p); o != 0 || w != 120 {
				t.Fatalf("round %d: owed %d, wallet %d (want 0, 120)", i, o, w)
			}
			c.checkBooks(t, 0)
			checkCancels(t, c)
		}
		t.Logf("what the cancellation forgave (200: it came first; 80: the collection did): %v", orders)
	})
}
