package scan_test

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestEligibilityMedicalSplit: the medical personal account pays first and
// the wallet the rest, all or nothing: when the two together cannot pay,
// nothing moves (the medical part is not taken alone), a retry of the key
// gets the same answer, and a later bill is split on the balances then.
func TestEligibilityMedicalSplit(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		clk := &eligClock{t: time.Now()}
		c := eligSetupAt(t, dsn, clk, []string{"medical.outpatient"})
		n := c.tn.Node
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(9, 10))
		p := enrol(t, n, rng, resident.CategoryLocal, clk.Now().AddDate(-40, 0, 0), 300, 5_000)
		bal := func() (int64, int64) {
			t.Helper()
			w, err := n.Ledger.Balance(ctx, ledger.WalletID(p.id))
			if err != nil {
				t.Fatal(err)
			}
			m, err := n.Ledger.Balance(ctx, ledger.MedicalID(p.id))
			if err != nil {
				t.Fatal(err)
			}
			return w.Balance, m.Balance
		}
		// Both short together: 5000 + 300 < 8000.
		body := map[string]any{"idempotency_key": "m1", "scenario": "medical.outpatient", "card_number": p.card, "amount_fen": 8_000}
		a, r := c.scan(t, body)
		if a.Decision != "declined" || a.Reason != "insufficient_funds" {
			t.Fatalf("short: %s", r.Body)
		}
		if w, m := bal(); w != 300 || m != 5_000 {
			t.Fatalf("after a declined bill: wallet %d medical %d", w, m)
		}
		if _, r2 := c.scan(t, body); string(r2.Body) != string(r.Body) {
			t.Fatalf("retry answered differently:\n%s\n%s", r.Body, r2.Body)
		}
		// Medical short, wallet pays the rest.
		a, r = c.scan(t, map[string]any{"idempotency_key": "m2", "scenario": "medical.outpatient", "card_number": p.card, "amount_fen": 5_200})
		if a.Decision != "accepted" || a.View["medical_paid_fen"] != float64(5_000) || a.View["wallet_paid_fen"] != float64(200) {
			t.Fatalf("split: %s", r.Body)
		}
		if w, m := bal(); w != 100 || m != 0 {
			t.Fatalf("after the split: wallet %d medical %d", w, m)
		}
		// Medical empty: the wallet alone.
		a, r = c.scan(t, map[string]any{"idempotency_key": "m3", "scenario": "medical.outpatient", "card_number": p.card, "amount_fen": 100})
		if a.Decision != "accepted" || a.View["medical_paid_fen"] != float64(0) || a.View["wallet_paid_fen"] != float64(100) {
			t.Fatalf("wallet only: %s", r.Body)
		}
		c.checkBooks(t, 5_300)
	})
}
