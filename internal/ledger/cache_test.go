package ledger

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestCloseAccountDropsCache: an account the committer has just used (and,
// on SQLite, cached as open) is closed; the next transfer to it must be
// refused as closed, not applied from the cached state.
func TestCloseAccountDropsCache(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("w", KindWallet, 0)
		f.account("c", KindReceivable, 0)
		f.fund("w", 1000)
		for i := 0; i < 3; i++ {
			id := fmt.Sprint("c", i)
			f.account(id, KindReceivable, 0)
			if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "in-" + id, Debit: "w", Credit: id, Amount: 100}); err != nil {
				t.Fatal(err)
			}
			if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "out-" + id, Debit: id, Credit: "w", Amount: 100}); err != nil {
				t.Fatal(err)
			}
			if err := f.l.CloseAccount(f.ctx, id); err != nil {
				t.Fatal(err)
			}
			f.refused(apperr.AccountClosed, func() error {
				_, err := f.l.Transfer(f.ctx, TransferRequest{Key: "late-" + id, Debit: "w", Credit: id, Amount: 1})
				return err
			})
		}
		if got := f.bal("w"); got != 1000 {
			t.Fatalf("w = %d, want 1000", got)
		}
		f.check()
	})
}

// TestTwoLedgersOneSQLiteFile: two Ledgers over one SQLite file (as a
// second process would) spend from the same wallets. Each must notice the
// other's commits (PRAGMA data_version) and drop its account cache, so
// nobody overspends and every balance matches its postings.
func TestTwoLedgersOneSQLiteFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "two.db")
	db1, db2 := openDB(t, path), openDB(t, path)
	l1 := openLedger(t, db1, Options{})
	l2 := openLedger(t, db2, Options{})
	const wallets = 6
	for i := 0; i < wallets; i++ {
		if _, err := l1.CreateAccount(ctx, Account{ID: fmt.Sprint("w", i), Kind: KindWallet}); err != nil {
			t.Fatal(err)
		}
		if _, err := l1.TopUp(ctx, fmt.Sprint("top", i), fmt.Sprint("w", i), 1000, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l1.CreateAccount(ctx, Account{ID: "bus", Kind: KindReceivable}); err != nil {
		t.Fatal(err)
	}
	// Warm both caches with every wallet's balance.
	for i, l := range []*Ledger{l1, l2} {
		for w := 0; w < wallets; w++ {
			if _, err := l.Transfer(ctx, TransferRequest{Key: fmt.Sprint("warm", i, "-", w), Debit: fmt.Sprint("w", w), Credit: "bus", Amount: 100}); err != nil {
				t.Fatal(err)
			}
		}
	}
	var ok atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := l1
			if g%2 == 1 {
				l = l2
			}
			for i := 0; i < 30; i++ {
				_, err := l.Transfer(ctx, TransferRequest{Key: fmt.Sprint("g", g, "-", i), Debit: fmt.Sprint("w", (g+i)%wallets), Credit: "bus", Amount: 300})
				switch apperr.CodeOf(err) {
				case "":
					ok.Add(1)
				case apperr.InsufficientFunds:
				default:
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	// Each wallet had 1000 − 2×100 = 800 left: exactly 2 fares of 300.
	if ok.Load() != 2*wallets {
		t.Fatalf("%d fares succeeded, want %d", ok.Load(), 2*wallets)
	}
	for _, l := range []*Ledger{l1, l2} {
		for w := 0; w < wallets; w++ {
			a, err := l.Balance(ctx, fmt.Sprint("w", w))
			if err != nil || a.Balance != 200 {
				t.Fatalf("w%d = %d %v, want 200", w, a.Balance, err)
			}
		}
	}
	r, err := l2.Check(ctx)
	if err != nil || !r.OK() {
		t.Fatalf("%+v %v", r, err)
	}
}
