package ledger

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// The model test: many goroutines each own a private set of accounts and
// credit one shared hot account, so each can predict the exact outcome of
// every request it makes (success, or which refusal) while the ledger
// interleaves all of them in shared batches. At the end every balance must
// equal the model's, Check must pass, and the journal must hold exactly the
// entries the models applied — no key applied twice, none lost.

type mAcct struct {
	bal, pending, floor int64
}

type mHold struct {
	id            string
	debit, credit string
	amount        int64
	status        string
}

type mMove struct {
	id            string
	debit, credit string
	amount        int64
	reversed      int64
}

type pastReq struct {
	ids   []string
	run   func() ([]string, error)
	other func() error // same key, other content
}

type worker struct {
	g        int
	l        *Ledger
	ctx      context.Context
	r        *rand.Rand
	accts    map[string]*mAcct
	names    []string // own accounts
	hot      string
	hotDelta int64
	holds    []*mHold
	movesL   []*mMove
	past     []pastReq
	applied  int64
	n        int
	errs     []string
}

func (w *worker) fail(f string, a ...any) {
	w.errs = append(w.errs, fmt.Sprintf("worker %d step %d: ", w.g, w.n)+fmt.Sprintf(f, a...))
}

func (w *worker) key() string { w.n++; return fmt.Sprintf("g%d-%d", w.g, w.n) }

func (w *worker) acct(id string) *mAcct {
	if id == w.hot {
		return nil
	}
	return w.accts[id]
}

// canDebit reports whether id may be debited amount (plus extra pending).
func (w *worker) canDebit(id string, amount, hold int64) bool {
	a := w.acct(id)
	if a == nil {
		return true // the hot account holds far more than any test moves
	}
	return a.bal-amount-(a.pending+hold) >= a.floor
}

func (w *worker) credit(id string, amount int64) {
	if a := w.acct(id); a != nil {
		a.bal += amount
	} else {
		w.hotDelta += amount
	}
}

func (w *worker) debit(id string, amount int64) {
	if a := w.acct(id); a != nil {
		a.bal -= amount
	} else {
		w.hotDelta -= amount
	}
}

func (w *worker) expect(want apperr.Code, err error, what string) bool {
	if got := apperr.CodeOf(err); got != want {
		w.fail("%s: want %q, got %v", what, want, err)
		return false
	}
	return want == ""
}

func (w *worker) step() {
	r := w.r
	pick := func() string { return w.names[r.IntN(len(w.names))] }
	switch p := r.IntN(100); {
	case p < 30: // transfer, sometimes sent twice at once
		d := pick()
		c := pick()
		if r.IntN(4) == 0 {
			c = w.hot
		}
		if c == d {
			return
		}
		req := TransferRequest{Key: w.key(), Debit: d, Credit: c, Amount: 1 + r.Int64N(300), Kind: "fare", Meta: map[string]string{"g": strconv.Itoa(w.g)}}
		want := apperr.Code("")
		if !w.canDebit(d, req.Amount, 0) {
			want = apperr.InsufficientFunds
		}
		var tr Transfer
		var err error
		if r.IntN(5) == 0 {
			var tr2 Transfer
			var err2 error
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); tr2, err2 = w.l.Transfer(w.ctx, req) }()
			tr, err = w.l.Transfer(w.ctx, req)
			wg.Wait()
			if apperr.CodeOf(err) != apperr.CodeOf(err2) || tr.ID != tr2.ID {
				w.fail("twin requests disagree: %v/%v %s/%s", err, err2, tr.ID, tr2.ID)
			}
		} else {
			tr, err = w.l.Transfer(w.ctx, req)
		}
		if w.expect(want, err, "transfer") {
			w.debit(d, req.Amount)
			w.credit(c, req.Amount)
			w.applied++
			w.movesL = append(w.movesL, &mMove{id: tr.ID, debit: d, credit: c, amount: req.Amount})
			other := req
			other.Amount++
			w.past = append(w.past, pastReq{ids: []string{tr.ID},
				run:   func() ([]string, error) { t, err := w.l.Transfer(w.ctx, req); return []string{t.ID}, err },
				other: func() error { _, err := w.l.Transfer(w.ctx, other); return err }})
		}
	case p < 42: // hold
		d := pick()
		c := pick()
		if c == d {
			return
		}
		req := HoldRequest{Key: w.key(), Debit: d, Credit: c, Amount: 1 + r.Int64N(300), Timeout: time.Hour}
		want := apperr.Code("")
		if !w.canDebit(d, 0, req.Amount) {
			want = apperr.InsufficientFunds
		}
		h, err := w.l.Hold(w.ctx, req)
		if w.expect(want, err, "hold") {
			w.acct(d).pending += req.Amount
			w.applied++
			w.holds = append(w.holds, &mHold{id: h.ID, debit: d, credit: c, amount: req.Amount, status: HoldPending})
			w.past = append(w.past, pastReq{ids: []string{h.ID},
				run: func() ([]string, error) { t, err := w.l.Hold(w.ctx, req); return []string{t.ID}, err }})
		}
	case p < 52: // post
		if len(w.holds) == 0 {
			return
		}
		h := w.holds[r.IntN(len(w.holds))]
		amt := 1 + r.Int64N(h.amount+30)
		key := w.key()
		want := apperr.Code("")
		switch {
		case h.status != HoldPending:
			want = apperr.HoldNotPending
		case amt > h.amount:
			want = apperr.InvalidAmount
		}
		t, err := w.l.PostHold(w.ctx, key, h.id, amt)
		if w.expect(want, err, "post") {
			a := w.acct(h.debit)
			a.pending -= h.amount
			w.debit(h.debit, amt)
			w.credit(h.credit, amt)
			h.status = HoldPosted
			w.applied++
			w.movesL = append(w.movesL, &mMove{id: t.ID, debit: h.debit, credit: h.credit, amount: amt})
			w.past = append(w.past, pastReq{ids: []string{t.ID},
				run:   func() ([]string, error) { t, err := w.l.PostHold(w.ctx, key, h.id, amt); return []string{t.ID}, err },
				other: func() error { _, err := w.l.VoidHold(w.ctx, key, h.id); return err }})
		}
	case p < 58: // void
		if len(w.holds) == 0 {
			return
		}
		h := w.holds[r.IntN(len(w.holds))]
		key := w.key()
		want := apperr.Code("")
		if h.status != HoldPending {
			want = apperr.HoldNotPending
		}
		_, err := w.l.VoidHold(w.ctx, key, h.id)
		if w.expect(want, err, "void") {
			w.acct(h.debit).pending -= h.amount
			h.status = HoldVoided
			w.applied++
		}
	case p < 70: // reversal
		if len(w.movesL) == 0 {
			return
		}
		m := w.movesL[r.IntN(len(w.movesL))]
		amt := 1 + r.Int64N(m.amount-m.reversed+20)
		key := w.key()
		want := apperr.Code("")
		switch {
		case m.reversed+amt > m.amount:
			want = apperr.ReversalExceeds
		case !w.canDebit(m.credit, amt, 0):
			want = apperr.InsufficientFunds
		}
		t, err := w.l.Reverse(w.ctx, key, m.id, amt)
		if w.expect(want, err, "reversal") {
			m.reversed += amt
			w.debit(m.credit, amt)
			w.credit(m.debit, amt)
			w.applied++
			w.movesL = append(w.movesL, &mMove{id: t.ID, debit: m.credit, credit: m.debit, amount: amt})
			w.past = append(w.past, pastReq{ids: []string{t.ID},
				run:   func() ([]string, error) { t, err := w.l.Reverse(w.ctx, key, m.id, amt); return []string{t.ID}, err },
				other: func() error { _, err := w.l.Reverse(w.ctx, key, m.id, amt+1); return err }})
		}
	case p < 80: // linked set
		n := 2 + r.IntN(2)
		reqs := make([]TransferRequest, n)
		for i := range reqs {
			d, c := pick(), pick()
			for c == d {
				c = w.hot
			}
			reqs[i] = TransferRequest{Key: w.key(), Debit: d, Credit: c, Amount: 1 + r.Int64N(400)}
		}
		// Predict sequentially on a copy.
		save := map[string]mAcct{}
		for id, a := range w.accts {
			save[id] = *a
		}
		hot := w.hotDelta
		want := apperr.Code("")
		for _, q := range reqs {
			if !w.canDebit(q.Debit, q.Amount, 0) {
				want = apperr.InsufficientFunds
				break
			}
			w.debit(q.Debit, q.Amount)
			w.credit(q.Credit, q.Amount)
		}
		ts, err := w.l.Linked(w.ctx, reqs)
		if !w.expect(want, err, "linked") {
			for id, a := range save {
				*w.accts[id] = a
			}
			w.hotDelta = hot
			return
		}
		ids := make([]string, len(ts))
		for i, t := range ts {
			ids[i] = t.ID
			w.movesL = append(w.movesL, &mMove{id: t.ID, debit: reqs[i].Debit, credit: reqs[i].Credit, amount: reqs[i].Amount})
		}
		w.applied += int64(n)
		other := append([]TransferRequest(nil), reqs...)
		other[n-1].Amount++
		w.past = append(w.past, pastReq{ids: ids,
			run: func() ([]string, error) {
				ts, err := w.l.Linked(w.ctx, reqs)
				out := make([]string, len(ts))
				for i, t := range ts {
					out[i] = t.ID
				}
				return out, err
			},
			other: func() error { _, err := w.l.Linked(w.ctx, other); return err }})
	case p < 90: // retry a past request: the original result
		if len(w.past) == 0 {
			return
		}
		pr := w.past[r.IntN(len(w.past))]
		ids, err := pr.run()
		if err != nil || fmt.Sprint(ids) != fmt.Sprint(pr.ids) {
			w.fail("retry: want %v, got %v %v", pr.ids, ids, err)
		}
	case p < 95: // same key, other content
		if len(w.past) == 0 {
			return
		}
		pr := w.past[r.IntN(len(w.past))]
		if pr.other != nil {
			w.expect(apperr.IdempotencyConflict, pr.other(), "same key other content")
		}
	default: // top-up
		id := pick()
		amt := 1 + r.Int64N(500)
		if _, err := w.l.TopUp(w.ctx, w.key(), id, amt, nil); w.expect("", err, "top-up") {
			w.credit(id, amt)
			w.applied++
		}
	}
}

func modelSeed(t *testing.T) uint64 {
	if s := os.Getenv("YIKATONG_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("YIKATONG_SEED: %v", err)
		}
		return n
	}
	return uint64(time.Now().UnixNano())
}

func TestModel(t *testing.T) {
	seed := modelSeed(t)
	t.Logf("seed %d (replay with YIKATONG_SEED=%d)", seed, seed)
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		ctx := f.ctx
		const workers, steps, perWorker = 8, 250, 4
		f.account("hot", KindReceivable, 0)
		if _, err := f.l.Transfer(ctx, TransferRequest{Key: "seed-hot", Debit: AccountTreasury, Credit: "hot", Amount: 1 << 40}); err != nil {
			t.Fatal(err)
		}
		ws := make([]*worker, workers)
		for g := range ws {
			w := &worker{g: g, l: f.l, ctx: ctx, r: rand.New(rand.NewPCG(seed, uint64(g))), accts: map[string]*mAcct{}, hot: "hot"}
			for i := 0; i < perWorker; i++ {
				id := fmt.Sprintf("g%d-a%d", g, i)
				if i%2 == 1 {
					id = WalletID(id) // statements through the chain (migration 0031)
				}
				floor := int64(0)
				if i == 0 {
					floor = -500
				}
				kind := KindWallet
				if i == perWorker-1 {
					kind = KindReceivable
				}
				f.account(id, kind, floor)
				w.accts[id] = &mAcct{floor: floor}
				w.names = append(w.names, id)
				if _, err := f.l.TopUp(ctx, "init-"+id, id, 1000, nil); err != nil {
					t.Fatal(err)
				}
				w.accts[id].bal = 1000
			}
			ws[g] = w
		}
		var before int64
		f.db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM ledger_journal`).Scan(&before)
		start := time.Now()
		var wg sync.WaitGroup
		for _, w := range ws {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < steps && len(w.errs) == 0; i++ {
					w.step()
				}
			}()
		}
		wg.Wait()
		var applied, hot int64
		for _, w := range ws {
			for _, e := range w.errs {
				t.Errorf("seed %d: %s", seed, e)
			}
			applied += w.applied
			hot += w.hotDelta
			for id, a := range w.accts {
				got, err := f.l.Balance(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if got.Balance != a.bal || got.Pending != a.pending {
					t.Errorf("seed %d: %s: ledger %d/%d, model %d/%d", seed, id, got.Balance, got.Pending, a.bal, a.pending)
				}
				// The statement's movements add up to the balance.
				var sum, n int64
				for cursor := "start"; cursor != ""; {
					if cursor == "start" {
						cursor = ""
					}
					es, next, err := f.l.Statement(ctx, id, time.Time{}, time.Time{}, cursor, 50)
					if err != nil {
						t.Fatal(err)
					}
					for _, e := range es {
						sum += e.Delta
						n++
						if e.BalanceAfter != sum {
							t.Errorf("seed %d: %s: entry %s: balance after %d, movements sum to %d", seed, id, e.ID, e.BalanceAfter, sum)
						}
					}
					cursor = next
				}
				if sum != a.bal || n == 0 {
					t.Errorf("seed %d: %s: statement of %d entries sums to %d, model %d", seed, id, n, sum, a.bal)
				}
			}
		}
		if got := f.bal("hot"); got != 1<<40+hot {
			t.Errorf("seed %d: hot account %d, model %d", seed, got, 1<<40+hot)
		}
		var after, keys, distinct int64
		f.db.R.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(idem_key), COUNT(DISTINCT idem_key) FROM ledger_journal`).Scan(&after, &keys, &distinct)
		if after-before != applied || keys != distinct {
			t.Errorf("seed %d: journal grew by %d, models applied %d (keys %d, distinct %d)", seed, after-before, applied, keys, distinct)
		}
		r := f.check()
		t.Logf("%d requests applied in %v; %d journal entries; sum %d", applied, time.Since(start).Round(time.Millisecond), r.Transfers, r.SumFen)
	})
}
