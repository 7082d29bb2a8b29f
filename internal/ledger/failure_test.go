package ledger

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestDatabaseFailureMidBatch breaks the database connection after a
// batch has written its journal rows and balances but before COMMIT. On
// PostgreSQL the batch's backend is killed with pg_terminate_backend from
// another connection; on SQLite the commit is failed by the hook (the
// single writer connection cannot be killed from outside). Every caller in
// that batch must get "unavailable", nothing may be written, and retries
// with the same keys must apply each transfer exactly once.
func TestDatabaseFailureMidBatch(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := openDB(t, dsn)
		var admin *store.DB
		if db.Dialect == store.Postgres {
			admin = openDB(t, dsn)
		}
		var armed, failures, minEntries, failedEntries atomic.Int32
		hook := func(ctx context.Context, tx *sql.Tx, entries int) error {
			if entries < int(minEntries.Load()) || !armed.CompareAndSwap(1, 0) {
				return nil
			}
			failedEntries.Store(int32(entries))
			failures.Add(1)
			if admin == nil {
				return errors.New("injected failure before commit")
			}
			var pid int
			if err := tx.QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
				return err
			}
			var ok bool
			if err := admin.W.QueryRowContext(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil || !ok {
				return fmt.Errorf("terminate: %v %v", ok, err)
			}
			return nil // COMMIT now fails: the connection is gone
		}
		clk := newClock()
		l := openLedger(t, db, Options{Now: clk.Now, beforeCommit: hook})
		f := &fixture{t: t, ctx: ctx, db: db, l: l, clk: clk}
		f.account("w", KindWallet, 0)
		f.account("bus", KindReceivable, 0)
		f.fund("w", 100000)
		h, err := l.Hold(ctx, HoldRequest{Key: "h", Debit: "w", Credit: "bus", Amount: 500})
		if err != nil {
			t.Fatal(err)
		}
		before := f.snap()

		const n = 40
		reqs := make([]TransferRequest, n)
		for i := range reqs {
			reqs[i] = TransferRequest{Key: fmt.Sprint("fare-", i), Debit: "w", Credit: "bus", Amount: int64(10 + i)}
		}
		// One synchronous request fails alone; then a burst, whose first
		// batch fails.
		armed.Store(1)
		if _, err := l.Transfer(ctx, reqs[0]); apperr.CodeOf(err) != apperr.Unavailable {
			t.Fatalf("want unavailable, got %v", err)
		}
		if _, err := l.PostHold(ctx, "post", h.ID, 100); err != nil {
			t.Fatalf("the ledger did not recover after a failed batch: %v", err)
		}
		before = f.snap()
		minEntries.Store(5) // fail a batch of several callers
		armed.Store(1)
		errs := make([]error, n)
		ids := make([]string, n)
		var wg sync.WaitGroup
		for i := range reqs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tr, err := l.Transfer(ctx, reqs[i])
				errs[i], ids[i] = err, tr.ID
			}()
		}
		wg.Wait()
		var okN, unavailable int
		var okSum int64
		for i, err := range errs {
			switch apperr.CodeOf(err) {
			case "":
				okN++
				okSum += reqs[i].Amount
			case apperr.Unavailable:
				unavailable++
				if !apperr.ToProblem(err).Retryable {
					t.Fatal("unavailable must be marked retryable")
				}
			default:
				t.Fatalf("request %d: %v", i, err)
			}
		}
		if unavailable < 5 || unavailable != int(failedEntries.Load()) || failures.Load() != 2 {
			t.Fatalf("injected failure did not hit any caller (%d failures)", failures.Load())
		}
		// Nothing of the failed batch was written.
		var journal int64
		db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM ledger_journal`).Scan(&journal)
		if journal != before.Journal+int64(okN) {
			t.Fatalf("journal has %d entries, want %d + %d successes", journal, before.Journal, okN)
		}
		if got := f.bal("bus"); got != 100+okSum {
			t.Fatalf("bus = %d, want %d", got, 100+okSum)
		}
		f.check()
		// Retry everything with the same keys: each applies exactly once.
		var total int64
		for i := range reqs {
			tr, err := l.Transfer(ctx, reqs[i])
			if err != nil {
				t.Fatal(err)
			}
			if errs[i] == nil && (tr.ID != ids[i] || !tr.Replayed) {
				t.Fatalf("retry of a committed transfer: %+v (was %s)", tr, ids[i])
			}
			total += reqs[i].Amount
		}
		if got := f.bal("bus"); got != 100+total {
			t.Fatalf("bus = %d, want %d", got, 100+total)
		}
		f.check()
	})
}
