package ledger

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// The deferred sync (SQLite) must answer no caller before the fsync that
// covers its batch, leave the shared writer connection in
// synchronous=FULL for everybody else, and turn a failed fsync into a
// retryable error whose retry finds the committed transfer.
func TestDeferredSync(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, filepath.Join(t.TempDir(), "sync.db"))
	if !db.DeferredSync() {
		t.Fatal("SQLite should defer its sync")
	}
	gate := make(chan struct{})
	synced := make(chan struct{}, 16)
	fail := make(chan bool, 1)
	l := openLedger(t, db, Options{syncWAL: func() error {
		<-gate
		synced <- struct{}{}
		select {
		case <-fail:
			return errors.New("disk gone")
		default:
			return db.SyncWAL()
		}
	}})
	t.Cleanup(func() { close(gate) }) // runs before the ledger's Close: a failed test never hangs the syncer
	release := func() { gate <- struct{}{}; <-synced }
	for _, a := range []Account{{ID: "w1", Kind: KindWallet}, {ID: "bus", Kind: KindReceivable}} {
		if _, err := l.CreateAccount(ctx, a); err != nil {
			t.Fatal(err)
		}
	}

	// Accounts are created outside the committer; the top-up is not.
	done := make(chan error, 1)
	go func() {
		_, err := l.TopUp(ctx, "top-1", "w1", 1000, nil)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("top-up answered before its batch was synced (err %v)", err)
	case <-time.After(150 * time.Millisecond):
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// The writer pool's connection is back in FULL mode (2).
	var mode int
	if err := db.W.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&mode); err != nil || mode != 2 {
		t.Fatalf("writer connection left in synchronous=%d (%v), want 2 (FULL)", mode, err)
	}

	if err := l.Broken(); err != nil {
		t.Fatalf("a running ledger reports %v", err)
	}
	// A failed sync stops the ledger: the batch's caller and every later
	// request are refused (a later fsync might succeed without the lost
	// pages), until a restart recovers from what is on disk.
	fail <- true
	go func() {
		_, err := l.Transfer(ctx, TransferRequest{Key: "fare-1", Debit: "w1", Credit: "bus", Amount: 200, Kind: "fare"})
		done <- err
	}()
	release()
	if err := <-done; apperr.CodeOf(err) != apperr.Unavailable {
		t.Fatalf("failed sync answered %v, want unavailable", err)
	}
	for _, key := range []string{"fare-1", "fare-2"} {
		if _, err := l.Transfer(ctx, TransferRequest{Key: key, Debit: "w1", Credit: "bus", Amount: 200, Kind: "fare"}); apperr.CodeOf(err) != apperr.Unavailable {
			t.Fatalf("transfer %s after a failed sync: %v, want unavailable", key, err)
		}
	}
	if err := l.Broken(); apperr.CodeOf(err) != apperr.Unavailable {
		t.Fatalf("Broken after a failed sync: %v, want unavailable (the health check's answer)", err)
	}
	if err := l.Durable(ctx); apperr.CodeOf(err) != apperr.Unavailable {
		t.Fatalf("Durable after a failed sync: %v, want unavailable", err)
	}
	// Reads still work; the fare committed before the failed sync counts
	// once (after a power cut it might be gone: no caller was told it
	// succeeded).
	a, err := l.Balance(ctx, "w1")
	if err != nil || a.Balance != 800 {
		t.Fatalf("wallet: %+v %v, want 800", a, err)
	}
	if r, err := l.Check(ctx); err != nil || !r.OK() {
		t.Fatalf("check: %+v %v", r, err)
	}
}
