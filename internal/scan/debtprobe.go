package scan

import (
	"context"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
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
// at start collects it).
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

func (p *debtProbe) stats() (calls, queries int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls, p.queries
}
