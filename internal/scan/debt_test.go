package scan_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

func wallet(t testing.TB, c *city, p person) int64 {
	t.Helper()
	a, err := c.tn.Ledger.Balance(context.Background(), ledger.WalletID(p.id))
	if err != nil {
		t.Fatal(err)
	}
	return a.Balance
}

func upload(t testing.TB, c *city, id string, recs []terminal.Record) scan.BatchReport {
	t.Helper()
	var rep scan.BatchReport
	c.tc.JSON(t, "POST", "/v1/terminals/"+c.term+"/batches", signBatch(t, c, id, recs), 200, &rep)
	return rep
}

// race runs up(0) … up(n-1) in goroutines let go at once, and returns a
// function that waits for them all.
func race(n int, up func(i int)) (wait func()) {
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			up(i)
		}()
	}
	close(start)
	return wg.Wait
}

// creditGate holds a node's offline uploads before their credit step
// ("ride first, pay later": debtRecord) until n of them are there, then
// lets them all settle on credit at once: the tests of races at that step
// make them race whatever the scheduling.
type creditGate struct {
	t       testing.TB
	n       int
	mu      sync.Mutex
	arrived int
	more    chan struct{} // closed (and replaced) at each arrival
	all     chan struct{} // closed once n have arrived, or on giving up
	open    bool
}

// gateCredit sets a creditGate of n uploads on c's node, for the test.
func gateCredit(t testing.TB, c *city, n int) *creditGate {
	t.Helper()
	g := &creditGate{t: t, n: n, more: make(chan struct{}), all: make(chan struct{})}
	svc := scan.ServiceOf(c.tn.Node.DebtCollector())
	scan.SetBatchHooks(svc, nil, g.hold, nil)
	t.Cleanup(func() {
		g.mu.Lock()
		g.release()
		g.mu.Unlock()
		scan.SetBatchHooks(svc, nil, nil, nil)
	})
	return g
}

func (g *creditGate) hold(string) {
	g.mu.Lock()
	g.arrived++
	close(g.more)
	g.more = make(chan struct{})
	if g.arrived >= g.n {
		g.release()
	}
	all := g.all
	g.mu.Unlock()
	<-all
}

// release lets the held uploads go (g.mu held).
func (g *creditGate) release() {
	if !g.open {
		g.open = true
		close(g.all)
	}
}

// reached waits until k uploads have got to the credit step. If they do
// not in time (the uploads serialised somewhere, or one not going to
// credit), the test fails (they did not race) and the held ones go on.
func (g *creditGate) reached(k int) {
	g.t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		g.mu.Lock()
		n, more := g.arrived, g.more
		if n >= k {
			g.mu.Unlock()
			return
		}
		g.mu.Unlock()
		select {
		case <-more:
		case <-deadline:
			g.mu.Lock()
			g.release()
			g.mu.Unlock()
			g.t.Errorf("%d of %d uploads got to the credit step together", n, k)
			return
		}
	}
}

// storedDebt is the debt recorded on accepted scans of resident p.
func storedDebt(t testing.TB, c *city, p person) int64 {
	t.Helper()
	var n int64
	if err := c.tn.DB.R.QueryRowContext(context.Background(), `SELECT COALESCE(SUM(debt_fen), 0) FROM scans WHERE resident_id = $1 AND decision = 'accepted'`, p.id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDebtDecidedOnce: the wallet/credit split of an offline record is
// decided once. Overlapping uploads of one batch apply each record once;
// a re-send after the resident topped up reports the stored split and
// takes nothing more from the wallet.
func TestDebtDecidedOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		poor := c.people[2] // wallet 300, bus fare 200, credit limit 500
		n := c.tn.Node
		now := time.Now()
		recs := []terminal.Record{
			{ID: "d1", Seq: 1, At: now.Add(-2 * time.Minute), Scenario: "transit.bus", CardNumber: poor.card}, // 200 from the wallet
			{ID: "d2", Seq: 2, Scenario: "transit.bus", Code: code(t, n, poor.card)},                          // 100 + 100 credit
		}
		recs[1].At = time.Now()
		reps := make([]scan.BatchReport, 3)
		var wg sync.WaitGroup
		for i := range reps {
			wg.Add(1)
			go func() {
				defer wg.Done()
				reps[i] = upload(t, c, "debt-1", recs)
			}()
		}
		wg.Wait()
		applied := map[string]scan.RecordReport{}
		for _, rep := range reps {
			for _, it := range rep.Items {
				switch it.Status {
				case scan.StatusApplied:
					if _, ok := applied[it.ID]; ok {
						t.Fatalf("record %s applied twice: %+v", it.ID, reps)
					}
					applied[it.ID] = it
				case scan.StatusDuplicate:
				default:
					t.Fatalf("record %s: %+v", it.ID, it)
				}
			}
		}
		if len(applied) != 2 || applied["d1"].DebtFen != 0 || applied["d2"].DebtFen != 100 || applied["d2"].ChargedFen != 200 {
			t.Fatalf("applied: %+v", applied)
		}
		if w := wallet(t, c, poor); w != 0 {
			t.Fatalf("wallet %d, want 0", w)
		}
		c.checkBooks(t, 400)
		// The resident tops up; the batch is re-sent (a client timeout, or
		// the answer lost in a crash): nothing is planned again.
		if _, err := n.Ledger.TopUp(context.Background(), "top-later:"+poor.id, ledger.WalletID(poor.id), 1000, nil); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			rep := upload(t, c, "debt-1", recs)
			if rep.Duplicates != 2 || rep.Items[1].DebtFen != 100 || rep.Items[1].ChargedFen != 200 {
				t.Fatalf("re-send: %+v", rep)
			}
		}
		if w := wallet(t, c, poor); w != 1000 {
			t.Fatalf("wallet %d after the re-sends, want 1000 (nothing taken again)", w)
		}
		if d := storedDebt(t, c, poor); d != 100 {
			t.Fatalf("stored debt %d, want 100", d)
		}
		c.checkBooks(t, 400)
	})
}

// legacyPending writes an offline record as an older version of the node
// left it: a pending row with its plan, and, if debt, the "ride first, pay
// later" legs it had applied before it stopped (wallet part w, credit d).
func legacyPending(t testing.TB, c *city, p person, r terminal.Record, debt bool, w, d int64) {
	t.Helper()
	ctx := context.Background()
	key := "off:" + r.ID
	wal, prv := ledger.WalletID(p.id), ledger.ReceivableID(c.provider)
	plan, _ := json.Marshal([]map[string]any{{"d": wal, "c": prv, "a": 200, "t": "scan_charge"}})
	answer := c.tn.Vault.Seal([]byte(`{"charged_fen":200}`), "scan:"+c.term+":"+key)
	if _, err := c.tn.DB.W.ExecContext(ctx, `INSERT INTO scans(terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, offline, plan, answer, at)
		VALUES ($1, $2, $3, NULL, $4, 'transit.bus', $5, 'pending', 'accepted', '', 200, 0, 1, $6, $7, $8)`,
		c.term, key, scan.RecordHash(r), c.provider, p.id, string(plan), answer, r.At.UnixMilli()); err != nil {
		t.Fatal(err)
	}
	if !debt {
		return
	}
	base := "scan:" + c.term + ":" + key + ":debt"
	meta := map[string]string{"scenario": "transit.bus", "terminal": c.term}
	var reqs []ledger.TransferRequest
	if w > 0 {
		reqs = append(reqs, ledger.TransferRequest{Key: base + "0", Debit: wal, Credit: prv, Amount: w, Kind: "scan_charge", Meta: meta})
	}
	reqs = append(reqs, ledger.TransferRequest{Key: base + "1", Debit: scan.CreditAccount, Credit: prv, Amount: d, Kind: "scan_credit", Meta: meta})
	if _, err := c.tn.Ledger.Linked(ctx, reqs); err != nil {
		t.Fatal(err)
	}
}

// TestLegacyPendingDebtReplayed: a record an older version left pending
// after applying its wallet/credit split is finished from those legs: a
// re-send neither declines the paid ride (its credit leg conflicting with
// a new plan) nor charges the fare again after a top-up.
func TestLegacyPendingDebtReplayed(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		n := c.tn.Node
		p := enrol(t, n, rand.New(rand.NewPCG(7, 8)), resident.CategoryLocal, time.Now().AddDate(-30, 0, -3), 100, 0)
		now := time.Now().UTC().Truncate(time.Millisecond)
		l1 := terminal.Record{ID: "l1", Seq: 1, At: now.Add(-3 * time.Minute), Scenario: "transit.bus", CardNumber: p.card}
		l2 := terminal.Record{ID: "l2", Seq: 2, At: now.Add(-2 * time.Minute), Scenario: "transit.bus", CardNumber: p.card}
		l3 := terminal.Record{ID: "l3", Seq: 3, At: now.Add(-time.Minute), Scenario: "transit.bus", CardNumber: p.card}
		legacyPending(t, c, p, l1, true, 100, 100) // wallet 100 → 0
		legacyPending(t, c, p, l2, true, 0, 200)
		legacyPending(t, c, p, l3, false, 0, 0) // nothing applied yet
		if w := wallet(t, c, p); w != 0 {
			t.Fatalf("wallet %d", w)
		}
		// Re-sent with the wallet empty: applied as it was, not declined.
		rep := upload(t, c, "legacy", []terminal.Record{l1})
		if it := rep.Items[0]; it.Status != scan.StatusApplied || it.ChargedFen != 200 || it.DebtFen != 100 {
			t.Fatalf("l1 re-driven: %+v", it)
		}
		// Topped up: l2 is finished from its legs, not charged again.
		if _, err := n.Ledger.TopUp(ctx, "top-legacy:"+p.id, ledger.WalletID(p.id), 1000, nil); err != nil {
			t.Fatal(err)
		}
		rep = upload(t, c, "legacy", []terminal.Record{l1, l2})
		if a, b := rep.Items[0], rep.Items[1]; a.Status != scan.StatusDuplicate || b.Status != scan.StatusApplied || b.DebtFen != 200 || b.ChargedFen != 200 {
			t.Fatalf("re-send: %+v", rep.Items)
		}
		if w := wallet(t, c, p); w != 1000 {
			t.Fatalf("wallet %d, want 1000: a decided split was charged again", w)
		}
		// l3 had moved nothing: it is charged now, from the wallet, once
		// (two re-sends at once).
		var wg sync.WaitGroup
		for i := 0; i < 2; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); upload(t, c, "legacy", []terminal.Record{l1, l2, l3}) }()
		}
		wg.Wait()
		rep = upload(t, c, "legacy", []terminal.Record{l1, l2, l3})
		if rep.Duplicates != 3 || rep.Items[2].ChargedFen != 200 || rep.Items[2].DebtFen != 0 {
			t.Fatalf("after: %+v", rep)
		}
		if w := wallet(t, c, p); w != 800 {
			t.Fatalf("wallet %d, want 800", w)
		}
		if d := storedDebt(t, c, p); d != 300 {
			t.Fatalf("stored debt %d, want 300", d)
		}
		c.checkBooks(t, 600)
	})
}

// TestDebtLimitConcurrent: batches uploaded at once, each with a card and
// a code record of one resident whose wallet is empty, together advance
// no more credit than the scenario's limit (500: two fares of 200). Each
// batch comes from a terminal of its own (one terminal's uploads run one
// after the other), and all are held before their credit step until all
// are there: they settle on credit at once.
func TestDebtLimitConcurrent(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		n := c.tn.Node
		p := enrol(t, n, rand.New(rand.NewPCG(5, 6)), resident.CategoryLocal, time.Now().AddDate(-30, 0, -3), 0, 0)
		now := time.Now()
		const batches = 4
		gates := c.gates(t, batches)
		recs := make([][]terminal.Record, batches)
		for i := range recs {
			recs[i] = []terminal.Record{
				{ID: fmt.Sprintf("b%d-card", i), Seq: 1, At: now.Add(-time.Minute), Scenario: "transit.bus", CardNumber: p.card},
				{ID: fmt.Sprintf("b%d-code", i), Seq: 2, Scenario: "transit.bus", Code: code(t, n, p.card)},
			}
			recs[i][1].At = time.Now()
		}
		reps := make([]scan.BatchReport, batches)
		g := gateCredit(t, c, batches)
		wait := race(batches, func(i int) { reps[i] = upload(t, gates[i], fmt.Sprintf("lim-%d", i), recs[i]) })
		g.reached(batches)
		wait()
		var applied, debt int64
		for _, rep := range reps {
			for _, it := range rep.Items {
				switch {
				case it.Status == scan.StatusApplied:
					applied++
					debt += it.DebtFen
				case it.Status != scan.StatusDeclined || it.Reason != apperr.InsufficientFunds:
					t.Fatalf("record %+v", it)
				}
			}
		}
		if applied != 2 || debt != 400 {
			t.Fatalf("%d records applied with %d credit, want 2 and 400 (limit 500)", applied, debt)
		}
		if d := storedDebt(t, c, p); d != 400 {
			t.Fatalf("stored debt %d", d)
		}
		c.checkBooks(t, 400)
	})
}

// TestOfflineKeyPrefixReserved: online keys cannot take an offline
// record's key ("off:<record id>").
func TestOfflineKeyPrefixReserved(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		_, r := c.scan(t, map[string]any{"idempotency_key": "off:r1", "scenario": "transit.bus", "card_number": c.people[0].card})
		if r.Status != 422 || r.Code() != "validation_failed" {
			t.Fatalf("off: key: %d %s", r.Status, r.Body)
		}
		if a, r := c.scan(t, map[string]any{"idempotency_key": "of:r1", "scenario": "transit.bus", "card_number": c.people[0].card}); r.Status != 200 || a.Decision != "accepted" {
			t.Fatalf("other key: %d %s", r.Status, r.Body)
		}
	})
}

// fakeForeign verifies "FX1:<nonce>" as a code of another city.
type fakeForeign struct{}

func (fakeForeign) Verify(_ context.Context, code string, _ time.Time) (scan.Identity, error) {
	return scan.Identity{Scheme: scan.SchemeYK1, Issuer: "CN-999999", Token: "tok-remote", CTI: code, Category: resident.CategoryLocal}, nil
}

// countingRemote approves every charge and counts them.
type countingRemote struct{ asked atomic.Int64 }

func (*countingRemote) Admit(context.Context, scan.Identity, time.Time) error { return nil }
func (r *countingRemote) Authorize(_ context.Context, _ string, req scan.RemoteCharge) (scan.RemoteResult, error) {
	r.asked.Add(1)
	return scan.RemoteResult{Approved: true, WalletFen: req.AmountFen}, nil
}

// TestRemoteKeyCheckedFirst: a retried or reused key of another city's
// code is answered from the scans table without asking the home city.
func TestRemoteKeyCheckedFirst(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		n := c.tn.Node
		ctx := context.Background()
		if _, err := n.Ledger.CreateAccount(ctx, ledger.Account{ID: ledger.ClearingID("CN-999999"), Kind: ledger.KindClearing, Floor: -1_000_000, Label: "peer"}); err != nil {
			t.Fatal(err)
		}
		reg := scan.NewRegistry()
		reg.Register("FX1", fakeForeign{})
		remote := &countingRemote{}
		svc, err := scan.New(ctx, scan.Deps{DB: n.DB, Vault: n.Vault, Catalog: n.Catalog, Residents: n.Residents, Ledger: n.Ledger,
			Terminals: terminal.New(n.DB, nil, nil, nil), Registry: reg, City: n.City, Remote: remote})
		if err != nil {
			t.Fatal(err)
		}
		defer svc.Close()
		term := bareTerminal(t, n.DB, "trm_remote", c.provider)
		req := scan.Request{IdempotencyKey: "r1", Scenario: "transit.bus", Code: "FX1:nonce-1"}
		first, err := svc.Scan(ctx, term, req)
		if err != nil || first.Decision != scan.Accepted || remote.asked.Load() != 1 {
			t.Fatalf("first: %+v %v (asked %d)", first, err, remote.asked.Load())
		}
		again, err := svc.Scan(ctx, term, req)
		if err != nil || again.Decision != scan.Accepted || remote.asked.Load() != 1 {
			t.Fatalf("retry: %+v %v (home city asked %d times)", again, err, remote.asked.Load())
		}
		req.Code = "FX1:nonce-2"
		if _, err := svc.Scan(ctx, term, req); apperr.CodeOf(err) != apperr.IdempotencyConflict || remote.asked.Load() != 1 {
			t.Fatalf("reused key: %v (home city asked %d times)", err, remote.asked.Load())
		}
		c.checkBooks(t, 200)
	})
}

// TestDebtSplitRacesWallet: offline rides of one holder uploaded at once
// in separate batches, each short of the wallet, are settled as if one by
// one: the first takes what the wallet holds and credit for the rest, the
// next all on credit, within the limit. A ride whose wallet part another
// upload took meanwhile is not declined insufficient_funds. Each batch
// comes from a terminal of its own (one terminal's uploads run one after
// the other), and all settle on credit at once (creditGate).
func TestDebtSplitRacesWallet(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		const holders = 6
		gates := c.gates(t, 2*holders)
		people := make([]person, holders)
		for i := range people {
			// 150 in the wallet: a 200 fare leaves 50 on credit; a second, 200.
			people[i] = enrol(t, c.tn.Node, rand.New(rand.NewPCG(uint64(90+i), 7)), resident.CategoryLocal, time.Now().AddDate(-30, 0, -3), 150, 0)
		}
		now := time.Now()
		reps := make([]scan.BatchReport, 2*holders)
		g := gateCredit(t, c, len(reps))
		wait := race(len(reps), func(i int) {
			reps[i] = upload(t, gates[i], fmt.Sprintf("race-%d", i), []terminal.Record{
				{ID: fmt.Sprintf("race-%d", i), Seq: int64(i + 1), At: now.Add(-time.Minute), Scenario: "transit.bus", CardNumber: people[i/2].card},
			})
		})
		g.reached(len(reps))
		wait()
		var charged int64
		for i, rep := range reps {
			if it := rep.Items[0]; it.Status != scan.StatusApplied {
				t.Errorf("holder %d, ride %s: %+v; want applied (credit 250 of 500)", i/2, it.ID, it)
			}
			charged += rep.ChargedFen
		}
		for i, p := range people {
			if w := wallet(t, c, p); w != 0 {
				t.Errorf("holder %d: wallet %d, want 0", i, w)
			}
			if d := storedDebt(t, c, p); d != 250 {
				t.Errorf("holder %d: debt %d, want 250", i, d)
			}
		}
		c.checkBooks(t, charged)
	})
}

// TestDebtRecordReplayedCode: one e-code in the records of two uploads at
// once, its holder's wallet empty (both go to the credit step): the code
// is charged once, and the other record is declined replayed in its
// batch's report; neither upload fails. Each record comes from a terminal
// of its own (one terminal's uploads run one after the other), and both
// settle on credit at once (creditGate).
func TestDebtRecordReplayedCode(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		const holders = 6
		gates := c.gates(t, 2*holders)
		now := time.Now()
		codes := make([]string, holders)
		for h := range codes {
			codes[h] = code(t, c.tn.Node, debtor(t, c, uint64(200+h)).card)
		}
		reps := make([]scan.BatchReport, 2*holders)
		dup := func(i int) {
			reps[i] = upload(t, gates[i], fmt.Sprintf("dup-%d", i), []terminal.Record{
				{ID: fmt.Sprintf("dup-%d", i), Seq: int64(i + 1), At: now, Scenario: "transit.bus", Code: codes[i/2]},
			})
		}
		// Each holder's second upload starts once the first is held before
		// its credit step, nothing of it written: its first attempt then
		// neither finds the code used nor shares a ledger batch with the
		// first's (either would decline it replayed before that step), so
		// it goes to credit too, and the two settle on credit at once.
		g := gateCredit(t, c, len(reps))
		first := race(holders, func(h int) { dup(2 * h) })
		g.reached(holders)
		second := race(holders, func(h int) { dup(2*h + 1) })
		g.reached(len(reps))
		first()
		second()
		var charged int64
		for h := 0; h < holders; h++ {
			if len(reps[2*h].Items) != 1 || len(reps[2*h+1].Items) != 1 {
				t.Fatalf("holder %d: an upload failed", h)
			}
			a, b := reps[2*h].Items[0], reps[2*h+1].Items[0]
			if a.Status == scan.StatusDeclined {
				a, b = b, a
			}
			if a.Status != scan.StatusApplied || a.DebtFen != 200 || b.Status != scan.StatusDeclined || b.Reason != "replayed" {
				t.Errorf("holder %d: %+v and %+v; want one applied on credit, one declined replayed", h, a, b)
			}
			charged += reps[2*h].ChargedFen + reps[2*h+1].ChargedFen
		}
		c.checkBooks(t, charged)
	})
}
