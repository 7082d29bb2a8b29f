package ledger

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// noteRows is a test Attacher: each attachment is one row of att_notes
// (name UNIQUE). Claim refuses a name already stored or used earlier in
// the batch; Write stores "ok" or the ledger's refusal code.
type noteRows struct {
	failWrite bool
	claims    int
}

var errTaken = errors.New("name taken")

func (n *noteRows) Claim(ctx context.Context, tx *sql.Tx, atts []*Attachment) error {
	n.claims++
	seen := map[string]bool{}
	for _, a := range atts {
		name := a.Value.(string)
		var x int
		err := tx.QueryRowContext(ctx, `SELECT 1 FROM att_notes WHERE name = $1`, name).Scan(&x)
		switch {
		case err == nil || seen[name]:
			a.Refused = errTaken
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
		seen[name] = true
	}
	return nil
}

func (n *noteRows) Write(ctx context.Context, tx *sql.Tx, atts []*Attachment) error {
	if n.failWrite {
		return errors.New("disk on fire")
	}
	for _, a := range atts {
		if _, err := tx.ExecContext(ctx, `INSERT INTO att_notes(name, outcome) VALUES ($1, $2)`, a.Value.(string), noteOutcome(a)); err != nil {
			return err
		}
	}
	return nil
}

// noteOutcome is what Write stores for a: "ok" or the ledger's refusal.
func noteOutcome(a *Attachment) string {
	switch {
	case a.Err != nil:
		return string(apperr.CodeOf(a.Err))
	case len(a.Transfers) == 0 && a.Value.(string) != "bare":
		return "no transfers?"
	}
	return "ok"
}

// pipeNotes is noteRows as a PipelineAttacher: on PostgreSQL its reads and
// writes ride in the ledger's pipelines, and Claim and Write are not
// called (SQLite calls them).
type pipeNotes struct {
	*noteRows
	queued int // QueueClaim calls
	// sneak, if set, is called once after the claim's reads ran.
	sneak func() error
}

func (p *pipeNotes) QueueClaim(q Queue, atts []*Attachment) func() error {
	p.queued++
	names := make([]string, len(atts))
	for i, a := range atts {
		names[i] = a.Value.(string)
	}
	stored := map[string]bool{}
	q.Query(`SELECT name FROM att_notes WHERE name = ANY($1)`, []any{names}, func(scan func(...any) error) error {
		var n string
		err := scan(&n)
		stored[n] = true
		return err
	})
	return func() error {
		seen := map[string]bool{}
		for _, a := range atts {
			name := a.Value.(string)
			if stored[name] || seen[name] {
				a.Refused = errTaken
			}
			seen[name] = true
		}
		if p.sneak != nil {
			f := p.sneak
			p.sneak = nil
			return f()
		}
		return nil
	}
}

func (p *pipeNotes) QueueWrite(q Queue, atts []*Attachment) error {
	if p.failWrite {
		return errors.New("disk on fire")
	}
	for _, a := range atts {
		q.Exec(`INSERT INTO att_notes(name, outcome) VALUES ($1, $2)`, a.Value.(string), noteOutcome(a))
	}
	return nil
}

// TestAttachments runs every rule of Attacher with an attacher that
// writes through a database/sql transaction and with one whose
// statements ride in the ledger's PostgreSQL pipelines.
func TestAttachments(t *testing.T) {
	for _, kind := range []string{"tx", "pipelined"} {
		t.Run(kind, func(t *testing.T) { testAttachments(t, kind) })
	}
}

func testAttachments(t *testing.T, kind string) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		f := setup(t, dsn)
		if _, err := f.db.W.ExecContext(f.ctx, `CREATE TABLE att_notes (name TEXT PRIMARY KEY, outcome TEXT NOT NULL)`); err != nil {
			t.Fatal(err)
		}
		f.account("w1", KindWallet, 0)
		f.account("shop", KindReceivable, 0)
		f.fund("w1", 500)
		nr := &noteRows{}
		var att Attacher = nr
		pn := &pipeNotes{noteRows: nr}
		if kind == "pipelined" {
			att = pn
		}
		note := func(name string) string {
			t.Helper()
			var o string
			err := f.db.R.QueryRowContext(f.ctx, `SELECT outcome FROM att_notes WHERE name = $1`, name).Scan(&o)
			if errors.Is(err, sql.ErrNoRows) {
				return ""
			}
			if err != nil {
				t.Fatal(err)
			}
			return o
		}
		fare := func(key string, amount int64) []TransferRequest {
			return []TransferRequest{{Key: key, Debit: "w1", Credit: "shop", Amount: amount, Kind: "fare"}}
		}

		// Applied: the row and the transfer commit together.
		out, err := f.l.Attach(f.ctx, fare("k1", 200), &Attachment{To: att, Value: "a"})
		if err != nil || out.Refused != nil || out.Err != nil || len(out.Transfers) != 1 || note("a") != "ok" || f.bal("w1") != 300 {
			t.Fatalf("applied: %+v %v note %q bal %d", out, err, note("a"), f.bal("w1"))
		}
		// Refused by Claim: nothing applied, nothing written, the ledger key unused.
		before := f.snap()
		out, err = f.l.Attach(f.ctx, fare("k2", 100), &Attachment{To: att, Value: "a"})
		if err != nil || !errors.Is(out.Refused, errTaken) || f.snap() != before {
			t.Fatalf("claim refusal: %+v %v", out, err)
		}
		// Refused by the ledger: Write sees the refusal, the row says so,
		// no journal entry.
		out, err = f.l.Attach(f.ctx, fare("k3", 10_000), &Attachment{To: att, Value: "b"})
		if err != nil || apperr.CodeOf(out.Err) != apperr.InsufficientFunds || note("b") != string(apperr.InsufficientFunds) || f.snap().Journal != before.Journal {
			t.Fatalf("ledger refusal: %+v %v note %q", out, err, note("b"))
		}
		// No transfers: the row alone.
		if out, err = f.l.Attach(f.ctx, nil, &Attachment{To: att, Value: "bare"}); err != nil || out.Refused != nil || note("bare") != "ok" {
			t.Fatalf("bare: %+v %v", out, err)
		}
		// A linked pair is all or nothing with its row.
		pair := []TransferRequest{{Key: "k4a", Debit: "w1", Credit: "shop", Amount: 100}, {Key: "k4b", Debit: "w1", Credit: "shop", Amount: 1_000}}
		if out, err = f.l.Attach(f.ctx, pair, &Attachment{To: att, Value: "c"}); err != nil || out.Err == nil || note("c") != string(apperr.InsufficientFunds) || f.bal("w1") != 300 {
			t.Fatalf("linked: %+v %v", out, err)
		}

		// Many at once, one name used twice: only the later one is refused,
		// the others of the batch go ahead.
		reqs := []Attached{
			{Transfers: fare("m1", 10), Att: &Attachment{To: att, Value: "m1"}},
			{Transfers: fare("m2", 10), Att: &Attachment{To: att, Value: "dup"}},
			{Transfers: fare("m3", 10), Att: &Attachment{To: att, Value: "dup"}},
			{Transfers: fare("m4", 10), Att: &Attachment{To: att, Value: "m4"}},
		}
		outs, errs := f.l.AttachMany(f.ctx, reqs)
		for i, e := range errs {
			if e != nil {
				t.Fatalf("AttachMany %d: %v", i, e)
			}
		}
		if outs[0].Refused != nil || outs[1].Refused != nil || !errors.Is(outs[2].Refused, errTaken) || outs[3].Refused != nil || f.bal("w1") != 270 {
			t.Fatalf("AttachMany: %+v, wallet %d", outs, f.bal("w1"))
		}

		// A failing Write fails the batch: every caller is told
		// unavailable, no row and no transfer is written.
		nr.failWrite = true
		before = f.snap()
		var wg sync.WaitGroup
		errCh := make(chan error, 4)
		for _, name := range []string{"x1", "x2", "x3", "x4"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := f.l.Attach(f.ctx, fare("fail-"+name, 1), &Attachment{To: att, Value: name})
				errCh <- err
			}()
		}
		wg.Wait()
		close(errCh)
		for err := range errCh {
			if apperr.CodeOf(err) != apperr.Unavailable {
				t.Fatalf("failed write: %v", err)
			}
		}
		if f.snap() != before || note("x1") != "" {
			t.Fatal("a failed batch wrote something")
		}
		nr.failWrite = false
		// The same requests succeed on retry.
		if out, err := f.l.Attach(f.ctx, fare("fail-x1", 1), &Attachment{To: att, Value: "x1"}); err != nil || out.Refused != nil || note("x1") != "ok" {
			t.Fatalf("retry: %+v %v", out, err)
		}
		// PostgreSQL: a row another process commits after Claim read makes
		// Write's INSERT fail with a unique violation; the batch re-runs,
		// Claim then refuses the request, and its transfer is not applied.
		if f.db.Dialect == store.Postgres {
			var sneaky Attacher = &sneakyRows{noteRows: nr, db: f.db}
			if kind == "pipelined" {
				pn.sneak = func() error {
					_, err := f.db.W.ExecContext(f.ctx, `INSERT INTO att_notes(name, outcome) VALUES ('late', 'other process')`)
					return err
				}
				sneaky = pn
			}
			before = f.snap()
			out, err = f.l.Attach(f.ctx, fare("k-sneak", 5), &Attachment{To: sneaky, Value: "late"})
			if err != nil || !errors.Is(out.Refused, errTaken) || f.snap().Journal != before.Journal || note("late") != "other process" {
				t.Fatalf("unique violation: %+v %v note %q", out, err, note("late"))
			}
			// A pipelined attacher's Claim and Write never ran on
			// PostgreSQL, its queued reads did; a tx attacher's did.
			if kind == "pipelined" && (nr.claims != 0 || pn.queued == 0) {
				t.Fatalf("pipelined: Claim ran %d times, QueueClaim %d", nr.claims, pn.queued)
			}
			if kind == "tx" && nr.claims == 0 {
				t.Fatal("tx: Claim never ran")
			}
		}
		if kind == "pipelined" {
			// A batch that mixes both kinds of attacher goes through a
			// transaction, and both are applied.
			other := &noteRows{}
			outs, errs := f.l.AttachMany(f.ctx, []Attached{
				{Transfers: fare("mix1", 1), Att: &Attachment{To: pn, Value: "mix1"}},
				{Transfers: fare("mix2", 1), Att: &Attachment{To: other, Value: "mix2"}},
				{Transfers: fare("mix3", 1), Att: &Attachment{To: pn, Value: "mix1"}},
			})
			for i, e := range errs {
				if e != nil {
					t.Fatalf("mixed %d: %v", i, e)
				}
			}
			if outs[0].Refused != nil || outs[1].Refused != nil || !errors.Is(outs[2].Refused, errTaken) || note("mix1") != "ok" || note("mix2") != "ok" {
				t.Fatalf("mixed: %+v", outs)
			}
		}
		if chk := f.check(); !chk.OK() {
			t.Fatalf("check: %+v", chk)
		}
	})
}

// sneakyRows commits the row from another connection right after its
// first Claim (as another process would), so that Write's INSERT fails
// with a unique violation.
type sneakyRows struct {
	*noteRows
	db   *store.DB
	done bool
}

func (s *sneakyRows) Claim(ctx context.Context, tx *sql.Tx, atts []*Attachment) error {
	if err := s.noteRows.Claim(ctx, tx, atts); err != nil {
		return err
	}
	if !s.done {
		s.done = true
		_, err := s.db.W.ExecContext(ctx, `INSERT INTO att_notes(name, outcome) VALUES ('late', 'other process')`)
		return err
	}
	return nil
}
