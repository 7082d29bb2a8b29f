package federation_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// settledPair starts a home city A (on dsnA) and a visited city B that
// share clk, and lets each take in the other.
func settledPair(t *testing.T, clk *testClock, dsnA string) (a, b *city) {
	t.Helper()
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	cfg.Refresh = time.Hour
	withClock := func(nc *node.Config) { nc.Now = clk.Now }
	a = startCityWith(t, "CN-330100", dsnA, cfg, withClock)
	b = startCityWith(t, "CN-310000", "", cfg, withClock)
	reg.write(t, reg.anchor, member(a, a.url), member(b, b.url))
	ctx := context.Background()
	a.Fed.Refresh(ctx)
	b.Fed.Refresh(ctx)
	return a, b
}

func settleAgreed(t *testing.T, c *city, day string) federation.Statement {
	t.Helper()
	sts, err := c.Fed.Settle(context.Background(), day)
	if err != nil || len(sts) != 1 || !sts[0].Agreed {
		t.Fatalf("%s settles %s: %+v %v", c.id, day, sts, err)
	}
	return sts[0].Statement
}

func fen(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// An online authorisation at 23:55 whose scan B never booked: the day is
// settled at 00:01 with the charge in it (both cities booked it), and
// B's booking check voids it at 00:06. The countersigned statement of the
// day must stay what both cities' books say (re-settling gives the same
// statement, on either side), the resident must not pay for a ride B
// never booked, the money given back must be cleared on the day it was
// given back, so that the statements of the two days add up to the
// clearing accounts, and the books must balance and mirror.
func TestVoidAfterSettlementKeepsTheStatement(t *testing.T) {
	var clk testClock
	day := time.Now().UTC().Truncate(24 * time.Hour)
	clk.set(day.Add(23*time.Hour + 55*time.Minute))
	a, b := settledPair(t, &clk, storetest.Postgres(t))
	ctx := context.Background()
	res := a.demo.Residents[0]
	card, _ := a.Residents.Card(ctx, res.CardNumber)
	w0 := a.wallet(t, res.CardNumber)
	bus := b.terminal(t, "transit.bus")

	cti := fmt.Sprintf("settled-void-%d", time.Now().UnixNano())
	id := federation.MessageID(b.id, cti)
	r, err := b.Fed.Authorize(ctx, a.id, scan.RemoteCharge{CTI: cti, Subject: card.Token, AmountFen: 300, Scenario: "transit.bus",
		Terminal: bus.ID, Key: "lost-booking-1", Provider: bus.Provider})
	if err != nil || !r.Approved {
		t.Fatalf("authorise: %+v %v", r, err)
	}
	if got := a.wallet(t, res.CardNumber); got != w0-300 {
		t.Fatalf("home wallet %d, want %d", got, w0-300)
	}

	// 00:01: the day is over; both cities sign it, with the ride.
	clk.set(day.Add(24*time.Hour + time.Minute))
	d := day.Format("2006-01-02")
	signed := settleAgreed(t, b, d)
	if signed.BOwesA != "300" || signed.Messages != "1" {
		t.Fatalf("the day's statement %+v, want CN-330100 owing 300 over 1 message", signed)
	}

	// 00:06: B's booking check finds the scan never booked: it voids the
	// home city's charge.
	clk.set(day.Add(24*time.Hour + 6*time.Minute))
	eventually(t, "B's void to be delivered", 15*time.Second, func() bool {
		b.Fed.DrainOutbox(ctx)
		n, err := b.Fed.Pending(ctx)
		return err == nil && n == 0 && outState(t, b, id) != "acked"
	})
	eventually(t, "the resident's money back", 5*time.Second, func() bool {
		b.Fed.DrainOutbox(ctx)
		return a.wallet(t, res.CardNumber) == w0
	})

	// The signed day is what the books say, on both sides.
	for _, c := range []*city{a, b} {
		if again := settleAgreed(t, c, d); again != signed {
			t.Fatalf("%s: the settled day %s is now %+v, was signed as %+v", c.id, d, again, signed)
		}
	}
	// The next day (when the money was given back) is settled too, and the
	// two days' nets are what the clearing accounts hold.
	clk.set(day.Add(48*time.Hour + time.Minute))
	next := settleAgreed(t, a, day.Add(24*time.Hour).Format("2006-01-02"))
	net := fen(t, signed.Net) + fen(t, next.Net) // net_a_to_b: a = CN-310000 (B)
	if bb, ab := b.balance(t, ledger.ClearingID(a.id)), a.balance(t, ledger.ClearingID(b.id)); net != bb || net != -ab {
		t.Fatalf("the statements net %d (%s + %s), but B's clr:A is %d and A's clr:B %d", net, signed.Net, next.Net, bb, ab)
	}
	checkBooks(t, a, b)
	if rec, err := b.Fed.Reconcile(ctx, a.id, time.Time{}, time.Time{}); err != nil || len(rec.Discrepancies) > 0 {
		t.Fatalf("reconciliation: %+v %v", rec, err)
	}
	var chk struct {
		SumFen    int64 `json:"sum_fen"`
		JournalOK bool  `json:"journal_ok"`
	}
	nodetest.NewClient(a.url, a.demo.Staff["finance"].Token).JSON(t, "GET", "/v1/ledger/check", nil, 200, &chk)
	if chk.SumFen != 0 || !chk.JournalOK {
		t.Fatalf("A's ledger check: %+v", chk)
	}
}

// The home city's answers on a day both cities signed: a void of a
// charge the statement counts is refused (day_settled) and moves
// nothing; a void it had applied before the day was settled, delivered
// again, is still answered voided; a charge it had applied, delivered
// again (its answer was lost), is answered as before, not declined; a new
// charge dated on the day is refused (day_settled). Re-settling gives the
// signed statement.
func TestVoidOfASettledDayIsRefused(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			var clk testClock
			day := time.Now().UTC().Truncate(24 * time.Hour)
			clk.set(day.Add(12 * time.Hour))
			dsn := ""
			if backend == "postgres" {
				dsn = storetest.Postgres(t)
			}
			a, b := settledPair(t, &clk, dsn)
			ctx := context.Background()
			res := a.demo.Residents[0]
			card, _ := a.Residents.Card(ctx, res.CardNumber)
			w0 := a.wallet(t, res.CardNumber)
			// Two rides authorised online (booked on both sides) …
			authorised := func(n string, amount int64) federation.Charge {
				cti := fmt.Sprintf("%s-%d", n, time.Now().UnixNano())
				at := clk.Now().UTC().Truncate(time.Millisecond)
				r, err := b.Fed.Authorize(ctx, a.id, scan.RemoteCharge{CTI: cti, Subject: card.Token, AmountFen: amount, Scenario: "transit.bus"})
				if err != nil || !r.Approved {
					t.Fatalf("authorise: %+v %v", r, err)
				}
				return federation.Charge{ID: federation.MessageID(b.id, cti), Mode: federation.ModeOnline, Subject: card.Token, AmountFen: amount,
					Scenario: "transit.bus", CreatedAt: at}
			}
			c1, c2 := authorised("kept", 300), authorised("replayed", 200)
			// … and one charged and voided the same day.
			c3 := federation.Charge{ID: federation.MessageID(b.id, fmt.Sprintf("voided-%d", time.Now().UnixNano())), Mode: federation.ModeGuaranteed,
				Subject: card.Token, AmountFen: 100, Scenario: "transit.bus", CreatedAt: clk.Now().UTC().Truncate(time.Millisecond)}
			voidOf := func(c federation.Charge) federation.Charge {
				c.Mode = federation.ModeVoid
				return c
			}
			if ans := deliverAt(t, a, b, clk.Now(), c3)[0]; ans.State != federation.StateApplied {
				t.Fatalf("charge: %+v", ans)
			}
			if ans := deliverAt(t, a, b, clk.Now(), voidOf(c3))[0]; ans.State != federation.StateVoided {
				t.Fatalf("a void the same day: %+v", ans)
			}
			w1 := a.wallet(t, res.CardNumber)
			if w1 != w0-500 {
				t.Fatalf("wallet %d, want %d", w1, w0-500)
			}

			clk.set(day.Add(24*time.Hour + time.Minute))
			d := day.Format("2006-01-02")
			signed := settleAgreed(t, b, d)
			if signed.BOwesA != "500" || signed.Messages != "2" {
				t.Fatalf("the day's statement %+v, want 500 over 2 messages", signed)
			}

			clk.set(day.Add(24*time.Hour + 5*time.Minute))
			if ans := deliverAt(t, a, b, clk.Now(), voidOf(c1))[0]; ans.State != federation.StateDeclined || ans.Reason != "day_settled" {
				t.Fatalf("a void of a charge on a settled day: %+v, want declined day_settled", ans)
			}
			if ans := deliverAt(t, a, b, clk.Now(), voidOf(c3))[0]; ans.State != federation.StateVoided {
				t.Fatalf("a void applied before the day was settled, delivered again: %+v, want voided", ans)
			}
			if ans := deliverAt(t, a, b, clk.Now(), c2)[0]; ans.State != federation.StateApplied || ans.WalletFen != 200 {
				t.Fatalf("a charge applied before the day was settled, delivered again: %+v, want applied (200)", ans)
			}
			late := c3
			late.ID, late.CreatedAt = federation.MessageID(b.id, fmt.Sprintf("backdated-%d", time.Now().UnixNano())), day.Add(20*time.Hour)
			if ans := deliverAt(t, a, b, clk.Now(), late)[0]; ans.State != federation.StateDeclined || ans.Reason != "day_settled" {
				t.Fatalf("a new charge dated on a settled day: %+v, want declined day_settled", ans)
			}
			if got := a.wallet(t, res.CardNumber); got != w1 {
				t.Fatalf("the wallet moved: %d → %d", w1, got)
			}
			if again := settleAgreed(t, a, d); again != signed {
				t.Fatalf("the settled day %s is now %+v, was signed as %+v", d, again, signed)
			}
			chk, err := a.Ledger.Check(ctx)
			if err != nil || chk.SumFen != 0 || !chk.JournalOK || len(chk.Problems) > 0 {
				t.Fatalf("ledger check %+v %v", chk, err)
			}
		})
	}
}

// A refund at home (what B sends when its void of a charge on a settled
// day was refused): it gives the charge's money back once, however often
// it is delivered; it must be the charge's one refund (RefundID) and
// match the charge; a charge refunded cannot then be voided as well.
func TestRefundGivesTheChargeBackOnce(t *testing.T) {
	var clk testClock
	clk.set(time.Now())
	a, b := settledPair(t, &clk, "")
	ctx := context.Background()
	res := a.demo.Residents[0]
	card, _ := a.Residents.Card(ctx, res.CardNumber)
	w0 := a.wallet(t, res.CardNumber)
	c := federation.Charge{ID: federation.MessageID(b.id, fmt.Sprintf("refunded-%d", time.Now().UnixNano())), Mode: federation.ModeGuaranteed,
		Subject: card.Token, AmountFen: 300, Scenario: "transit.bus", CreatedAt: clk.Now().UTC().Truncate(time.Millisecond)}
	if ans := deliver(t, a, b, c)[0]; ans.State != federation.StateApplied {
		t.Fatalf("charge: %+v", ans)
	}
	r := federation.Charge{ID: federation.RefundID(b.id, c.ID), Mode: federation.ModeRefund, Refunds: c.ID, Subject: c.Subject, AmountFen: 300,
		Scenario: c.Scenario, CreatedAt: clk.Now().UTC().Truncate(time.Millisecond)}
	other := r
	other.ID = federation.MessageID(b.id, fmt.Sprintf("second-refund-%d", time.Now().UnixNano()))
	more := r
	more.AmountFen = 400
	unknown := r
	unknown.Refunds = federation.MessageID(b.id, "never-sent")
	unknown.ID = federation.RefundID(b.id, unknown.Refunds)
	for _, tc := range []struct {
		what string
		c    federation.Charge
		want string
	}{
		{"a refund under another id", other, "validation_failed"},
		{"a refund of more than the charge", more, "idempotency_conflict"},
		{"a refund of a charge never booked", unknown, "not_found"},
	} {
		if ans := deliver(t, a, b, tc.c)[0]; ans.State != federation.StateDeclined || string(ans.Reason) != tc.want {
			t.Fatalf("%s: %+v, want declined %s", tc.what, ans, tc.want)
		}
	}
	if got := a.wallet(t, res.CardNumber); got != w0-300 {
		t.Fatalf("wallet %d, want %d", got, w0-300)
	}
	first := deliver(t, a, b, r)[0]
	if first.State != federation.StateApplied || first.WalletFen != 300 || len(first.Transfers) != 1 {
		t.Fatalf("refund: %+v", first)
	}
	again := deliver(t, a, b, r, r)
	for _, ans := range again {
		if ans.State != federation.StateApplied || len(ans.Transfers) != 1 || ans.Transfers[0] != first.Transfers[0] {
			t.Fatalf("the refund delivered again: %+v, was %+v", ans, first)
		}
	}
	void := c
	void.Mode = federation.ModeVoid
	if ans := deliver(t, a, b, void)[0]; ans.State != federation.StateDeclined || ans.Reason != "day_settled" {
		t.Fatalf("a void of a refunded charge: %+v, want declined day_settled", ans)
	}
	if got := a.wallet(t, res.CardNumber); got != w0 {
		t.Fatalf("wallet %d, want %d (charged once, refunded once)", got, w0)
	}
	chk, err := a.Ledger.Check(ctx)
	if err != nil || chk.SumFen != 0 || !chk.JournalOK || len(chk.Problems) > 0 {
		t.Fatalf("ledger check %+v %v", chk, err)
	}
}

// A void and the settlement of its charge's day at the same moment: the
// day is settled (with the charge) after the void found it unsettled but
// before the void marked the charge. The void must then be refused, and
// the signed statement stay what the books say.
func TestDaySettledWhileAVoidIsUnderWay(t *testing.T) {
	var clk testClock
	day := time.Now().UTC().Truncate(24 * time.Hour)
	clk.set(day.Add(23*time.Hour + 55*time.Minute))
	a, b := settledPair(t, &clk, "")
	ctx := context.Background()
	res := a.demo.Residents[0]
	card, _ := a.Residents.Card(ctx, res.CardNumber)
	w0 := a.wallet(t, res.CardNumber)
	cti := fmt.Sprintf("void-race-%d", time.Now().UnixNano())
	c := federation.Charge{ID: federation.MessageID(b.id, cti), Mode: federation.ModeVoid, Subject: card.Token, AmountFen: 300,
		Scenario: "transit.bus", CreatedAt: clk.Now().UTC().Truncate(time.Millisecond)}
	if r, err := b.Fed.Authorize(ctx, a.id, scan.RemoteCharge{CTI: cti, Subject: card.Token, AmountFen: 300, Scenario: "transit.bus"}); err != nil || !r.Approved {
		t.Fatalf("authorise: %+v %v", r, err)
	}

	clk.set(day.Add(24*time.Hour + 5*time.Minute))
	d := day.Format("2006-01-02")
	var sts []federation.SignedStatement
	var settleErr error
	ran := false
	federation.SetHook(a.Fed, func(_ context.Context, stage, id string) {
		if stage == "void_checked" && id == c.ID && !ran {
			ran = true // (the hook runs on another goroutine: no t.Fatal here)
			sts, settleErr = b.Fed.Settle(ctx, d)
		}
	})
	ans := deliverAt(t, a, b, clk.Now(), c)[0]
	federation.SetHook(a.Fed, nil)
	if !ran || settleErr != nil || len(sts) != 1 || !sts[0].Agreed {
		t.Fatalf("the day settled while the void was under way: %+v %v (hook ran: %v)", sts, settleErr, ran)
	}
	signed := &sts[0].Statement
	if signed.BOwesA != "300" {
		t.Fatalf("the day was signed as %+v, want the charge in it", *signed)
	}
	if ans.State != federation.StateDeclined || ans.Reason != "day_settled" {
		t.Fatalf("the void: %+v, want declined day_settled", ans)
	}
	if got := a.wallet(t, res.CardNumber); got != w0-300 {
		t.Fatalf("wallet %d, want %d", got, w0-300)
	}
	if again := settleAgreed(t, a, d); again != *signed {
		t.Fatalf("the settled day is now %+v, was signed as %+v", again, *signed)
	}
}

// The other order: the home city computes the day's statement, then a
// void of a charge in it lands (B's booking check) before the statement
// is saved. The statement must not be left signed and saved with the
// charge in it: the settlement reports it not agreed, and settling again
// signs what the books say.
func TestVoidWhileTheDayIsBeingSettled(t *testing.T) {
	for _, backend := range []string{"sqlite", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			var clk testClock
			day := time.Now().UTC().Truncate(24 * time.Hour)
			clk.set(day.Add(23*time.Hour + 55*time.Minute))
			dsn := ""
			if backend == "postgres" {
				dsn = storetest.Postgres(t)
			}
			a, b := settledPair(t, &clk, dsn)
			ctx := context.Background()
			res := a.demo.Residents[0]
			card, _ := a.Residents.Card(ctx, res.CardNumber)
			w0 := a.wallet(t, res.CardNumber)
			bus := b.terminal(t, "transit.bus")
			cti := fmt.Sprintf("settle-race-%d", time.Now().UnixNano())
			id := federation.MessageID(b.id, cti)
			if r, err := b.Fed.Authorize(ctx, a.id, scan.RemoteCharge{CTI: cti, Subject: card.Token, AmountFen: 300, Scenario: "transit.bus",
				Terminal: bus.ID, Key: "lost-booking-2", Provider: bus.Provider}); err != nil || !r.Approved {
				t.Fatalf("authorise: %+v %v", r, err)
			}

			clk.set(day.Add(24*time.Hour + time.Minute))
			d := day.Format("2006-01-02")
			ran := false
			federation.SetHook(a.Fed, func(_ context.Context, stage, day string) {
				if stage != "statement_computed" || day != d || ran {
					return
				}
				ran = true
				// B's booking check fires now, and its void reaches A (the
				// hook runs on A's request goroutine: no t.Fatal here).
				clk.set(clk.Now().Add(6 * time.Minute))
				for end := time.Now().Add(10 * time.Second); time.Now().Before(end) && inState(t, a, id) != federation.StateVoided; {
					time.Sleep(20 * time.Millisecond)
				}
			})
			sts, err := b.Fed.Settle(ctx, d)
			federation.SetHook(a.Fed, nil)
			if err != nil || len(sts) != 1 || !ran {
				t.Fatalf("settle: %+v %v (hook ran: %v)", sts, err, ran)
			}
			if st := inState(t, a, id); st != federation.StateVoided {
				t.Fatalf("the void did not land at home while the day was being settled (row %q)", st)
			}
			eventually(t, "B's outbox to drain", 10*time.Second, func() bool {
				n, err := b.Fed.Pending(ctx)
				return err == nil && n == 0
			})
			again := settleAgreed(t, b, d)
			if sts[0].Agreed && sts[0].Statement != again {
				t.Fatalf("the day was agreed as %+v, but the books now give %+v", sts[0].Statement, again)
			}
			if again.Messages != "0" {
				t.Fatalf("the day now: %+v, want no message (the charge was voided before the day was settled)", again)
			}
			if got := a.wallet(t, res.CardNumber); got != w0 {
				t.Fatalf("wallet %d, want %d", got, w0)
			}
			if again2 := settleAgreed(t, a, d); again2 != again {
				t.Fatalf("A settles the day as %+v, B as %+v", again2, again)
			}
			checkBooks(t, a, b)
		})
	}
}
