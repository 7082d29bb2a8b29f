package federation_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestVoidDuringSlowBooking reproduces a money defect: B's online
// authorisation times out and B disconnects while A is still booking the
// charge (the ledger transfer queued or committed), then B's void arrives
// before A has recorded anything. The resident must end up not charged, the
// clearing accounts must mirror and every ledger must check — whether the
// booking was slow after moving the money or before.
func TestVoidDuringSlowBooking(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			reg := newRegion(t)
			cfg := testConfig(reg.anchor.Public(), reg.path)
			dsn := ""
			if backend == "postgres" {
				dsn = storetest.Postgres(t)
			}
			a := startCity(t, "CN-330100", dsn, cfg) // home city, slow
			b := startCity(t, "CN-310000", "", cfg)
			reg.write(t, reg.anchor, member(a, a.url), member(b, b.url))
			eventually(t, "both cities to trust each other", 10*time.Second, func() bool { return trusts(a, b.id) && trusts(b, a.id) })
			ctx := context.Background()
			res := a.demo.Residents[0]
			card, err := a.Residents.Card(ctx, res.CardNumber)
			if err != nil {
				t.Fatal(err)
			}
			before := a.wallet(t, res.CardNumber)

			for i, stage := range []string{"after_ledger", "before_ledger"} {
				cti := fmt.Sprintf("slow-%s-%d", stage, time.Now().UnixNano())
				id := federation.MessageID(b.id, cti)
				hooked := make(chan struct{})
				federation.SetHook(a.Fed, func(hctx context.Context, st, mid string) {
					if mid != id {
						return
					}
					if st == "booked" {
						close(hooked)
					}
					if st != stage {
						return
					}
					// Stay slow until B has given up, disconnected and had
					// its void answered by A.
					deadline := time.Now().Add(10 * time.Second)
					for time.Now().Before(deadline) && outState(t, b, id) != "voided" {
						time.Sleep(20 * time.Millisecond)
					}
				})
				r, err := b.Fed.Authorize(ctx, a.id, scan.RemoteCharge{CTI: cti, Subject: card.Token, AmountFen: 300, Scenario: "transit.bus"})
				if err != nil || r.Approved || r.Reason != apperr.HomeUnreachable {
					t.Fatalf("%s: B's authorisation: %+v %v (want declined home_unreachable)", stage, r, err)
				}
				if got := outState(t, b, id); got == "" {
					t.Fatalf("%s: B has no outbox row %s", stage, id)
				}
				select {
				case <-hooked:
				case <-time.After(15 * time.Second):
					t.Fatalf("%s: A never booked the charge", stage)
				}
				eventually(t, "A's inbox row to be voided", 10*time.Second, func() bool { return inState(t, a, id) == federation.StateVoided })
				checkBooks(t, a, b)
				if got := a.wallet(t, res.CardNumber); got != before {
					t.Fatalf("%s (case %d): the resident's wallet is %d, was %d: charged for a ride B declined", stage, i, got, before)
				}
				if st := inState(t, a, id); st != federation.StateVoided {
					t.Fatalf("%s: A's inbox row is %q, want voided", stage, st)
				}
				checkBooks(t, a, b)
			}

			// The same race on the bulk path: a void delivered while a
			// batch of guaranteed charges is being booked, before and after
			// the batch's ledger transaction.
			for _, stage := range []string{"before_ledger", "after_ledger"} {
				now := time.Now()
				var msgs []federation.Charge
				for i := 0; i < 5; i++ {
					msgs = append(msgs, federation.Charge{ID: fmt.Sprintf("%s.batch-%s-%d-%d", b.id, stage, now.UnixNano(), i), Mode: federation.ModeGuaranteed,
						Subject: card.Token, AmountFen: 100, Scenario: "transit.bus", CreatedAt: now})
				}
				victim := msgs[2]
				voided := false
				federation.SetHook(a.Fed, func(hctx context.Context, st, mid string) {
					if st != stage || mid != victim.ID || voided {
						return
					}
					voided = true
					v := victim
					v.Mode = federation.ModeVoid
					res := deliver(t, a, b, v)
					if res[0].State != federation.StateVoided {
						t.Errorf("%s: the void was answered %+v", stage, res[0])
					}
				})
				w0 := a.wallet(t, res.CardNumber)
				got := deliver(t, a, b, msgs...)
				federation.SetHook(a.Fed, nil)
				if !voided {
					t.Fatalf("%s: the hook never ran", stage)
				}
				for i, r := range got {
					// The victim is voided before it is booked (refused), or
					// after (answered applied, then reversed by the void).
					want := federation.StateApplied
					if msgs[i].ID == victim.ID && stage == "before_ledger" {
						want = federation.StateVoided
					}
					if r.ID != msgs[i].ID || r.State != want {
						t.Fatalf("%s: answer %d is %+v, want %s", stage, i, r, want)
					}
				}
				// Delivered again (a lost answer): the same answers, nothing moves.
				again := deliver(t, a, b, msgs...)
				for i := range again {
					if msgs[i].ID == victim.ID {
						if again[i].State != federation.StateVoided {
							t.Fatalf("%s: the voided message is answered %+v when delivered again", stage, again[i])
						}
						continue
					}
					if again[i].State != got[i].State || again[i].Transfers[0] != got[i].Transfers[0] {
						t.Fatalf("%s: replayed answer %d is %+v, was %+v", stage, i, again[i], got[i])
					}
				}
				if w := a.wallet(t, res.CardNumber); w != w0-400 {
					t.Fatalf("%s: the wallet went from %d to %d, want -400 (four charges, one voided)", stage, w0, w)
				}
				if st := inState(t, a, victim.ID); st != federation.StateVoided {
					t.Fatalf("%s: the voided message's row is %q", stage, st)
				}
				chk, err := a.Ledger.Check(ctx)
				if err != nil || chk.SumFen != 0 || !chk.JournalOK || len(chk.Problems) > 0 {
					t.Fatalf("%s: ledger check %+v %v", stage, chk, err)
				}
			}
		})
	}
}

// deliver sends msgs from b to a as one outbox batch and returns A's answers.
func deliver(t *testing.T, a, b *city, msgs ...federation.Charge) []federation.ChargeAnswer {
	t.Helper()
	env, err := federation.Seal(b.id, a.id, federation.KindMessages, time.Now(), map[string]any{"messages": msgs}, b.Keys.NodeSigner())
	if err != nil {
		t.Fatal(err)
	}
	out, err := a.Fed.HandleMessages(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	e, err := federation.Open(out, b.id, federation.KindAnswer, b.Fed.Members(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var ans struct {
		Results []federation.ChargeAnswer `json:"results"`
	}
	if err := json.Unmarshal(e.Body, &ans); err != nil {
		t.Fatal(err)
	}
	if len(ans.Results) != len(msgs) {
		t.Fatalf("%d answers for %d messages", len(ans.Results), len(msgs))
	}
	return ans.Results
}

func outState(t *testing.T, c *city, id string) string {
	return rowState(t, c, id, "out")
}

func inState(t *testing.T, c *city, id string) string {
	return rowState(t, c, id, "in")
}

func rowState(t *testing.T, c *city, id, dir string) string {
	t.Helper()
	var st string
	err := c.DB.R.QueryRowContext(context.Background(), `SELECT state FROM fed_messages WHERE id = $1 AND direction = $2`, id, dir).Scan(&st)
	if err != nil {
		return ""
	}
	return st
}
