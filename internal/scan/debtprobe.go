package scan

import (
	"context"
	"database/sql"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/store"
)

// debtProbe answers, after a top-up, whether the resident has any debt
// row at all, for many top-ups in one query.
//
// Every top-up asks the collector to collect the resident's offline debt,
// and almost no resident has any: the full read of outstanding debt (a
// join and a group over the resident's debt rows) was one more database
// round trip per top-up, on PostgreSQL one more transaction, and cost
// about a third of a top-up's CPU (docs/benchmarks.md, session 10). The
// probe reads only the partial index of debt rows (scans_debt), and its
// calls gather as the ledger's requests do: the first caller's query
// starts at once, and callers that arrive while it runs share the next
// one. A resident the probe finds goes on to the full read; one it does
// not find owes nothing, exactly as the full read would have said: a
// debt row written after the probe read is one the full read, run at
// that moment, would have missed as well (the next top-up or the sweep
// at start collects it). On PostgreSQL a top-up asks the same question
// inside its own ledger batch instead (Credit, debtCheck below); the
// probe answers there for Collect, and on SQLite for every top-up.
type debtProbe struct {
	s       *Service
	mu      sync.Mutex
	queue   []*probeCall
	running bool
	// counters (Collector.Stats)
	calls, queries int64
	hold           func() // tests: called before each query
}

type probeCall struct {
	resident string
	has      bool
	err      error
	done     chan struct{}
}

const debtProbePrefix = `SELECT DISTINCT resident_id FROM scans WHERE debt_fen > 0 AND decision = 'accepted' AND resident_id IN `

// probeTimeout bounds one gathered query (its callers' contexts may be
// shorter; a caller that gives up does not stop the query others wait for).
const probeTimeout = 10 * time.Second

// hasDebt reports whether residentID has any accepted scan with debt.
func (p *debtProbe) hasDebt(ctx context.Context, residentID string) (bool, error) {
	c := &probeCall{resident: residentID, done: make(chan struct{})}
	p.mu.Lock()
	p.queue = append(p.queue, c)
	p.calls++
	start := !p.running
	p.running = true
	p.mu.Unlock()
	if start {
		go p.run()
	}
	select {
	case <-c.done:
		return c.has, c.err
	case <-ctx.Done():
		return false, apperr.Wrap(apperr.Unavailable, ctx.Err())
	}
}

// run answers the queued calls, one query per gathering, until none wait.
func (p *debtProbe) run() {
	for {
		p.mu.Lock()
		calls := p.queue
		p.queue = nil
		if len(calls) == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
		for len(calls) > 0 {
			n := min(len(calls), maxClass)
			p.answer(calls[:n])
			calls = calls[n:]
		}
	}
}

// answer runs one query for calls (at most maxClass of them).
func (p *debtProbe) answer(calls []*probeCall) {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	c := class(len(calls))
	args := make([]any, c)
	for i := range args {
		args[i] = calls[min(i, len(calls)-1)].resident
	}
	found := map[string]bool{}
	if p.hold != nil {
		p.hold()
	}
	err := func() error {
		p.mu.Lock()
		p.queries++
		p.mu.Unlock()
		rows, err := p.s.DB.R.QueryContext(ctx, listSQL(p.s.DB.Dialect == store.Postgres, debtProbePrefix, c), args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return err
			}
			found[id] = true
		}
		return rows.Err()
	}()
	for _, call := range calls {
		if err != nil {
			call.err = apperr.Wrap(apperr.Unavailable, err)
		} else {
			call.has = found[call.resident]
		}
		close(call.done)
	}
}

// count adds to the counters (Stats).
func (p *debtProbe) count(calls, queries int64) {
	p.mu.Lock()
	p.calls += calls
	p.queries += queries
	p.mu.Unlock()
}

func (p *debtProbe) stats() (calls, queries int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls, p.queries
}

// Credit applies req, a top-up that credits residentID's wallet, exactly
// as Ledger.Transfer does, and reports whether the resident may owe
// offline debt (has any debt row): then the caller collects it
// (CollectOwed), from the money just credited.
//
// On PostgreSQL the question rides in the top-up's own ledger batch
// (debtCheck, a ledger.PipelineAttacher): one statement before the
// batch's COMMIT answers every top-up of the batch, with no round trip of
// its own. Asked after the commit by the shared probe instead, it took
// 0.12–0.20 PostgreSQL transactions per top-up, each process gathering
// only its own callers (docs/benchmarks.md, session 11). On SQLite the
// batch's transaction is the one writer every scan waits for, so the
// question stays out of it and goes to the shared probe, which reads on
// the reader connections. A probe that fails answers "may owe": the full
// read then says, and the top-up stands either way.
func (c *Collector) Credit(ctx context.Context, req ledger.TransferRequest, residentID string) (t ledger.Transfer, owes bool, err error) {
	if c.s.DB.Dialect != store.Postgres {
		if t, err = c.s.Ledger.Transfer(ctx, req); err != nil {
			return t, false, err
		}
		has, perr := c.probe.hasDebt(ctx, residentID)
		return t, has || perr != nil, nil
	}
	ask := &debtAsk{resident: residentID}
	out, err := c.s.Ledger.Attach(ctx, []ledger.TransferRequest{req}, &ledger.Attachment{To: debtCheck{&c.probe}, Value: ask})
	switch {
	case err != nil:
		return t, false, err
	case out.Err != nil:
		return t, false, out.Err
	case len(out.Transfers) != 1:
		return t, false, apperr.Newf(apperr.Internal, "the top-up's batch returned no transfer", "充值批次未返回转账")
	}
	return out.Transfers[0], ask.has(), nil
}

// CollectOwed is Collect for a resident Credit found may owe (it does not
// ask the probe again).
func (c *Collector) CollectOwed(ctx context.Context, residentID string) (Collected, error) {
	return c.collect(ctx, residentID, false)
}

// debtAsk is one top-up's question to debtCheck (Attachment.Value).
type debtAsk struct {
	resident string
	// found: the residents of the batch found with debt, filled by Write,
	// or by the pipeline after QueueWrite (read once the batch committed).
	found map[string]bool
}

func (q *debtAsk) has() bool { return q.found[q.resident] }

// debtCheck answers, inside a top-up's ledger batch, which of the batch's
// residents have any debt row (the probe's query as one statement). It
// claims nothing and writes nothing.
type debtCheck struct{ p *debtProbe }

const debtCheckSQL = `SELECT DISTINCT resident_id FROM scans WHERE debt_fen > 0 AND decision = 'accepted' AND resident_id = ANY($1::text[])`

func (debtCheck) Claim(context.Context, *sql.Tx, []*ledger.Attachment) error { return nil }

func (debtCheck) QueueClaim(ledger.Queue, []*ledger.Attachment) func() error {
	return func() error { return nil }
}

// ask lists the residents of atts and counts their questions (Stats).
func (d debtCheck) ask(atts []*ledger.Attachment) []string {
	ids := make([]string, len(atts))
	for i, a := range atts {
		q := a.Value.(*debtAsk)
		q.found = nil
		ids[i] = q.resident
	}
	d.p.count(int64(len(atts)), 0)
	return ids
}

func answerAsks(atts []*ledger.Attachment, found map[string]bool) {
	for _, a := range atts {
		a.Value.(*debtAsk).found = found
	}
}

// Write implements ledger.Attacher (SQLite does not use debtCheck, but a
// batch mixing it with an attacher that needs a transaction would).
func (d debtCheck) Write(ctx context.Context, tx *sql.Tx, atts []*ledger.Attachment) error {
	ids := d.ask(atts)
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	found := map[string]bool{}
	pg := d.p.s.DB.Dialect == store.Postgres
	reads := in(nil, func(n int) string { return listSQL(pg, debtProbePrefix, n) }, args, 1, func(scan func(...any) error) error {
		var id string
		err := scan(&id)
		found[id] = true
		return err
	})
	for _, q := range reads {
		d.p.count(0, 1)
		if err := q.run(ctx, tx, nil); err != nil {
			return err
		}
	}
	answerAsks(atts, found)
	return nil
}

func (d debtCheck) QueueWrite(q ledger.Queue, atts []*ledger.Attachment) error {
	ids := d.ask(atts)
	d.p.count(0, 1)
	found := map[string]bool{}
	q.Query(debtCheckSQL, []any{ids}, func(scan func(...any) error) error {
		var id string
		err := scan(&id)
		found[id] = true
		return err
	})
	// The answers arrive when the pipeline runs, after this returns; the
	// callers read them only once the batch has committed.
	answerAsks(atts, found)
	return nil
}
