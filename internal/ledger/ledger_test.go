package ledger

import (
	"context"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

// clock is a settable test clock.
type clock struct{ ms atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ms.Store(time.Date(2024, 3, 1, 8, 0, 0, 0, time.UTC).UnixMilli())
	return c
}
func (c *clock) Now() time.Time                 { return time.UnixMilli(c.ms.Load()) }
func (c *clock) Add(d time.Duration)            { c.ms.Add(d.Milliseconds()) }
func openDB(t testing.TB, dsn string) *store.DB { return storetest.Open(t, dsn) }

func openLedger(t testing.TB, db *store.DB, opt Options) *Ledger {
	t.Helper()
	l, err := Open(context.Background(), db, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

type fixture struct {
	t   *testing.T
	ctx context.Context
	db  *store.DB
	l   *Ledger
	clk *clock
}

func setup(t *testing.T, dsn string) *fixture {
	clk := newClock()
	db := openDB(t, dsn)
	f := &fixture{t: t, ctx: context.Background(), db: db, clk: clk}
	f.l = openLedger(t, db, Options{Now: clk.Now})
	return f
}

func (f *fixture) account(id, kind string, floor int64) {
	f.t.Helper()
	if _, err := f.l.CreateAccount(f.ctx, Account{ID: id, Kind: kind, Floor: floor}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) fund(id string, amount int64) {
	f.t.Helper()
	if _, err := f.l.TopUp(f.ctx, "fund-"+id+fmt.Sprint(amount, time.Now().UnixNano()), id, amount, nil); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) bal(id string) int64 {
	f.t.Helper()
	a, err := f.l.Balance(f.ctx, id)
	if err != nil {
		f.t.Fatal(err)
	}
	return a.Balance
}

// snapshot is everything a refused request must leave untouched.
type snapshot struct {
	Seq      int64
	Journal  int64
	Holds    string
	Balances string
}

func (f *fixture) snap() snapshot {
	f.t.Helper()
	var s snapshot
	q := f.db.R
	if err := q.QueryRowContext(f.ctx, `SELECT seq FROM ledger_chain WHERE id = 1`).Scan(&s.Seq); err != nil {
		f.t.Fatal(err)
	}
	if err := q.QueryRowContext(f.ctx, `SELECT COUNT(*) FROM ledger_journal`).Scan(&s.Journal); err != nil {
		f.t.Fatal(err)
	}
	rows, err := q.QueryContext(f.ctx, `SELECT id, balance_fen, pending_fen, version, status FROM ledger_accounts ORDER BY id`)
	if err != nil {
		f.t.Fatal(err)
	}
	for rows.Next() {
		var id, st string
		var b, p, v int64
		rows.Scan(&id, &b, &p, &v, &st)
		s.Balances += fmt.Sprintf("%s=%d/%d/%d/%s;", id, b, p, v, st)
	}
	rows.Close()
	rows, err = q.QueryContext(f.ctx, `SELECT id, status FROM ledger_holds ORDER BY id`)
	if err != nil {
		f.t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var st string
		rows.Scan(&id, &st)
		s.Holds += fmt.Sprintf("%d=%s;", id, st)
	}
	rows.Close()
	return s
}

// refused asserts that fn fails with code and writes nothing.
func (f *fixture) refused(code apperr.Code, fn func() error) {
	f.t.Helper()
	before := f.snap()
	err := fn()
	if apperr.CodeOf(err) != code {
		f.t.Fatalf("want %s, got %v", code, err)
	}
	if after := f.snap(); after != before {
		f.t.Fatalf("a refused request wrote something:\nbefore %+v\nafter  %+v", before, after)
	}
}

func (f *fixture) check() CheckResult {
	f.t.Helper()
	r, err := f.l.Check(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	if !r.OK() {
		f.t.Fatalf("check failed: %+v", r)
	}
	return r
}

func TestTransfersAndBadInput(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("a", KindWallet, 0)
		f.account("b", KindWallet, 0)
		f.account("credit", KindWallet, -500)
		f.account("bus", KindReceivable, 0)
		f.account("usd", KindReceivable, 0)
		if _, err := f.l.CreateAccount(f.ctx, Account{ID: "usd2", Kind: KindWallet, Currency: "USD"}); err != nil {
			t.Fatal(err)
		}
		f.fund("a", 1000)

		meta := map[string]string{"scenario": "bus", "terminal": "T1"}
		tr, err := f.l.Transfer(f.ctx, TransferRequest{Key: "k1", Debit: "a", Credit: "bus", Amount: 200, Kind: "fare",
			Memo: "line 1", Meta: meta})
		if err != nil {
			t.Fatal(err)
		}
		meta["terminal"] = "changed by the caller afterwards"
		if tr.Amount != 200 || tr.Debit != "a" || tr.Credit != "bus" || tr.DebitAfter != 800 || tr.CreditAfter != 200 || tr.Currency != "CNY" || tr.Meta["terminal"] != "T1" {
			t.Fatalf("transfer %+v", tr)
		}
		if f.bal("a") != 800 || f.bal("bus") != 200 || f.bal(AccountBank) != -1000 {
			t.Fatal("balances wrong")
		}
		// Same key, same content: the original result.
		again, err := f.l.Transfer(f.ctx, TransferRequest{Key: "k1", Debit: "a", Credit: "bus", Amount: 200, Kind: "fare",
			Memo: "line 1", Meta: map[string]string{"terminal": "T1", "scenario": "bus"}})
		if err != nil || again.ID != tr.ID || !again.At.Equal(tr.At) || !again.Replayed || f.bal("a") != 800 {
			t.Fatalf("replay: %+v %v", again, err)
		}
		// The replay (read back from the journal) answers what the
		// original answered, metadata included.
		again.Replayed = false
		if !reflect.DeepEqual(again, tr) {
			t.Fatalf("replay %+v, original %+v", again, tr)
		}
		stored, err := f.l.GetTransfer(f.ctx, tr.ID)
		if err != nil || !reflect.DeepEqual(stored, tr) {
			t.Fatalf("stored %+v %v, answered %+v", stored, err, tr)
		}
		plain, err := f.l.Transfer(f.ctx, TransferRequest{Key: "k-plain", Debit: "a", Credit: "bus", Amount: 1, Meta: map[string]string{}})
		if err != nil || plain.Meta != nil {
			t.Fatalf("empty metadata answered as %#v (%v), stored as none", plain.Meta, err)
		}
		f.fund("a", 1)
		// Same key, other content.
		f.refused(apperr.IdempotencyConflict, func() error {
			_, err := f.l.Transfer(f.ctx, TransferRequest{Key: "k1", Debit: "a", Credit: "bus", Amount: 201, Kind: "fare"})
			return err
		})
		bad := []struct {
			code apperr.Code
			req  TransferRequest
		}{
			{apperr.InvalidAmount, TransferRequest{Key: "x", Debit: "a", Credit: "bus", Amount: 0}},
			{apperr.InvalidAmount, TransferRequest{Key: "x", Debit: "a", Credit: "bus", Amount: -5}},
			{apperr.UnknownAccount, TransferRequest{Key: "x", Debit: "a", Credit: "nobody", Amount: 1}},
			{apperr.UnknownAccount, TransferRequest{Key: "x", Debit: "nobody", Credit: "a", Amount: 1}},
			{apperr.ValidationFailed, TransferRequest{Key: "x", Debit: "a", Credit: "a", Amount: 1}},
			{apperr.ValidationFailed, TransferRequest{Key: "", Debit: "a", Credit: "bus", Amount: 1}},
			{apperr.ValidationFailed, TransferRequest{Key: "  ", Debit: "a", Credit: "bus", Amount: 1}},
			{apperr.ValidationFailed, TransferRequest{Key: "x", Debit: "", Credit: "bus", Amount: 1}},
			{apperr.ValidationFailed, TransferRequest{Key: "x", Debit: "a", Credit: "bus", Amount: 1, Memo: string(make([]byte, 300))}},
			{apperr.ValidationFailed, TransferRequest{Key: "x", Debit: "a", Credit: "bus", Amount: 1, Meta: map[string]string{"a": "1", "b": "2", "c": "3", "d": "4", "e": "5", "f": "6", "g": "7", "h": "8", "i": "9"}}},
			{apperr.InsufficientFunds, TransferRequest{Key: "x", Debit: "a", Credit: "bus", Amount: 801}},
			{apperr.InsufficientFunds, TransferRequest{Key: "x", Debit: "b", Credit: "bus", Amount: 1}},
			{apperr.InsufficientFunds, TransferRequest{Key: "x", Debit: "credit", Credit: "bus", Amount: 501}},
			{apperr.CurrencyMismatch, TransferRequest{Key: "x", Debit: "a", Credit: "usd2", Amount: 1}},
			{apperr.Overflow, TransferRequest{Key: "x", Debit: AccountBank, Credit: "b", Amount: math.MaxInt64}},
		}
		for _, c := range bad {
			f.refused(c.code, func() error { _, err := f.l.Transfer(f.ctx, c.req); return err })
		}
		// Bounded credit: down to -500 and no further.
		if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "ride", Debit: "credit", Credit: "bus", Amount: 500}); err != nil {
			t.Fatal(err)
		}
		if f.bal("credit") != -500 {
			t.Fatal("floor")
		}
		// Overflow on the credit side: push "b" near MaxInt64 then add more.
		if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "big", Debit: AccountTreasury, Credit: "b", Amount: math.MaxInt64 - 10}); err != nil {
			t.Fatal(err)
		}
		f.refused(apperr.Overflow, func() error {
			_, err := f.l.Transfer(f.ctx, TransferRequest{Key: "big2", Debit: AccountBank, Credit: "b", Amount: 11})
			return err
		})
		// Closed account.
		f.account("gone", KindWallet, 0)
		if err := f.l.CloseAccount(f.ctx, "gone"); err != nil {
			t.Fatal(err)
		}
		f.refused(apperr.AccountClosed, func() error {
			_, err := f.l.Transfer(f.ctx, TransferRequest{Key: "x", Debit: "a", Credit: "gone", Amount: 1})
			return err
		})
		if err := f.l.CloseAccount(f.ctx, "a"); apperr.CodeOf(err) != apperr.Conflict {
			t.Fatalf("closing a funded account: %v", err)
		}
		// A refused key is not used up: it succeeds once funds arrive.
		f.refused(apperr.InsufficientFunds, func() error {
			_, err := f.l.Transfer(f.ctx, TransferRequest{Key: "later", Debit: "a", Credit: "bus", Amount: 900})
			return err
		})
		f.fund("a", 100)
		if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "later", Debit: "a", Credit: "bus", Amount: 900}); err != nil {
			t.Fatal(err)
		}
		r := f.check()
		if r.SumFen != 0 || r.Accounts < 10 {
			t.Fatalf("%+v", r)
		}
	})
}

func TestCreateAccountIdempotent(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		a := Account{ID: "x", Kind: KindWallet, Floor: -500, Label: "x"}
		if _, err := f.l.CreateAccount(f.ctx, a); err != nil {
			t.Fatal(err)
		}
		got, err := f.l.CreateAccount(f.ctx, a)
		if err != nil || got.Floor != -500 || got.Currency != "CNY" || got.Status != StatusOpen {
			t.Fatalf("%+v %v", got, err)
		}
		a.Floor = 0
		if _, err := f.l.CreateAccount(f.ctx, a); apperr.CodeOf(err) != apperr.Conflict {
			t.Fatalf("want conflict, got %v", err)
		}
		for _, bad := range []Account{{ID: "", Kind: KindWallet}, {ID: "y", Kind: "piggy"}, {ID: "y", Kind: KindWallet, Floor: 5},
			{ID: "y", Kind: KindWallet, Currency: "cny"}} {
			if _, err := f.l.CreateAccount(f.ctx, bad); apperr.CodeOf(err) != apperr.ValidationFailed {
				t.Fatalf("%+v: %v", bad, err)
			}
		}
		if _, err := f.l.Balance(f.ctx, "y"); apperr.CodeOf(err) != apperr.UnknownAccount {
			t.Fatal(err)
		}
		w, m, err := f.l.OpenResidentAccounts(f.ctx, "R1")
		if err != nil || w != "w:R1" || m != "m:R1" {
			t.Fatal(w, m, err)
		}
		if _, _, err := f.l.OpenResidentAccounts(f.ctx, "R1"); err != nil {
			t.Fatal(err)
		}
		ext, _ := f.l.Balance(f.ctx, AccountBank)
		if !ext.Unbounded || ext.Kind != KindExternal {
			t.Fatalf("%+v", ext)
		}
	})
}

func TestLinked(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("w", KindWallet, 0)
		f.account("m", KindMedical, 0)
		f.account("hosp", KindReceivable, 0)
		f.fund("w", 100)
		if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "med", Debit: AccountMedicalFund, Credit: "m", Amount: 300}); err != nil {
			t.Fatal(err)
		}
		set := []TransferRequest{
			{Key: "l1", Debit: "m", Credit: "hosp", Amount: 300, Kind: "medical"},
			{Key: "l2", Debit: "w", Credit: "hosp", Amount: 101, Kind: "medical"},
		}
		// The second fails, so the first is not applied either.
		f.refused(apperr.InsufficientFunds, func() error { _, err := f.l.Linked(f.ctx, set); return err })
		set[1].Amount = 100
		ts, err := f.l.Linked(f.ctx, set)
		if err != nil || len(ts) != 2 || ts[0].Link != ts[0].ID || ts[1].Link != ts[0].ID {
			t.Fatalf("%+v %v", ts, err)
		}
		if f.bal("hosp") != 400 || f.bal("w") != 0 || f.bal("m") != 0 {
			t.Fatal("balances")
		}
		again, err := f.l.Linked(f.ctx, set)
		if err != nil || again[0].ID != ts[0].ID || again[1].ID != ts[1].ID || !again[1].Replayed {
			t.Fatalf("replay %+v %v", again, err)
		}
		// A linked key reused alone, or in a different set, conflicts.
		f.refused(apperr.IdempotencyConflict, func() error { _, err := f.l.Transfer(f.ctx, set[0]); return err })
		f.refused(apperr.IdempotencyConflict, func() error {
			_, err := f.l.Linked(f.ctx, []TransferRequest{set[0], {Key: "l3", Debit: AccountBank, Credit: "w", Amount: 1}})
			return err
		})
		f.refused(apperr.ValidationFailed, func() error {
			_, err := f.l.Linked(f.ctx, []TransferRequest{set[0], set[0]})
			return err
		})
		f.refused(apperr.ValidationFailed, func() error { _, err := f.l.Linked(f.ctx, nil); return err })
		f.check()
	})
}

func TestHolds(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("w", KindWallet, 0)
		f.account("hosp", KindReceivable, 0)
		f.fund("w", 1000)
		h, err := f.l.Hold(f.ctx, HoldRequest{Key: "h1", Debit: "w", Credit: "hosp", Amount: 600, Timeout: time.Hour})
		if err != nil || h.Type != TypeHold || h.ExpiresAt.IsZero() {
			t.Fatalf("%+v %v", h, err)
		}
		a, _ := f.l.Balance(f.ctx, "w")
		if a.Balance != 1000 || a.Pending != 600 || a.Available != 400 {
			t.Fatalf("%+v", a)
		}
		// Available balance is what a new transfer or hold may use.
		f.refused(apperr.InsufficientFunds, func() error {
			_, err := f.l.Transfer(f.ctx, TransferRequest{Key: "t", Debit: "w", Credit: "hosp", Amount: 401})
			return err
		})
		f.refused(apperr.InsufficientFunds, func() error {
			_, err := f.l.Hold(f.ctx, HoldRequest{Key: "h2", Debit: "w", Credit: "hosp", Amount: 401})
			return err
		})
		f.refused(apperr.InvalidAmount, func() error { _, err := f.l.PostHold(f.ctx, "p0", h.ID, 601); return err })
		f.refused(apperr.NotFound, func() error { _, err := f.l.PostHold(f.ctx, "p0", "tr-999999", 1); return err })
		f.refused(apperr.NotFound, func() error { _, err := f.l.PostHold(f.ctx, "p0", "nonsense", 1); return err })
		p, err := f.l.PostHold(f.ctx, "p1", h.ID, 450)
		if err != nil || p.Amount != 450 || p.Ref != h.ID {
			t.Fatalf("%+v %v", p, err)
		}
		a, _ = f.l.Balance(f.ctx, "w")
		if a.Balance != 550 || a.Pending != 0 || f.bal("hosp") != 450 {
			t.Fatalf("after post %+v", a)
		}
		// Replay of the post is the original; a second post or a void is hold_not_pending.
		if p2, err := f.l.PostHold(f.ctx, "p1", h.ID, 450); err != nil || p2.ID != p.ID {
			t.Fatal(p2, err)
		}
		f.refused(apperr.HoldNotPending, func() error { _, err := f.l.PostHold(f.ctx, "p2", h.ID, 1); return err })
		f.refused(apperr.HoldNotPending, func() error { _, err := f.l.VoidHold(f.ctx, "v1", h.ID); return err })
		hi, _ := f.l.GetHold(f.ctx, h.ID)
		if hi.Status != HoldPosted || hi.ResolvedBy != p.ID {
			t.Fatalf("%+v", hi)
		}
		// Void, then post-after-void.
		h3, err := f.l.Hold(f.ctx, HoldRequest{Key: "h3", Debit: "w", Credit: "hosp", Amount: 500})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.l.VoidHold(f.ctx, "v3", h3.ID); err != nil {
			t.Fatal(err)
		}
		f.refused(apperr.HoldNotPending, func() error { _, err := f.l.PostHold(f.ctx, "p3", h3.ID, 1); return err })
		if a, _ := f.l.Balance(f.ctx, "w"); a.Pending != 0 || a.Balance != 550 {
			t.Fatalf("%+v", a)
		}
		// Timeout: lazily on touch.
		h4, err := f.l.Hold(f.ctx, HoldRequest{Key: "h4", Debit: "w", Credit: "hosp", Amount: 550, Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		f.clk.Add(2 * time.Minute)
		if _, err := f.l.PostHold(f.ctx, "p4", h4.ID, 10); apperr.CodeOf(err) != apperr.HoldNotPending {
			t.Fatalf("post after timeout: %v", err)
		}
		if hi, _ := f.l.GetHold(f.ctx, h4.ID); hi.Status != HoldExpired {
			t.Fatalf("%+v", hi)
		}
		// Timeout: lazily when the account is touched, so funds free up.
		_, err = f.l.Hold(f.ctx, HoldRequest{Key: "h5", Debit: "w", Credit: "hosp", Amount: 550, Timeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		f.clk.Add(2 * time.Minute)
		if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "after", Debit: "w", Credit: "hosp", Amount: 550}); err != nil {
			t.Fatalf("expired hold still reserves funds: %v", err)
		}
		// Timeout: by the sweeper.
		f.fund("w", 300)
		for i := 0; i < 3; i++ {
			if _, err := f.l.Hold(f.ctx, HoldRequest{Key: fmt.Sprint("hs", i), Debit: "w", Credit: "hosp", Amount: 100, Timeout: time.Second}); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := f.l.ExpireHolds(f.ctx); err != nil || n != 0 {
			t.Fatal(n, err)
		}
		f.clk.Add(time.Minute)
		if n, err := f.l.ExpireHolds(f.ctx); err != nil || n != 3 {
			t.Fatal(n, err)
		}
		if a, _ := f.l.Balance(f.ctx, "w"); a.Pending != 0 || a.Available != 300 {
			t.Fatalf("%+v", a)
		}
		f.refused(apperr.ValidationFailed, func() error {
			_, err := f.l.Hold(f.ctx, HoldRequest{Key: "hx", Debit: "w", Credit: "hosp", Amount: 1, Timeout: 31 * 24 * time.Hour})
			return err
		})
		f.check()
	})
}

func TestReversals(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("w", KindWallet, 0)
		f.account("shop", KindReceivable, 0)
		f.fund("w", 1000)
		tr, err := f.l.Transfer(f.ctx, TransferRequest{Key: "buy", Debit: "w", Credit: "shop", Amount: 500})
		if err != nil {
			t.Fatal(err)
		}
		r1, err := f.l.Reverse(f.ctx, "r1", tr.ID, 300)
		if err != nil || r1.Debit != "shop" || r1.Credit != "w" || r1.Ref != tr.ID || r1.Type != TypeReversal {
			t.Fatalf("%+v %v", r1, err)
		}
		f.refused(apperr.ReversalExceeds, func() error { _, err := f.l.Reverse(f.ctx, "r2", tr.ID, 201); return err })
		if _, err := f.l.Reverse(f.ctx, "r2", tr.ID, 200); err != nil {
			t.Fatal(err)
		}
		f.refused(apperr.ReversalExceeds, func() error { _, err := f.l.Reverse(f.ctx, "r3", tr.ID, 1); return err })
		// Reversal of a reversal, bounded by the reversal's amount.
		if _, err := f.l.Reverse(f.ctx, "rr1", r1.ID, 300); err != nil {
			t.Fatal(err)
		}
		f.refused(apperr.ReversalExceeds, func() error { _, err := f.l.Reverse(f.ctx, "rr2", r1.ID, 1); return err })
		f.refused(apperr.NotFound, func() error { _, err := f.l.Reverse(f.ctx, "rx", "tr-99999", 1); return err })
		f.refused(apperr.InvalidAmount, func() error { _, err := f.l.Reverse(f.ctx, "rx", tr.ID, 0); return err })
		h, err := f.l.Hold(f.ctx, HoldRequest{Key: "h", Debit: "w", Credit: "shop", Amount: 1})
		if err != nil {
			t.Fatal(err)
		}
		f.refused(apperr.ValidationFailed, func() error { _, err := f.l.Reverse(f.ctx, "rh", h.ID, 1); return err })
		// The shop spent its takings: a reversal cannot push it below its floor.
		f.account("sink", KindReceivable, 0)
		if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "spend", Debit: "shop", Credit: "sink", Amount: f.bal("shop")}); err != nil {
			t.Fatal(err)
		}
		t2, _ := f.l.Transfer(f.ctx, TransferRequest{Key: "buy2", Debit: "w", Credit: "sink", Amount: 10})
		if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "spend2", Debit: "sink", Credit: "shop", Amount: 1}); err != nil {
			t.Fatal(err)
		}
		_ = t2
		if w := f.bal("w"); w != 1000-500+300+200-300-10 {
			t.Fatalf("w=%d", w)
		}
		f.check()
	})
}

// TestStatement runs the same history on an account found through the
// journal's index ("wallet") and on a resident's wallet found through its
// chain (migration 0031): both statements page, filter by time and show
// transfers in and out, posted holds and reversals (not holds or voids),
// with equal amounts and running balances.
func TestStatement(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("bus", KindReceivable, 0)
		f.account("hospital", KindReceivable, 0)
		ids := []string{"wallet", WalletID("r1")}
		for _, id := range ids {
			f.account(id, KindWallet, 0)
			f.fund(id, 1000)
		}
		other := WalletID("r2") // interleaved entries that are not ours
		f.account(other, KindWallet, 0)
		f.fund(other, 1000)
		start := f.clk.Now()
		for i := 0; i < 7; i++ {
			f.clk.Add(time.Minute)
			for _, id := range ids {
				k := fmt.Sprint(id, i)
				tr, err := f.l.Transfer(f.ctx, TransferRequest{Key: "fare" + k, Debit: id, Credit: "bus", Amount: 100,
					Kind: "fare", Meta: map[string]string{"scenario": "bus"}})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "other" + k, Debit: other, Credit: "bus", Amount: 1}); err != nil {
					t.Fatal(err)
				}
				switch i {
				case 2: // money in
					if _, err := f.l.Transfer(f.ctx, TransferRequest{Key: "gift" + k, Debit: other, Credit: id, Amount: 50}); err != nil {
						t.Fatal(err)
					}
				case 3: // a hold posted in part, a hold voided
					h, err := f.l.Hold(f.ctx, HoldRequest{Key: "hold" + k, Debit: id, Credit: "hospital", Amount: 200})
					if err != nil {
						t.Fatal(err)
					}
					if _, err := f.l.PostHold(f.ctx, "post"+k, h.ID, 150); err != nil {
						t.Fatal(err)
					}
					h, err = f.l.Hold(f.ctx, HoldRequest{Key: "hold2" + k, Debit: id, Credit: "hospital", Amount: 10})
					if err != nil {
						t.Fatal(err)
					}
					if _, err := f.l.VoidHold(f.ctx, "void"+k, h.ID); err != nil {
						t.Fatal(err)
					}
				case 4: // a fare refunded in part
					if _, err := f.l.Reverse(f.ctx, "rev"+k, tr.ID, 40); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		f.check()
		type line struct {
			typ, kind string
			delta     int64
			after     int64
		}
		lines := func(es []StatementEntry) []line {
			var out []line
			for _, e := range es {
				out = append(out, line{e.Type, e.Kind, e.Delta, e.BalanceAfter})
			}
			return out
		}
		var got [2][]line
		for n, id := range ids {
			var all []StatementEntry
			cursor := ""
			for pages := 0; ; pages++ {
				es, next, err := f.l.Statement(f.ctx, id, time.Time{}, time.Time{}, cursor, 3)
				if err != nil {
					t.Fatal(err)
				}
				if len(es) > 3 || (next != "" && len(es) != 3) {
					t.Fatalf("%s: page of %d, next %q", id, len(es), next)
				}
				all = append(all, es...)
				if next == "" {
					break
				}
				cursor = next
				if pages > 10 {
					t.Fatal("no end")
				}
			}
			for i := 1; i < len(all); i++ {
				if a, b := all[i-1].ID, all[i].ID; len(a) > len(b) || len(a) == len(b) && a >= b {
					t.Fatalf("%s: %s listed before %s", id, a, b)
				}
			}
			// fund, 7 fares, gift, post, reversal
			if len(all) != 11 {
				t.Fatalf("%s: %d entries: %+v", id, len(all), lines(all))
			}
			if all[0].Delta != 1000 || all[0].BalanceAfter != 1000 || all[10].BalanceAfter != 1000-700+50-150+40 || all[10].Delta != -100 ||
				all[10].Kind != "fare" || all[10].Meta["scenario"] != "bus" {
				t.Fatalf("%s: %+v / %+v", id, all[0], all[10])
			}
			got[n] = lines(all)
			// Time window: fares 2..4 (minutes 3, 4, 5 after start) and what came with them.
			es, _, err := f.l.Statement(f.ctx, id, start.Add(3*time.Minute), start.Add(6*time.Minute), "", 100)
			if err != nil || len(es) != 6 || es[0].BalanceAfter != 700 || es[5].Type != TypeReversal || es[5].Delta != 40 {
				t.Fatalf("%s: %+v %v", id, lines(es), err)
			}
			es, next, err := f.l.Statement(f.ctx, id, start.Add(3*time.Minute), start.Add(6*time.Minute), "", 2)
			if err != nil || len(es) != 2 || es[0].BalanceAfter != 700 || next == "" {
				t.Fatalf("%s: %+v %q %v", id, lines(es), next, err)
			}
			if _, _, err := f.l.Statement(f.ctx, id, time.Time{}, time.Time{}, "x", 10); apperr.CodeOf(err) != apperr.ValidationFailed {
				t.Fatal(err)
			}
		}
		if !slices.Equal(got[0], got[1]) {
			t.Fatalf("the index and the chain differ:\n%+v\n%+v", got[0], got[1])
		}
		if _, _, err := f.l.Statement(f.ctx, "nobody", time.Time{}, time.Time{}, "", 10); apperr.CodeOf(err) != apperr.UnknownAccount {
			t.Fatal(err)
		}
		// The other accounts' statements read the partial indexes.
		if f.db.Dialect == store.SQLite {
			for _, col := range []string{"debit", "credit"} {
				if p := storetest.QueryPlan(t, f.db.R, statementSQL(col), "bus", 0, 0, 1<<62, 10); !strings.Contains(p, "ledger_journal_"+col) {
					t.Fatalf("%s statement plan: %s", col, p)
				}
			}
		}
		// A broken chain is an error, never a loop or a wrong statement:
		// a link forward, a link to another account's entry, a link to an
		// entry that is not there. The wallet's last movement is a fare
		// (it debits the wallet).
		var lastSeq, prev, others int64
		if err := f.db.R.QueryRowContext(f.ctx, `SELECT a.last_seq, j.debit_prev FROM ledger_accounts a JOIN ledger_journal j ON j.seq = a.last_seq WHERE a.id = $1`, ids[1]).Scan(&lastSeq, &prev); err != nil {
			t.Fatal(err)
		}
		if err := f.db.R.QueryRowContext(f.ctx, `SELECT MAX(seq) FROM ledger_journal WHERE debit <> $1 AND credit <> $1 AND seq < $2`, ids[1], lastSeq).Scan(&others); err != nil {
			t.Fatal(err)
		}
		for _, bad := range []struct {
			link    int64
			says    string
			missing bool // move the linked entry away first
		}{{lastSeq + 1, "points forward", false}, {others, "names other accounts", false}, {prev, "not in the journal", true}} {
			if bad.missing {
				if _, err := f.db.W.ExecContext(f.ctx, `UPDATE ledger_journal SET seq = seq + 1000000 WHERE seq = $1`, prev); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := f.db.W.ExecContext(f.ctx, `UPDATE ledger_journal SET debit_prev = $1 WHERE seq = $2`, bad.link, lastSeq); err != nil {
				t.Fatal(err)
			}
			_, _, err := f.l.Statement(f.ctx, ids[1], time.Time{}, time.Time{}, "", 10)
			if apperr.CodeOf(err) != apperr.Internal || !strings.Contains(err.Error(), bad.says) {
				t.Fatalf("chain link %d (%s): %v", bad.link, bad.says, err)
			}
			if r, err := f.l.Check(f.ctx); err != nil || r.OK() {
				t.Fatalf("check passed a broken chain (%s): %+v %v", bad.says, r, err)
			}
		}
	})
}

// TestChainBackfill: migration 0031 chains the entries written before it.
// The chains of a history (transfers, holds posted and voided, reversals)
// are erased and rebuilt by the migration's UPDATEs, and Check passes
// again; it fails while they are erased.
func TestChainBackfill(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("bus", KindReceivable, 0)
		accts := []string{WalletID("a"), WalletID("b"), MedicalID("a"), "other"}
		for i, id := range accts {
			f.account(id, KindWallet, 0)
			f.fund(id, int64(1000*(i+1)))
		}
		for i := 0; i < 40; i++ {
			d, c := accts[i%4], accts[(i+1+i/4)%4]
			if d == c {
				c = "bus"
			}
			tr, err := f.l.Transfer(f.ctx, TransferRequest{Key: fmt.Sprint("t", i), Debit: d, Credit: c, Amount: int64(i + 1)})
			if err != nil {
				t.Fatal(err)
			}
			switch i % 5 {
			case 1:
				if _, err := f.l.Reverse(f.ctx, fmt.Sprint("r", i), tr.ID, 1); err != nil {
					t.Fatal(err)
				}
			case 3:
				h, err := f.l.Hold(f.ctx, HoldRequest{Key: fmt.Sprint("h", i), Debit: d, Credit: "bus", Amount: 5})
				if err != nil {
					t.Fatal(err)
				}
				if i%2 == 0 {
					_, err = f.l.VoidHold(f.ctx, fmt.Sprint("v", i), h.ID)
				} else {
					_, err = f.l.PostHold(f.ctx, fmt.Sprint("p", i), h.ID, 3)
				}
				if err != nil {
					t.Fatal(err)
				}
			}
		}
		f.check()
		for _, q := range []string{`UPDATE ledger_journal SET debit_prev = 0, credit_prev = 0`, `UPDATE ledger_accounts SET last_seq = 0`} {
			if _, err := f.db.W.ExecContext(f.ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		if r, err := f.l.Check(f.ctx); err != nil || r.OK() {
			t.Fatalf("check passed erased chains: %+v %v", r, err)
		}
		ms, err := store.Migrations(f.db.Dialect)
		if err != nil {
			t.Fatal(err)
		}
		ran := 0
		for _, m := range ms {
			if m.Name != "0031_ledger_account_chains" {
				continue
			}
			for _, stmt := range strings.SplitAfter(m.SQL, ";\n") {
				var lines []string
				for _, l := range strings.Split(stmt, "\n") {
					if !strings.HasPrefix(strings.TrimSpace(l), "--") {
						lines = append(lines, l)
					}
				}
				if stmt = strings.TrimSpace(strings.Join(lines, "\n")); strings.HasPrefix(stmt, "UPDATE") {
					if _, err := f.db.W.ExecContext(f.ctx, stmt); err != nil {
						t.Fatalf("%v\n%s", err, stmt)
					}
					ran++
				}
			}
		}
		if ran != 3 {
			t.Fatalf("ran %d backfill statements", ran)
		}
		f.check()
	})
}

func TestCheckDetectsTampering(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("w", KindWallet, 0)
		f.account("bus", KindReceivable, 0)
		f.fund("w", 1000)
		tr, _ := f.l.Transfer(f.ctx, TransferRequest{Key: "a", Debit: "w", Credit: "bus", Amount: 100})
		f.l.Transfer(f.ctx, TransferRequest{Key: "b", Debit: "w", Credit: "bus", Amount: 100})
		f.check()
		seq, _ := parseID(tr.ID)
		// Edit an amount and the balances to match: the sums still balance, the chain does not.
		if _, err := f.db.W.ExecContext(f.ctx, `UPDATE ledger_journal SET amount = 50, debit_after = 950, credit_after = 50 WHERE seq = $1`, seq); err != nil {
			t.Fatal(err)
		}
		r, err := f.l.Check(f.ctx)
		if err != nil || r.JournalOK || r.OK() {
			t.Fatalf("tampered journal passed: %+v %v", r, err)
		}
		if _, err := f.db.W.ExecContext(f.ctx, `UPDATE ledger_accounts SET balance_fen = balance_fen + 1 WHERE id = 'w'`); err != nil {
			t.Fatal(err)
		}
		r, _ = f.l.Check(f.ctx)
		if r.SumFen != 1 {
			t.Fatalf("%+v", r)
		}
	})
}

// A check reads the whole journal, so its time grows with the city's
// history: on PostgreSQL the statement timeout meant for requests must not
// cut it short (it would fail on every large ledger), while it still cuts
// a request's statement on the same pool.
func TestCheckOutlivesTheStatementTimeout(t *testing.T) {
	dsn := storetest.Postgres(t)
	ctx := context.Background()
	l := openLedger(t, openDB(t, dsn), Options{})
	const wallets, transfers = 200, 40000
	var reqs []TransferRequest
	for i := 0; i < wallets; i++ {
		id := fmt.Sprintf("w:%d", i)
		if _, err := l.CreateAccount(ctx, Account{ID: id, Kind: KindWallet}); err != nil {
			t.Fatal(err)
		}
		reqs = append(reqs, TransferRequest{Key: "fund-" + id, Debit: AccountBank, Credit: id, Amount: 1 << 30})
	}
	for i := 0; i < transfers; i++ {
		reqs = append(reqs, TransferRequest{Key: fmt.Sprint("t", i), Debit: fmt.Sprintf("w:%d", i%wallets), Credit: AccountBank, Amount: 1})
	}
	for _, r := range l.Batch(ctx, reqs) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	const timeout = 20 * time.Millisecond
	short, err := store.Open(ctx, dsn, store.Options{StatementTimeout: timeout, MaxConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	lc := openLedger(t, short, Options{})
	start := time.Now()
	r, err := lc.Check(ctx)
	if err != nil || !r.OK() || r.Transfers < transfers {
		t.Fatalf("check of %d transfers with a %v statement timeout: %+v, %v", transfers, timeout, r, err)
	}
	if took := time.Since(start); took < 2*timeout {
		t.Fatalf("the check took %v, too little to show anything against a %v timeout: grow the history", took, timeout)
	}
	if _, err := short.R.ExecContext(ctx, `SELECT pg_sleep(0.5)`); apperr.CodeOf(dbErr(err)) != apperr.Unavailable || !strings.Contains(err.Error(), "57014") {
		t.Fatalf("a slow statement after the check: %v, want a statement timeout", err)
	}
	// A check for one HTTP request is bounded, and says where to run it
	// without a bound.
	if _, err := lc.CheckWithin(ctx, time.Millisecond); apperr.CodeOf(err) != apperr.Unavailable || !strings.Contains(err.Error(), "yikatong ledger check") {
		t.Fatalf("a check that cannot finish within its bound: %v", err)
	}
	if r, err := lc.CheckWithin(ctx, time.Minute); err != nil || !r.OK() {
		t.Fatalf("a check within a minute: %+v, %v", r, err)
	}
}

// TestConcurrentDuplicates: many goroutines send the same keys at once;
// each key is applied once and every caller sees the same transfer.
func TestConcurrentDuplicates(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		f.account("w", KindWallet, 0)
		f.account("bus", KindReceivable, 0)
		f.fund("w", 100000)
		var mu sync.Mutex
		ids := map[string]string{}
		var wg sync.WaitGroup
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 50; i++ {
					key := fmt.Sprint("fare-", i)
					tr, err := f.l.Transfer(f.ctx, TransferRequest{Key: key, Debit: "w", Credit: "bus", Amount: 7})
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					if old, ok := ids[key]; ok && old != tr.ID {
						t.Errorf("key %s applied as %s and %s", key, old, tr.ID)
					}
					ids[key] = tr.ID
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if f.bal("bus") != 50*7 {
			t.Fatalf("bus = %d", f.bal("bus"))
		}
		f.check()
	})
}

// TestTwoProcessesOneDatabase: two Ledgers (as two node processes) over one
// PostgreSQL database spend from the same accounts; no overspending.
func TestTwoProcessesOneDatabase(t *testing.T) {
	dsn := storetest.Postgres(t)
	ctx := context.Background()
	db1, db2 := openDB(t, dsn), openDB(t, dsn)
	l1 := openLedger(t, db1, Options{})
	l2 := openLedger(t, db2, Options{})
	for i := 0; i < 10; i++ {
		if _, err := l1.CreateAccount(ctx, Account{ID: fmt.Sprint("w", i), Kind: KindWallet}); err != nil {
			t.Fatal(err)
		}
		if _, err := l1.TopUp(ctx, fmt.Sprint("top", i), fmt.Sprint("w", i), 1000, nil); err != nil {
			t.Fatal(err)
		}
	}
	l1.CreateAccount(ctx, Account{ID: "bus", Kind: KindReceivable})
	var ok atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := l1
			if g%2 == 1 {
				l = l2
			}
			for i := 0; i < 40; i++ {
				_, err := l.Transfer(ctx, TransferRequest{Key: fmt.Sprint("g", g, "-", i), Debit: fmt.Sprint("w", (g+i)%10), Credit: "bus", Amount: 300})
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
	// Each wallet had 1000: at most 3 fares of 300 each.
	if ok.Load() != 30 {
		t.Fatalf("%d fares succeeded, want 30", ok.Load())
	}
	r, err := l2.Check(ctx)
	if err != nil || !r.OK() {
		t.Fatalf("%+v %v", r, err)
	}
	a, _ := l1.Balance(ctx, "bus")
	if a.Balance != 9000 {
		t.Fatal(a.Balance)
	}
}
