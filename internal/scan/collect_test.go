package scan_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// debtor enrols a resident with an empty wallet.
func debtor(t testing.TB, c *city, seed uint64) person {
	t.Helper()
	return enrol(t, c.tn.Node, rand.New(rand.NewPCG(seed, seed+1)), resident.CategoryLocal, time.Now().AddDate(-30, 0, -3), 0, 0)
}

// rides uploads n offline bus rides (200 fen each) of p's card in one batch.
func rides(t testing.TB, c *city, p person, batch string, n int) scan.BatchReport {
	t.Helper()
	now := time.Now()
	recs := make([]terminal.Record, n)
	for i := range recs {
		recs[i] = terminal.Record{ID: fmt.Sprintf("%s-%d", batch, i), Seq: int64(i + 1), At: now.Add(time.Duration(i-n) * time.Minute), Scenario: "transit.bus", CardNumber: p.card}
	}
	return upload(t, c, batch, recs)
}

// topUp tops up p's wallet over HTTP (the operator's counter).
func topUp(t testing.TB, c *city, p person, key string, fen int64) {
	t.Helper()
	c.op.JSON(t, "POST", "/v1/topups", map[string]any{"idempotency_key": key, "resident_id": p.id, "amount_fen": fen}, 200, nil)
}

func owed(t testing.TB, c *city, p person) int64 {
	t.Helper()
	n, err := c.tn.Node.DebtCollector().Owed(context.Background(), p.id)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func balanceOf(t testing.TB, c *city, id string) int64 {
	t.Helper()
	a, err := c.tn.Ledger.Balance(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return a.Balance
}

// checkCollections asserts the collection invariants over the whole
// database: per debt row the collections are numbered 1..n and sum to at
// most its debt; each collection row has exactly one ledger transfer
// (wallet → its creditor, same amount), and there is no collection
// transfer without a row; the advancing account's balance is minus what
// is still owed; the books balance. It returns the sum collected (and
// settled by rides' cancellations, cancel.go).
func checkCollections(t testing.TB, c *city) int64 {
	t.Helper()
	ctx := context.Background()
	db := c.tn.DB.R
	var bad int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM (SELECT s.terminal_id, s.idem_key FROM scans s JOIN scan_debt_collections k ON k.terminal_id = s.terminal_id AND k.idem_key = s.idem_key
		GROUP BY s.terminal_id, s.idem_key, s.debt_fen HAVING SUM(k.amount_fen) > s.debt_fen OR COUNT(*) <> MAX(k.seq) OR MIN(k.seq) <> 1) x`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	if bad != 0 {
		t.Fatalf("%d debt rows over-collected or with gaps in their collection numbers", bad)
	}
	rows, err := db.QueryContext(ctx, `SELECT resident_id, amount_fen, credit_account, transfer_id FROM scan_debt_collections`)
	if err != nil {
		t.Fatal(err)
	}
	type coll struct {
		res, credit, tr string
		amount          int64
	}
	var all []coll
	for rows.Next() {
		var k coll
		if err := rows.Scan(&k.res, &k.amount, &k.credit, &k.tr); err != nil {
			t.Fatal(err)
		}
		all = append(all, k)
	}
	rows.Close()
	var sum int64
	cancels := 0
	for _, k := range all {
		tr, err := c.tn.Ledger.GetTransfer(ctx, k.tr)
		if err != nil {
			t.Fatal(err)
		}
		if tr.Kind == scan.KindRideCancel {
			// A ride's cancellation (cancel.go): it settles what was still
			// owed; checkCancels checks its transfers.
			cancels++
			sum += k.amount
			continue
		}
		if tr.Debit != ledger.WalletID(k.res) || tr.Credit != k.credit || tr.Amount != k.amount || tr.Kind != scan.KindDebtCollection || tr.Meta["kind"] != scan.KindDebtCollection {
			t.Fatalf("collection %+v recorded as transfer %+v", k, tr)
		}
		sum += k.amount
	}
	var transfers int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM ledger_journal WHERE kind = $1`, scan.KindDebtCollection).Scan(&transfers); err != nil {
		t.Fatal(err)
	}
	if transfers != len(all)-cancels {
		t.Fatalf("%d collection transfers for %d collection rows", transfers, len(all)-cancels)
	}
	var outstanding, advanced int64
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(SUM(debt_fen), 0) FROM scans WHERE debt_fen > 0 AND decision = 'accepted'`).Scan(&advanced); err != nil {
		t.Fatal(err)
	}
	outstanding = advanced - sum
	if b := balanceOf(t, c, scan.CreditAccount); b != -outstanding {
		t.Fatalf("credit account balance %d, want %d (minus the outstanding debt: %d advanced, %d collected)", b, -outstanding, advanced, sum)
	}
	chk, err := c.tn.Ledger.Check(ctx)
	if err != nil || !chk.OK() {
		t.Fatalf("ledger check: %+v %v", chk, err)
	}
	return sum
}

// TestDebtCollectedByTopUps: offline debt is collected by later top-ups,
// oldest ride first, partially and then fully, into the account that
// advanced it (the provider was paid at the ride and gets nothing more);
// the collections are ordinary statement lines; a retried top-up collects
// nothing twice; collected debt makes room for new credit up to the limit.
func TestDebtCollectedByTopUps(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		col := c.tn.Node.DebtCollector()
		p := debtor(t, c, 11)
		wal := ledger.WalletID(p.id)
		// Three rides with an empty wallet: two on credit (400), the third
		// over the limit (500).
		rep := rides(t, c, p, "r1", 3)
		if rep.Items[0].DebtFen != 200 || rep.Items[1].DebtFen != 200 || rep.Items[2].Status != scan.StatusDeclined {
			t.Fatalf("rides: %+v", rep.Items)
		}
		if o := owed(t, c, p); o != 400 {
			t.Fatalf("owed %d, want 400", o)
		}
		c.checkBooks(t, 400)

		// 150 topped up: all of it pays the oldest ride.
		topUp(t, c, p, "t1", 150)
		debts, err := col.Debts(ctx, p.id)
		if err != nil {
			t.Fatal(err)
		}
		if len(debts) != 2 || debts[0].OwedFen != 50 || debts[0].CollectedFen != 150 || debts[1].OwedFen != 200 || !debts[0].At.Before(debts[1].At) {
			t.Fatalf("after 150: %+v", debts)
		}
		if w := wallet(t, c, p); w != 0 {
			t.Fatalf("wallet %d, want 0", w)
		}
		// The same top-up retried (a lost answer): no new money, nothing
		// collected again.
		topUp(t, c, p, "t1", 150)
		if o := owed(t, c, p); o != 250 {
			t.Fatalf("owed %d after the retried top-up, want 250", o)
		}
		// A new limit: 250 owed + one more ride of 200 fits under 500.
		rep = rides(t, c, p, "r2", 1)
		if it := rep.Items[0]; it.Status != scan.StatusApplied || it.DebtFen != 200 {
			t.Fatalf("ride after partial collection: %+v", it)
		}
		rep = rides(t, c, p, "r3", 1)
		if it := rep.Items[0]; it.Status != scan.StatusDeclined {
			t.Fatalf("ride over the limit: %+v", it)
		}
		c.checkBooks(t, 600)

		// 1000 topped up: the 450 owed is collected (three rows), 550 stays.
		topUp(t, c, p, "t2", 1000)
		if o := owed(t, c, p); o != 0 {
			t.Fatalf("owed %d after the full collection", o)
		}
		if w := wallet(t, c, p); w != 550 {
			t.Fatalf("wallet %d, want 550", w)
		}
		if debts, _ := col.Debts(ctx, p.id); len(debts) != 0 {
			t.Fatalf("debts left: %+v", debts)
		}
		// Collections are statement lines with their scan.
		st, _, err := c.tn.Ledger.Statement(ctx, wal, time.Time{}, time.Time{}, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		var lines []ledger.StatementEntry
		for _, e := range st {
			if e.Kind == scan.KindDebtCollection {
				lines = append(lines, e)
			}
		}
		if len(lines) != 4 || lines[0].Delta != -150 || lines[1].Delta != -50 || lines[2].Delta != -200 || lines[3].Delta != -200 ||
			lines[0].Meta["scan"] != lines[1].Meta["scan"] || lines[0].Meta["seq"] != "1" || lines[1].Meta["seq"] != "2" || lines[0].Credit != scan.CreditAccount {
			b, _ := json.Marshal(lines)
			t.Fatalf("collection lines: %s", b)
		}
		if got := checkCollections(t, c); got != 600 {
			t.Fatalf("collected %d, want 600", got)
		}
		// The provider was paid 600 at the rides and nothing since.
		c.checkBooks(t, 600)
		// With nothing owed, a ride on an empty wallet gets credit again.
		if st := col.Stats(); st.Collections != 4 || st.CollectedFen != 600 {
			t.Fatalf("stats %+v", st)
		}
		if _, err := c.tn.Ledger.Transfer(ctx, ledger.TransferRequest{Key: "out", Debit: wal, Credit: ledger.AccountBank, Amount: 550, Kind: "withdrawal"}); err != nil {
			t.Fatal(err)
		}
		rep = rides(t, c, p, "r4", 3)
		if rep.Items[0].DebtFen != 200 || rep.Items[1].DebtFen != 200 || rep.Items[2].Status != scan.StatusDeclined {
			t.Fatalf("rides after repaying: %+v", rep.Items)
		}
		checkCollections(t, c)
	})
}

// secondProcess opens the same database again, with its own ledger and
// collector, as another node process would.
func secondProcess(t testing.TB, dsn string) *scan.Collector {
	t.Helper()
	ctx := context.Background()
	db, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := ledger.Open(ctx, db, ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := scan.New(ctx, scan.Deps{DB: db, Ledger: l})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close(); l.Close(); db.Close() })
	return scan.NewCollector(svc)
}

// TestDebtCollectionConcurrent: top-ups at once (some retried), direct
// collections and sweeps in this and another process, and fares charged
// from the same wallet meanwhile, never collect more than is owed (per
// row and in total), never take the wallet below zero, and collect all
// that the money allows.
func TestDebtCollectionConcurrent(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		other := secondProcess(t, dsn)
		here := c.tn.Node.DebtCollector()
		p, q := debtor(t, c, 21), debtor(t, c, 23)
		rides(t, c, p, "p1", 2) // p owes 400
		rides(t, c, q, "q1", 2) // q owes 400
		if owed(t, c, p) != 400 || owed(t, c, q) != 400 {
			t.Fatal("setup debt")
		}
		round := func(name string, each int64) {
			var wg sync.WaitGroup
			run := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }
			for i := 0; i < 3; i++ {
				key := fmt.Sprintf("%s-%d", name, i)
				run(func() { topUp(t, c, p, "p-"+key, each) })
				run(func() { topUp(t, c, p, "p-"+key, each) }) // the same top-up retried at once
				run(func() { topUp(t, c, q, "q-"+key, each) })
			}
			for i := 0; i < 2; i++ {
				run(func() {
					if _, err := other.Collect(ctx, p.id); err != nil {
						t.Error(err)
					}
				})
				run(func() {
					if _, err := here.Sweep(ctx); err != nil {
						t.Error(err)
					}
				})
				run(func() {
					if _, err := other.Sweep(ctx); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			// A top-up's collection runs after the top-up committed; a
			// sweep after all of them settles anything a lost race left.
			if _, err := here.Sweep(ctx); err != nil {
				t.Fatal(err)
			}
		}
		// 3 × 100 each: everything goes to the debt, 100 stays owed.
		round("a", 100)
		for _, x := range []person{p, q} {
			if o, w := owed(t, c, x), wallet(t, c, x); o != 100 || w != 0 {
				t.Fatalf("after 300 topped up: owed %d, wallet %d; want 100 and 0", o, w)
			}
		}
		if got := checkCollections(t, c); got != 600 {
			t.Fatalf("collected %d, want 600", got)
		}
		// 3 × 100 more: 100 collected each, 200 left in the wallet.
		round("b", 100)
		for _, x := range []person{p, q} {
			if o, w := owed(t, c, x), wallet(t, c, x); o != 0 || w != 200 {
				t.Fatalf("after 600 topped up: owed %d, wallet %d; want 0 and 200", o, w)
			}
		}
		if got := checkCollections(t, c); got != 800 {
			t.Fatalf("collected %d, want 800", got)
		}
		c.checkBooks(t, 800)

		// Fares charged online while top-ups collect: the wallet pays
		// fares and debt together and never goes below zero.
		r := debtor(t, c, 25)
		rides(t, c, r, "r1", 2) // owes 400
		var wg sync.WaitGroup
		var fares sync.Map
		for i := 0; i < 4; i++ {
			wg.Add(2)
			go func() {
				defer wg.Done()
				topUp(t, c, r, fmt.Sprintf("c-%d", i), 150)
			}()
			go func() {
				defer wg.Done()
				a, resp := c.scan(t, map[string]any{"idempotency_key": fmt.Sprintf("fare-%d", i), "scenario": "transit.bus", "card_number": r.card})
				if resp.Status != 200 {
					t.Errorf("fare: %d %s", resp.Status, resp.Body)
					return
				}
				if a.Decision == scan.Accepted {
					fares.Store(i, *a.ChargedFen)
				} else if a.Reason != string(apperr.InsufficientFunds) {
					t.Errorf("fare declined: %+v", a)
				}
			}()
		}
		wg.Wait()
		if _, err := here.Sweep(ctx); err != nil {
			t.Fatal(err)
		}
		var charged int64
		fares.Range(func(_, v any) bool { charged += v.(int64); return true })
		w, o := wallet(t, c, r), owed(t, c, r)
		collected := 400 - o
		if w < 0 || 600 != w+charged+collected || (o > 0 && w > 0) {
			t.Fatalf("wallet %d, fares %d, collected %d, owed %d: 600 topped up must be wallet + fares + collected, and money left only when nothing is owed", w, charged, collected, o)
		}
		checkCollections(t, c)
		c.checkBooks(t, 800+400+charged)
	})
}

// TestDebtSweepAfterCrash: a top-up that committed without its collection
// (the node stopped in between, or money came by another way) is
// collected by the sweep; a second sweep finds nothing to do.
func TestDebtSweepAfterCrash(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		p, q := debtor(t, c, 31), debtor(t, c, 33)
		rides(t, c, p, "p", 2)
		rides(t, c, q, "q", 1)
		// The top-ups commit; their collections never ran.
		for _, x := range []person{p, q} {
			if _, err := c.tn.Ledger.TopUp(ctx, "crash:"+x.id, ledger.WalletID(x.id), 300, nil); err != nil {
				t.Fatal(err)
			}
		}
		if owed(t, c, p) != 400 || owed(t, c, q) != 200 {
			t.Fatal("debt collected without a collection")
		}
		res, err := secondProcess(t, dsn).Sweep(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.Collections != 3 || res.CollectedFen != 500 || res.OwedFen != 100 {
			t.Fatalf("sweep: %+v", res)
		}
		if owed(t, c, p) != 100 || wallet(t, c, p) != 0 || owed(t, c, q) != 0 || wallet(t, c, q) != 100 {
			t.Fatalf("after the sweep: p owes %d (wallet %d), q owes %d (wallet %d)", owed(t, c, p), wallet(t, c, p), owed(t, c, q), wallet(t, c, q))
		}
		res, err = c.tn.Node.DebtCollector().Sweep(ctx)
		if err != nil || res.Collections != 0 || res.OwedFen != 100 {
			t.Fatalf("second sweep: %+v %v", res, err)
		}
		if got := checkCollections(t, c); got != 500 {
			t.Fatalf("collected %d", got)
		}
	})
}

// debtRow stores an accepted offline bus ride (200 fen) of p under key,
// made at at (Unix ms), whose debt (fen) is outstanding, as if the scan
// path had written it.
func debtRow(t testing.TB, c *city, p person, key string, debt, at int64) {
	t.Helper()
	plan, _ := json.Marshal([]map[string]any{{"d": ledger.WalletID(p.id), "c": ledger.ReceivableID(c.provider), "a": 200, "t": "scan_charge"}})
	if _, err := c.tn.DB.W.ExecContext(context.Background(), `INSERT INTO scans(terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, offline, plan, answer, at)
		VALUES ($1, $2, $3, NULL, $4, 'transit.bus', $5, 'final', 'accepted', '', 200, $6, 1, $7, NULL, $8)`,
		c.term, key, []byte{1}, c.provider, p.id, debt, string(plan), at); err != nil {
		t.Fatal(err)
	}
}

// TestDebtWithoutAdvanceRepaysProvider: a debt row whose fare was not
// advanced to the provider (no "…:debt1" leg) is repaid to the provider
// account its charge's plan credited.
func TestDebtWithoutAdvanceRepaysProvider(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		p := debtor(t, c, 41)
		prv := ledger.ReceivableID(c.provider)
		debtRow(t, c, p, "off:x1", 150, time.Now().UnixMilli())
		before := balanceOf(t, c, prv)
		topUp(t, c, p, "t", 1000)
		if got := balanceOf(t, c, prv) - before; got != 150 {
			t.Fatalf("provider received %d, want 150", got)
		}
		if owed(t, c, p) != 0 || wallet(t, c, p) != 850 {
			t.Fatalf("owed %d, wallet %d", owed(t, c, p), wallet(t, c, p))
		}
	})
}

// TestLegacyDebtRepaysItsAdvance: a debt an older version booked (its
// "ride first, pay later" legs under the keys that version gave them,
// before keys began with the scan's time) is repaid to the account that
// advanced it, as a debt booked today is: a top-up collects both, and the
// provider, paid at the rides, gets nothing more.
func TestLegacyDebtRepaysItsAdvance(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		p := debtor(t, c, 43)
		prv := ledger.ReceivableID(c.provider)
		// The older version's row and its credit leg (the wallet was empty).
		debtRow(t, c, p, "off:old1", 200, time.Now().Add(-time.Hour).UnixMilli())
		meta := map[string]string{"scenario": "transit.bus", "terminal": c.term}
		if _, err := c.tn.Ledger.Linked(ctx, []ledger.TransferRequest{{Key: "scan:" + c.term + ":off:old1:debt1", Debit: scan.CreditAccount, Credit: prv, Amount: 200, Kind: "scan_credit", Meta: meta}}); err != nil {
			t.Fatal(err)
		}
		// And one booked today.
		if rep := rides(t, c, p, "new", 1); rep.Items[0].DebtFen != 200 {
			t.Fatalf("today's ride: %+v", rep.Items[0])
		}
		if b := balanceOf(t, c, scan.CreditAccount); b != -400 {
			t.Fatalf("advanced %d, want 400", -b)
		}
		before := balanceOf(t, c, prv)
		topUp(t, c, p, "t-legacy", 1000)
		if owed(t, c, p) != 0 || wallet(t, c, p) != 600 {
			t.Fatalf("owed %d, wallet %d", owed(t, c, p), wallet(t, c, p))
		}
		if got := balanceOf(t, c, prv) - before; got != 0 {
			t.Fatalf("the provider received %d more", got)
		}
		if collected := checkCollections(t, c); collected != 400 {
			t.Fatalf("collected %d, want 400", collected)
		}
	})
}

// TestDebtProbeGathersTopUps: the collections that top-ups start ask
// whether the resident has any debt in shared queries; a resident with
// none is answered without the full read, one with debt is collected as
// before, and a resident whose debt is all collected owes nothing.
func TestDebtProbeGathersTopUps(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		col := c.tn.Node.DebtCollector()
		p := debtor(t, c, 31)
		rides(t, c, p, "g1", 1) // p owes 200
		var clean []person
		for i := 0; i < 24; i++ {
			clean = append(clean, debtor(t, c, uint64(1000+7919*i)))
		}
		// Money in p's wallet, put there directly so no collection runs yet.
		if _, err := c.tn.Ledger.Transfer(ctx, ledger.TransferRequest{Key: "probe-fund", Debit: ledger.AccountBank, Credit: ledger.WalletID(p.id), Amount: 500, Kind: "topup"}); err != nil {
			t.Fatal(err)
		}
		before := col.Stats()
		// The first query waits until every caller has asked, as a
		// query does while requests keep arriving on a busy node.
		first := true
		scan.HoldDebtProbes(col, func() {
			if !first {
				return
			}
			first = false
			deadline := time.Now().Add(10 * time.Second)
			for col.Stats().Probes-before.Probes < int64(len(clean)+1) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
		})
		defer scan.HoldDebtProbes(col, nil)
		release := make(chan struct{})
		var wg sync.WaitGroup
		results := make([]scan.Collected, len(clean)+1)
		errs := make([]error, len(clean)+1)
		for i := range results {
			id := p.id
			if i < len(clean) {
				id = clean[i].id
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-release
				results[i], errs[i] = col.Collect(ctx, id)
			}()
		}
		close(release)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("collect %d: %v", i, err)
			}
		}
		for i := range clean {
			if results[i] != (scan.Collected{}) {
				t.Fatalf("resident without debt: %+v", results[i])
			}
		}
		if r := results[len(clean)]; r.Collections != 1 || r.CollectedFen != 200 || r.OwedFen != 0 {
			t.Fatalf("resident with debt: %+v, want 200 collected", r)
		}
		after := col.Stats()
		probes, queries := after.Probes-before.Probes, after.ProbeQueries-before.ProbeQueries
		t.Logf("%d probes in %d queries", probes, queries)
		// One query for the first caller and one for all who came
		// meanwhile (or one for all, if they came before it started).
		if probes != int64(len(results)) || queries < 1 || queries > 2 {
			t.Fatalf("%d probes answered by %d queries, want %d probes in 1 or 2 queries", probes, queries, len(results))
		}
		// Debt rows all collected: the probe finds the row, the full read
		// finds nothing owed.
		if r, err := col.Collect(ctx, p.id); err != nil || r != (scan.Collected{}) {
			t.Fatalf("after full repayment: %+v %v", r, err)
		}
		if owed(t, c, p) != 0 {
			t.Fatal("still owed after collection")
		}
		c.checkBooks(t, 200) // the ride's fare
	})
}

// TestCreditAsksAboutDebt: a wallet top-up through Collector.Credit is
// applied like a transfer and says whether the resident may owe offline
// debt: yes for a resident with a debt row, no for the others, also when
// the top-up is re-sent. On PostgreSQL the question rides in the top-up's
// ledger batch: at most one query per batch, none of its own.
func TestCreditAsksAboutDebt(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		col := c.tn.Node.DebtCollector()
		p := debtor(t, c, 31)
		rides(t, c, p, "cr1", 1) // p owes 200
		people := []person{p}
		for i := 0; i < 24; i++ {
			people = append(people, debtor(t, c, uint64(2000+7919*i)))
		}
		var probed atomic.Bool // the shared probe ran a query
		scan.HoldDebtProbes(col, func() { probed.Store(true) })
		defer scan.HoldDebtProbes(col, nil)
		before, batches := col.Stats(), c.tn.Ledger.Stats().Batches
		topUp := func(who person) ledger.TransferRequest {
			return ledger.TransferRequest{Key: "credit-" + who.id, Debit: ledger.AccountBank, Credit: ledger.WalletID(who.id), Amount: 500, Kind: "topup"}
		}
		var wg sync.WaitGroup
		owes := make([]bool, len(people))
		errs := make([]error, len(people))
		for i, who := range people {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var tr ledger.Transfer
				tr, owes[i], errs[i] = col.Credit(ctx, topUp(who), who.id)
				if errs[i] == nil && (tr.Amount != 500 || tr.Replayed) {
					errs[i] = fmt.Errorf("transfer %+v", tr)
				}
			}()
		}
		wg.Wait()
		for i, who := range people {
			if errs[i] != nil {
				t.Fatalf("credit %d: %v", i, errs[i])
			}
			if want := i == 0; owes[i] != want {
				t.Fatalf("resident %d: owes %v, want %v", i, owes[i], want)
			}
			if i > 0 {
				if a, err := c.tn.Ledger.Balance(ctx, ledger.WalletID(who.id)); err != nil || a.Balance != 500 {
					t.Fatalf("resident %d: wallet %+v %v", i, a, err)
				}
			}
		}
		after, batchesAfter := col.Stats(), c.tn.Ledger.Stats().Batches
		probes, queries := after.Probes-before.Probes, after.ProbeQueries-before.ProbeQueries
		t.Logf("%d questions in %d queries, %d ledger batches", probes, queries, batchesAfter-batches)
		if probes != int64(len(people)) || queries < 1 || queries > probes {
			t.Fatalf("%d questions answered by %d queries", probes, queries)
		}
		if pg := c.tn.DB.Dialect == store.Postgres; pg && (queries > batchesAfter-batches || probed.Load()) || !pg && !probed.Load() {
			t.Fatalf("%d queries for %d ledger batches, shared probe ran: %v", queries, batchesAfter-batches, probed.Load())
		}
		if r, err := col.CollectOwed(ctx, p.id); err != nil || r.Collections != 1 || r.CollectedFen != 200 || r.OwedFen != 0 {
			t.Fatalf("collect: %+v %v", r, err)
		}
		// Re-sent: the same transfer, replayed, and the same answers (p's
		// row is still there, with nothing owed on it).
		tr, again, err := col.Credit(ctx, topUp(p), p.id)
		if err != nil || !tr.Replayed || !again {
			t.Fatalf("re-sent: %+v owes %v %v", tr, again, err)
		}
		if r, err := col.CollectOwed(ctx, p.id); err != nil || r != (scan.Collected{}) {
			t.Fatalf("collect after repayment: %+v %v", r, err)
		}
		if _, again, err := col.Credit(ctx, topUp(people[1]), people[1].id); err != nil || again {
			t.Fatalf("re-sent, no debt: owes %v %v", again, err)
		}
		// A top-up the ledger refuses is the ledger's error.
		if _, _, err := col.Credit(ctx, ledger.TransferRequest{Key: "credit-none", Debit: ledger.AccountBank, Credit: ledger.WalletID("nobody"), Amount: 1, Kind: "topup"}, "nobody"); apperr.CodeOf(err) != apperr.UnknownAccount {
			t.Fatalf("unknown wallet: %v", err)
		}
		c.checkBooks(t, 200)
	})
}
