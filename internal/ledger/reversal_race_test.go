package ledger

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestConcurrentReversals: many callers reversing parts of one
// transfer at once, each under its own key and each retrying (a dispute
// refund, finance's reversal endpoint, a federation void), never reverse
// more than the transfer's amount; reversals of those reversals are
// bounded likewise; every retry answers the original.
func TestConcurrentReversals(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("w", KindWallet, 0)
		f.account("shop", KindReceivable, 0)
		f.fund("w", 1000)
		tr, err := f.l.Transfer(f.ctx, TransferRequest{Key: "buy", Debit: "w", Credit: "shop", Amount: 1000})
		if err != nil {
			t.Fatal(err)
		}
		reverseAll := func(of string, n int, amount int64, prefix string) (ok []Transfer) {
			var mu sync.Mutex
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					key := fmt.Sprintf("%s-%d", prefix, i)
					var first Transfer
					for try := range 2 { // the caller retries after a "timeout"
						r, err := f.l.Reverse(f.ctx, key, of, amount)
						switch apperr.CodeOf(err) {
						case "":
							if try == 1 && (first.ID == "" || r.ID != first.ID) && !r.Replayed {
								t.Errorf("%s: a retry applied again: %+v after %+v", key, r, first)
							}
							if try == 0 {
								first = r
								mu.Lock()
								ok = append(ok, r)
								mu.Unlock()
							}
						case apperr.ReversalExceeds:
						default:
							t.Errorf("%s: %v", key, err)
						}
					}
				}()
			}
			wg.Wait()
			return ok
		}
		ok := reverseAll(tr.ID, 24, 100, "r")
		if len(ok) != 10 {
			t.Fatalf("%d reversals of 100 applied to a transfer of 1000, want 10", len(ok))
		}
		if f.bal("w") != 1000 || f.bal("shop") != 0 {
			t.Fatalf("w %d shop %d", f.bal("w"), f.bal("shop"))
		}
		// Reversals of one reversal (the refund was a mistake), at once.
		again := reverseAll(ok[0].ID, 8, 40, "rr")
		if len(again) != 2 {
			t.Fatalf("%d reversals of 40 applied to a reversal of 100, want 2", len(again))
		}
		if f.bal("w") != 920 || f.bal("shop") != 80 {
			t.Fatalf("w %d shop %d", f.bal("w"), f.bal("shop"))
		}
		// The original stays fully reversed: its reversals' reversals do
		// not make room for more.
		f.refused(apperr.ReversalExceeds, func() error { _, err := f.l.Reverse(f.ctx, "late", tr.ID, 1); return err })
		f.check()
	})
}

// TestHoldExpiresWhileCaptured: a hold reaching its timeout while
// it is posted, voided and swept at once ends exactly one way: posted
// (money moved once, the rest released) or expired/voided (nothing
// moved); never posted and released twice, never a pending amount left.
func TestHoldExpiresWhileCaptured(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("w", KindWallet, 0)
		f.account("hosp", KindReceivable, 0)
		f.fund("w", 10_000)
		for round := range 12 {
			h, err := f.l.Hold(f.ctx, HoldRequest{Key: fmt.Sprint("h", round), Debit: "w", Credit: "hosp", Amount: 500, Timeout: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			wBefore, hospBefore := f.bal("w"), f.bal("hosp")
			// Just before, at or after the timeout.
			f.clk.Add(time.Minute + time.Duration(round%3-1)*time.Millisecond)
			var wg sync.WaitGroup
			var posted, voided, expired int
			var mu sync.Mutex
			for i := range 3 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var err error
					switch i {
					case 0:
						_, err = f.l.PostHold(f.ctx, fmt.Sprint("p", round), h.ID, 300)
						if err == nil {
							mu.Lock()
							posted++
							mu.Unlock()
						}
					case 1:
						_, err = f.l.VoidHold(f.ctx, fmt.Sprint("v", round), h.ID)
						if err == nil {
							mu.Lock()
							voided++
							mu.Unlock()
						}
					case 2:
						var n int
						n, err = f.l.ExpireHolds(f.ctx)
						mu.Lock()
						expired += n
						mu.Unlock()
					}
					if err != nil && apperr.CodeOf(err) != apperr.HoldNotPending {
						t.Errorf("round %d op %d: %v", round, i, err)
					}
				}()
			}
			wg.Wait()
			hi, err := f.l.GetHold(f.ctx, h.ID)
			if err != nil {
				t.Fatal(err)
			}
			if posted+voided+expired > 1 {
				t.Fatalf("round %d: posted %d, voided %d, expired %d", round, posted, voided, expired)
			}
			a, _ := f.l.Balance(f.ctx, "w")
			switch hi.Status {
			case HoldPosted:
				if posted != 1 || a.Balance != wBefore-300 || f.bal("hosp") != hospBefore+300 {
					t.Fatalf("round %d: posted hold, w %d hosp %d", round, a.Balance, f.bal("hosp"))
				}
			case HoldVoided, HoldExpired:
				if posted != 0 || a.Balance != wBefore || f.bal("hosp") != hospBefore {
					t.Fatalf("round %d: %s hold, w %d hosp %d", round, hi.Status, a.Balance, f.bal("hosp"))
				}
			default:
				t.Fatalf("round %d: hold %s", round, hi.Status)
			}
			if a.Pending != 0 {
				t.Fatalf("round %d: %d still pending", round, a.Pending)
			}
		}
		f.check()
	})
}

// TestReversedAndByKey: Reversed sums a transfer's reversals, leaving out
// the caller's own key (so that a retry asks for the same amount again);
// GetTransferByKey finds what a key applied, and not_found otherwise.
func TestReversedAndByKey(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("w", KindWallet, 0)
		f.account("shop", KindReceivable, 0)
		f.fund("w", 1000)
		tr, err := f.l.Transfer(f.ctx, TransferRequest{Key: "buy", Debit: "w", Credit: "shop", Amount: 700})
		if err != nil {
			t.Fatal(err)
		}
		for key, amount := range map[string]int64{"r1": 100, "r2": 250} {
			if _, err := f.l.Reverse(f.ctx, key, tr.ID, amount); err != nil {
				t.Fatal(err)
			}
		}
		for except, want := range map[string]int64{"": 350, "r1": 250, "r2": 100, "other": 350} {
			if got, err := f.l.Reversed(f.ctx, tr.ID, except); err != nil || got != want {
				t.Fatalf("Reversed(except %q) = %d %v, want %d", except, got, err, want)
			}
		}
		if got, err := f.l.Reversed(f.ctx, "tr-x", ""); apperr.CodeOf(err) != apperr.NotFound {
			t.Fatalf("a malformed id: %d %v", got, err)
		}
		got, err := f.l.GetTransferByKey(f.ctx, "buy")
		if err != nil || got.ID != tr.ID || got.Amount != 700 {
			t.Fatalf("by key: %+v %v", got, err)
		}
		if _, err := f.l.GetTransferByKey(f.ctx, "never"); apperr.CodeOf(err) != apperr.NotFound {
			t.Fatalf("an unused key: %v", err)
		}
	})
}
