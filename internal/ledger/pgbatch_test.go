package ledger

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestPipelinedBatchKilledBackends kills the ledger's PostgreSQL backends
// again and again while 16 callers transfer, so pipelined batches (and the
// pool's connections) die at every stage: before BEGIN, while waiting for
// the chain-head lock, between the load and the write pipeline, at COMMIT.
// Callers retry "unavailable" with the same key. Afterwards every key must
// have been applied exactly once, the balances must match, and Check must
// pass.
func TestPipelinedBatchKilledBackends(t *testing.T) {
	dsn := storetest.Postgres(t)
	ctx := context.Background()
	db, err := store.Open(ctx, dsn, store.Options{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	admin, err := store.Open(ctx, dsn, store.Options{MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	l := openLedger(t, db, Options{BatchTimeout: 2 * time.Second})
	f := &fixture{t: t, ctx: ctx, db: db, l: l, clk: newClock()}
	f.account("bus", KindReceivable, 0)
	for i := 0; i < 8; i++ {
		f.account(fmt.Sprint("w", i), KindWallet, 0)
		f.fund(fmt.Sprint("w", i), 1_000_000)
	}

	// The killer runs for the first 700 ms; callers retry meanwhile and
	// succeed once it stops.
	var kills atomic.Int64
	var killer sync.WaitGroup
	killer.Add(1)
	go func() {
		defer killer.Done()
		for end := time.Now().Add(700 * time.Millisecond); time.Now().Before(end); time.Sleep(3 * time.Millisecond) {
			var n int64
			// admin has one connection: this one, excluded by pid.
			err := admin.W.QueryRowContext(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`).Scan(&n)
			if err == nil {
				kills.Add(n)
			}
		}
	}()

	const workers, per = 16, 30
	var wg sync.WaitGroup
	var want atomic.Int64
	deadline := time.Now().Add(20 * time.Second)
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				amount := int64(1 + g*per + i)
				req := TransferRequest{Key: fmt.Sprint("k", g, "-", i), Debit: fmt.Sprint("w", (g+i)%8), Credit: "bus", Amount: amount}
				for {
					_, err := l.Transfer(ctx, req)
					if err == nil {
						want.Add(amount)
						break
					}
					if apperr.CodeOf(err) != apperr.Unavailable || time.Now().After(deadline) {
						t.Errorf("%s: %v", req.Key, err)
						return
					}
					time.Sleep(2 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	killer.Wait()
	// Idle pooled connections may be ones the killer terminated; drop them
	// so the checks below read through fresh connections.
	db.R.SetMaxIdleConns(0)
	db.R.SetMaxIdleConns(8)
	if t.Failed() {
		return
	}
	if kills.Load() == 0 || l.Stats().FailedBatches == 0 {
		t.Fatalf("no batch failed (%d backends killed): the test proved nothing", kills.Load())
	}
	var rows, sum int64
	if err := db.R.QueryRowContext(ctx, `SELECT count(*), COALESCE(SUM(amount), 0) FROM ledger_journal WHERE idem_key LIKE 'k%'`).Scan(&rows, &sum); err != nil {
		t.Fatal(err)
	}
	if rows != workers*per || sum != want.Load() {
		t.Fatalf("journal has %d transfers summing %d, want %d summing %d", rows, sum, workers*per, want.Load())
	}
	if got := f.bal("bus"); got != want.Load() {
		t.Fatalf("bus has %d, want %d", got, want.Load())
	}
	r, err := l.Check(ctx)
	if err != nil || !r.OK() {
		t.Fatalf("check: %+v %v", r, err)
	}
	t.Logf("%d backends killed, %d batches failed and were retried by their callers", kills.Load(), l.Stats().FailedBatches)
}

// TestTwoLedgersSameKeys: two ledgers (two node processes) receive the
// same requests at the same time. Whichever locks the chain head second
// finds the key committed (its key look-up runs after the lock, in the
// same pipeline) and replays: each key is applied once and both callers
// get the same transfer.
func TestTwoLedgersSameKeys(t *testing.T) {
	dsn := storetest.Postgres(t)
	ctx := context.Background()
	l1 := openLedger(t, openDB(t, dsn), Options{})
	l2 := openLedger(t, openDB(t, dsn), Options{})
	for _, id := range []string{"w", "bus"} {
		if _, err := l1.CreateAccount(ctx, Account{ID: id, Kind: KindWallet}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l1.TopUp(ctx, "fund", "w", 1_000_000, nil); err != nil {
		t.Fatal(err)
	}
	const n = 200
	ids := [2][n]string{}
	var wg sync.WaitGroup
	for side, l := range []*Ledger{l1, l2} {
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := g; i < n; i += 8 {
					tr, err := l.Transfer(ctx, TransferRequest{Key: fmt.Sprint("same-", i), Debit: "w", Credit: "bus", Amount: int64(i + 1)})
					if err != nil {
						t.Error(err)
						return
					}
					ids[side][i] = tr.ID
				}
			}()
		}
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := 0; i < n; i++ {
		if ids[0][i] != ids[1][i] {
			t.Fatalf("key same-%d: %s on one ledger, %s on the other", i, ids[0][i], ids[1][i])
		}
	}
	var rows int64
	if err := l1.db.R.QueryRowContext(ctx, `SELECT count(*) FROM ledger_journal WHERE idem_key LIKE 'same-%'`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	a, _ := l2.Balance(ctx, "bus")
	if rows != n || a.Balance != n*(n+1)/2 {
		t.Fatalf("%d rows, bus %d; want %d rows, bus %d", rows, a.Balance, n, n*(n+1)/2)
	}
	if r, err := l2.Check(ctx); err != nil || !r.OK() {
		t.Fatalf("check: %+v %v", r, err)
	}
}

// TestLinger checks the committer's adaptive wait (linger.go): none while
// this process is alone on the database, and, when another process
// commits in between, a bounded wait that stops as soon as the batch holds
// as many requests as the last two batches did.
func TestLinger(t *testing.T) {
	newL := func() *Ledger {
		l := &Ledger{in: make(chan *op, 64), quit: make(chan struct{}), opt: Options{MaxBatch: 1024}}
		l.lg.on = true
		return l
	}
	ops := func(n int) []*op {
		var b []*op
		for i := 0; i < n; i++ {
			b = append(b, &op{items: make([]item, 1)})
		}
		return b
	}
	// Alone: our own seq follows on; no wait even with callers arriving.
	l := newL()
	l.lg.observe(0, 10, 4*time.Millisecond)
	l.lg.observe(10, 42, 4*time.Millisecond)
	if l.lg.shared {
		t.Fatal("a process alone on the database counts as shared")
	}
	l.lg.prevOps, l.lg.lastOps = 8, 8
	for _, o := range ops(6) {
		l.in <- o
	}
	if b, _ := l.linger(ops(2), 2); len(b) != 2 {
		t.Fatalf("lingered alone: %d requests", len(b))
	}
	// Shared: another process moved the chain head from 42 to 50.
	l = newL()
	l.lg.observe(0, 42, 4*time.Millisecond)
	l.lg.observe(50, 80, 4*time.Millisecond)
	if !l.lg.shared {
		t.Fatal("another process's commits were not noticed")
	}
	l.lg.prevOps, l.lg.lastOps = 8, 8
	for _, o := range ops(20) {
		l.in <- o
	}
	b, n := l.linger(ops(2), 2)
	if len(b) != 16 || n != 16 {
		t.Fatalf("lingered to %d requests (%d items), want 16: the last two batches' size", len(b), n)
	}
	// Nobody comes: the wait is bounded by maxLinger.
	l = newL()
	l.lg.observe(0, 42, time.Second)
	l.lg.observe(50, 80, time.Second)
	l.lg.prevOps, l.lg.lastOps = 8, 8
	t0 := time.Now()
	if b, _ := l.linger(ops(2), 2); len(b) != 2 {
		t.Fatal(len(b))
	}
	if d := time.Since(t0); d < maxLinger || d > 500*time.Millisecond {
		t.Fatalf("waited %v; want maxLinger (%v), give or take scheduling", d, maxLinger)
	}
}
