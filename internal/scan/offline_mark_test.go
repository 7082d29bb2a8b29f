package scan_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// uploads is a scan service applying c's terminal's batches: over c's
// node's database and ledger (this process), or, with other, over a pool
// and ledger of its own on the same database, as another node process.
func uploads(t testing.TB, c *city, dsn string, other bool) *scan.Service {
	t.Helper()
	ctx := context.Background()
	n := c.tn.Node
	db, l := n.DB, n.Ledger
	if other {
		var err error
		if db, err = store.Open(ctx, dsn, store.Options{}); err != nil {
			t.Fatal(err)
		}
		if l, err = ledger.Open(ctx, db, ledger.Options{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close(); db.Close() })
	}
	svc, err := scan.New(ctx, scan.Deps{DB: db, Vault: n.Vault, Catalog: n.Catalog, Residents: n.Residents, Ledger: l,
		Terminals: terminal.New(db, nil, nil, nil), Registry: scan.NewRegistry(), City: n.City})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	return svc
}

// raceUploads applies batch a through first and batch b through second
// (the same service, or another process's), a held until b has finished,
// or waits for a: right after a has read its terminal's mark, or with
// atCredit before it settles its records on credit. It returns both
// reports.
func raceUploads(t *testing.T, first, second *scan.Service, term terminal.Terminal, a, b terminal.Batch, atCredit bool) (ra, rb scan.BatchReport) {
	t.Helper()
	ctx := context.Background()
	held, release, waits := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var reads atomic.Int32
	var waitOnce sync.Once
	hold := func(string) {
		if reads.Add(1) == 1 { // the first upload, the first time only
			close(held)
			<-release
		}
	}
	waiting := func(string) { waitOnce.Do(func() { close(waits) }) }
	if atCredit {
		scan.SetBatchHooks(first, nil, hold, waiting)
	} else {
		scan.SetBatchHooks(first, hold, nil, waiting)
	}
	if second != first {
		scan.SetBatchHooks(second, nil, nil, waiting)
	}
	defer func() {
		scan.SetBatchHooks(first, nil, nil, nil)
		scan.SetBatchHooks(second, nil, nil, nil)
	}()
	var errA, errB error
	aDone, bDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(aDone); ra, errA = first.ApplyBatch(ctx, term, a) }()
	select {
	case <-held:
	case <-aDone:
		t.Fatalf("upload %s finished without reaching the hold: %v", a.ID, errA)
	case <-time.After(30 * time.Second):
		t.Fatalf("upload %s never reached the hold", a.ID)
	}
	go func() { defer close(bDone); rb, errB = second.ApplyBatch(ctx, term, b) }()
	select {
	case <-bDone:
	case <-waits:
	case <-time.After(30 * time.Second):
		t.Fatalf("upload %s neither finished nor waited for %s", b.ID, a.ID)
	}
	close(release)
	<-aDone
	<-bDone
	if errA != nil || errB != nil {
		t.Fatalf("uploads: %v, %v", errA, errB)
	}
	return ra, rb
}

// markOf is the terminal's mark as stored.
func markOf(t testing.TB, svc *scan.Service, id string) terminal.Mark {
	t.Helper()
	m, err := svc.Terminals.OfflineMark(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// storedKeys are the keys of the terminal's stored offline scans.
func storedKeys(t testing.TB, c *city, term string) map[string]bool {
	t.Helper()
	rows, err := c.tn.DB.R.QueryContext(context.Background(), `SELECT idem_key FROM scans WHERE terminal_id = $1`, term)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		out[k] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestConcurrentUploadsCheckedAgainstTheMark: two uploads of one terminal
// at once — in one node process, and in two processes over one database —
// are checked against the terminal's mark as the other left it, as if one
// ran after the other. Batch A holds x1 (seq 1) and x2 (seq 5, a minute
// later); batch B re-sends x1 and adds y (seq 4, half an hour after x1).
// Applied one after the other, either x2 follows y on a clock set back 29
// minutes (clock_back) or y follows x2 with an earlier number but a later
// time (out_of_order): one of them is not applied. A is held right after
// reading the mark until B has finished (or waits for A). Before the fix A
// checked x2 against the mark it read before B stored y, and both were
// applied (and charged); the mark's time went back 29 minutes.
//
// Each record is applied once (x1 in one report, a duplicate in the other,
// charged once), the other of x2 and y is rejected, the rows and the mark
// are those of the records applied, the holders are charged for exactly
// those, and re-sending both batches changes nothing. x2's holder has an
// empty wallet in some runs ("ride first, pay later": its row is written
// by the credit step, debtRecord) and is funded in the others; in one, A
// is held only before that step (x1 stored, x2 checked against the mark
// and waiting for credit), so that B moves the mark between the two.
func TestConcurrentUploadsCheckedAgainstTheMark(t *testing.T) {
	for _, tc := range []struct {
		name     string
		other    bool // B through another node process
		credit   bool // x2's holder has an empty wallet
		atCredit bool // A held before its credit step, not after reading the mark
	}{
		{"one process", false, false, false},
		{"one process, credit", false, true, false},
		{"one process, held before credit", false, true, true},
		{"two processes", true, false, false},
		{"two processes, credit", true, true, false},
		{"two processes, held before credit", true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			storetest.Each(t, func(t *testing.T, dsn string) {
				c := setup(t, dsn, []string{"transit.bus"})
				ctx := context.Background()
				p := c.people[0] // 10,000 in the wallet
				q := p
				if tc.credit {
					q = debtor(t, c, 77)
				}
				here := uploads(t, c, dsn, false)
				there := here
				if tc.other {
					there = uploads(t, c, dsn, true)
				}
				term, err := here.Terminals.Terminal(ctx, c.term)
				if err != nil {
					t.Fatal(err)
				}
				t0 := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
				x1 := terminal.Record{ID: "x1", Seq: 1, At: t0, Scenario: "transit.bus", CardNumber: p.card}
				x2 := terminal.Record{ID: "x2", Seq: 5, At: t0.Add(time.Minute), Scenario: "transit.bus", CardNumber: q.card}
				y := terminal.Record{ID: "y", Seq: 4, At: t0.Add(30 * time.Minute), Scenario: "transit.bus", CardNumber: p.card}
				a := terminal.Batch{Terminal: c.term, ID: "A", Records: []terminal.Record{x1, x2}}
				b := terminal.Batch{Terminal: c.term, ID: "B", Records: []terminal.Record{x1, y}}

				ra, rb := raceUploads(t, there, here, term, a, b, tc.atCredit)

				items := map[string][]scan.RecordReport{}
				for _, rep := range []scan.BatchReport{ra, rb} {
					if rep.Applied+rep.Declined+rep.Duplicates+rep.Rejected != rep.Records || len(rep.Items) != rep.Records {
						t.Errorf("batch %s: counts do not add up: %+v", rep.BatchID, rep)
					}
					for _, it := range rep.Items {
						items[it.ID] = append(items[it.ID], it)
					}
				}
				t.Logf("A: %+v\nB: %+v", ra.Items, rb.Items)
				// x1: applied once, the other upload's item a duplicate of it.
				if x := items["x1"]; len(x) != 2 || x[0].Status == x[1].Status ||
					(x[0].Status != scan.StatusApplied && x[0].Status != scan.StatusDuplicate) ||
					(x[1].Status != scan.StatusApplied && x[1].Status != scan.StatusDuplicate) || x[0].ChargedFen != 200 || x[1].ChargedFen != 200 {
					t.Errorf("x1: %+v; want applied in one batch and a duplicate in the other, 200 each", x)
				}
				// Exactly one of x2 and y applied; the other rejected for its order.
				it2, itY := items["x2"][0], items["y"][0]
				applied := map[string]terminal.Record{"x1": x1}
				switch {
				case it2.Status == scan.StatusApplied && itY.Status == scan.StatusRejected && itY.Reason == apperr.OutOfOrder:
					applied["x2"] = x2
				case itY.Status == scan.StatusApplied && it2.Status == scan.StatusRejected && it2.Reason == apperr.ClockBack:
					applied["y"] = y
				default:
					t.Fatalf("x2 %+v, y %+v: want one applied and the other rejected (y out_of_order after x2, or x2 clock_back after y)", it2, itY)
				}
				// The outcome follows the order the uploads took: in one
				// process B waits for A; another process's B went first.
				if want := map[bool]string{false: "x2", true: "y"}[tc.other]; applied[want].ID == "" {
					t.Errorf("applied %v, want x1 and %s", applied, want)
				}
				// Rows: exactly the applied records'.
				keys := storedKeys(t, c, c.term)
				if len(keys) != len(applied) {
					t.Errorf("stored %v, want the rows of %v", keys, applied)
				}
				for id := range applied {
					if !keys["off:"+id] {
						t.Errorf("no row for applied record %s (stored %v)", id, keys)
					}
				}
				// The mark: the applied record with the highest number.
				want := x2
				if _, ok := applied["y"]; ok {
					want = y
				}
				if m := markOf(t, here, c.term); !m.Set || m.Seq != want.Seq || !m.At.Equal(want.At) {
					t.Errorf("mark %+v, want seq %d at %s (record %s)", m, want.Seq, want.At, want.ID)
				}
				// Money: 200 per applied record, from its holder.
				charged := map[string]int64{}
				for _, r := range applied {
					charged[r.CardNumber] += 200
				}
				if w := wallet(t, c, p); w != 10_000-charged[p.card] {
					t.Errorf("wallet of x1's holder %d, want %d", w, 10_000-charged[p.card])
				}
				if tc.credit {
					if d := storedDebt(t, c, q); d != charged[q.card] {
						t.Errorf("debt of x2's holder %d, want %d", d, charged[q.card])
					}
				}
				c.checkBooks(t, 200*int64(len(applied)))

				// Re-sent, one after the other: nothing moves.
				for _, bt := range []terminal.Batch{a, b} {
					rep, err := here.ApplyBatch(ctx, term, bt)
					if err != nil {
						t.Fatal(err)
					}
					for _, it := range rep.Items {
						_, was := applied[it.ID]
						if was && it.Status != scan.StatusDuplicate || !was && it.Status != scan.StatusRejected {
							t.Errorf("re-sent %s: %+v (applied before: %v)", bt.ID, it, was)
						}
					}
				}
				c.checkBooks(t, 200*int64(len(applied)))
				if got := storedKeys(t, c, c.term); len(got) != len(applied) {
					t.Errorf("after re-sending: stored %v", got)
				}
			})
		})
	}
}
