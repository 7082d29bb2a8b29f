package ledger

import (
	"context"
	"database/sql"
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

// TestShared: a process notices another on the chain head, by the head's
// moves or by a NOWAIT that found it locked (batches without journal
// entries do not move it), and tries NOWAIT again once it has seen no
// sign of another process for sharedFor.
func TestShared(t *testing.T) {
	t0 := time.Now()
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	s := &lingerState{on: true}
	s.observe(0, 10, false, at(0), 4*time.Millisecond)
	s.observe(10, 42, false, at(time.Millisecond), 4*time.Millisecond)
	if s.shared {
		t.Fatal("a process alone on the database counts as shared")
	}
	s.observe(50, 80, false, at(2*time.Millisecond), 4*time.Millisecond) // another process moved it from 42 to 50
	if !s.shared {
		t.Fatal("another process's commits were not noticed")
	}
	s.observe(80, 90, false, at(sharedFor/2), 4*time.Millisecond)
	if !s.shared {
		t.Fatal("forgot the other process before sharedFor")
	}
	s.observe(90, 95, false, at(sharedFor+3*time.Millisecond), 4*time.Millisecond)
	if s.shared {
		t.Fatal("still shared after sharedFor of batches that followed on their own")
	}
	// Batches that write no entry leave the head at 95: only the failed
	// NOWAIT shows the other process.
	s.observe(95, 95, true, at(2*sharedFor), 4*time.Millisecond)
	if !s.shared {
		t.Fatal("a NOWAIT that found the head locked was not noticed")
	}
	s.observe(95, 95, false, at(2*sharedFor+time.Millisecond), 4*time.Millisecond)
	if !s.shared {
		t.Fatal("forgot the other process right after its lock was seen")
	}
	if off := (&lingerState{}); func() bool { off.observe(1, 2, true, at(0), 0); return off.shared }() {
		t.Fatal("SQLite (on false) counts as shared")
	}
}

// TestChainLockWaitAbsorbs: while another process holds the chain head (its
// batch committing), the waiting batch takes in the requests that arrive
// meanwhile, so they commit together once the lock is free; each is
// applied once and answered. The waiting batch began its transaction in a
// pipeline (no attachments), so requests with attachments that arrive
// meanwhile are carried to the next batch, which writes them.
func TestChainLockWaitAbsorbs(t *testing.T) {
	dsn := storetest.Postgres(t)
	ctx := context.Background()
	db := openDB(t, dsn)
	other := openDB(t, dsn) // "another process"
	l := openLedger(t, db, Options{})
	f := &fixture{t: t, ctx: ctx, db: db, l: l, clk: newClock()}
	f.account("bus", KindReceivable, 0)
	f.account("w", KindWallet, 0)
	if _, err := l.TopUp(ctx, "fund", "w", 100_000, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := db.W.ExecContext(ctx, `CREATE TABLE att_notes (name TEXT PRIMARY KEY, outcome TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	tx, err := other.W.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `SELECT seq FROM ledger_chain WHERE id = 1 FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	b0 := l.Stats().Batches
	const n = 20
	errs := make(chan error, n)
	go func() { // the first request: its batch finds the lock taken and waits
		_, err := l.Transfer(ctx, TransferRequest{Key: "fare-0", Debit: "w", Credit: "bus", Amount: 100, Kind: "fare"})
		errs <- err
	}()
	time.Sleep(200 * time.Millisecond)
	for i := 1; i < n; i++ { // these queue behind it
		go func() {
			_, err := l.Transfer(ctx, TransferRequest{Key: fmt.Sprint("fare-", i), Debit: "w", Credit: "bus", Amount: 100, Kind: "fare"})
			errs <- err
		}()
	}
	const attached = 3
	nr := &noteRows{}
	for i := 0; i < attached; i++ {
		go func() {
			out, err := l.Attach(ctx, []TransferRequest{{Key: fmt.Sprint("att-", i), Debit: "w", Credit: "bus", Amount: 100, Kind: "fare"}},
				&Attachment{To: nr, Value: fmt.Sprint("note-", i)})
			if err == nil {
				err = out.Err
			}
			if err == nil && len(out.Transfers) != 1 {
				err = fmt.Errorf("attached request answered with %d transfers", len(out.Transfers))
			}
			errs <- err
		}()
	}
	time.Sleep(200 * time.Millisecond)
	if err := tx.Commit(); err != nil { // the other process's batch is done
		t.Fatal(err)
	}
	for i := 0; i < n+attached; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := l.Stats().Batches - b0; got != 2 {
		t.Fatalf("%d transfers and %d attached requests committed in %d batches, want 2: the waiting batch should take in the transfers queued behind it, the next the attached requests", n, attached, got)
	}
	if a, err := l.Balance(ctx, "w"); err != nil || a.Balance != 100_000-(n+attached)*100 {
		t.Fatalf("wallet %+v %v, want %d", a, err, 100_000-(n+attached)*100)
	}
	var notes int
	if err := db.R.QueryRowContext(ctx, `SELECT count(*) FROM att_notes WHERE outcome = 'ok'`).Scan(&notes); err != nil || notes != attached {
		t.Fatalf("%d attachments written (%v), want %d", notes, err, attached)
	}
	if r, err := l.Check(ctx); err != nil || !r.OK() {
		t.Fatalf("check: %+v %v", r, err)
	}
}

// TestChainLockWaitReadsMovedHead: a batch that waits for the chain head
// takes the head as the other process left it, not as it was when the
// wait began: it reads the head in the statement that locks it (the
// waiting path has no second look at it), so its entries chain onto the
// other process's and the journal stays one unbroken chain.
func TestChainLockWaitReadsMovedHead(t *testing.T) {
	dsn := storetest.Postgres(t)
	ctx := context.Background()
	release := make(chan struct{})
	holding := make(chan struct{}, 1)
	hold := func(ctx context.Context, _ *sql.Tx, entries int) error {
		if entries > 0 {
			holding <- struct{}{}
			<-release
		}
		return nil
	}
	l1 := openLedger(t, openDB(t, dsn), Options{})
	l2 := openLedger(t, openDB(t, dsn), Options{beforeCommit: hold}) // "another process"
	for _, id := range []string{"w", "bus"} {
		if _, err := l1.CreateAccount(ctx, Account{ID: id, Kind: KindWallet}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l1.TopUp(ctx, "fund", "w", 100_000, nil); err != nil {
		t.Fatal(err)
	}
	var head0 int64
	if err := l1.db.R.QueryRowContext(ctx, `SELECT seq FROM ledger_chain WHERE id = 1`).Scan(&head0); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	go func() { // the other process's batch locks the head and stops before COMMIT
		_, err := l2.Transfer(ctx, TransferRequest{Key: "other", Debit: "w", Credit: "bus", Amount: 300, Kind: "fare"})
		errs <- err
	}()
	<-holding
	go func() { // this process's batch finds the head locked and waits for it
		_, err := l1.Transfer(ctx, TransferRequest{Key: "mine", Debit: "w", Credit: "bus", Amount: 200, Kind: "fare"})
		errs <- err
	}()
	time.Sleep(300 * time.Millisecond)
	close(release)
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var other, mine int64
	if err := l1.db.R.QueryRowContext(ctx, `SELECT (SELECT seq FROM ledger_journal WHERE idem_key = 'other'), (SELECT seq FROM ledger_journal WHERE idem_key = 'mine')`).Scan(&other, &mine); err != nil {
		t.Fatal(err)
	}
	if st := l1.Stats(); st.FailedBatches != 0 || st.RetriedBatches != 0 {
		t.Fatalf("the waiting process's batches: %d failed, %d tried again; want none", st.FailedBatches, st.RetriedBatches)
	}
	if other != head0+1 || mine != other+1 {
		t.Fatalf("head was %d; the other process's entry has seq %d and the waiting batch's %d, want %d and %d", head0, other, mine, head0+1, head0+2)
	}
	if a, err := l1.Balance(ctx, "w"); err != nil || a.Balance != 100_000-500 {
		t.Fatalf("wallet %+v %v, want %d", a, err, 100_000-500)
	}
	if r, err := l1.Check(ctx); err != nil || !r.OK() {
		t.Fatalf("check: %+v %v", r, err)
	}
}
