package scan

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/store"
)

// record is one row of scans.
type record struct {
	terminal, key string
	hash          []byte
	// legacyHash (not a column): the request's hash as an older version
	// stored it (requestHashes), nil if it cannot differ.
	legacyHash []byte
	cti        string // "" = NULL (replayKeys)
	// legacyCTI (not a column): the key a code issued before the
	// time-ordered keys began may have been stored under (replayKeys).
	legacyCTI     string
	provider      string
	scenario      string
	residentID    string
	state         string // pending | final
	decision      string
	reason        string
	charged, debt int64
	offline       bool
	plan          string
	answer        []byte
	at            int64

	// card is the card the scan was decided on (not a column): the ledger
	// batch that writes the row checks its status is still the same.
	card resident.Card
	// seq (not a column) is an offline record's sequence number, if
	// numbered: the batch that writes the row moves its terminal's mark
	// (terminal.Mark) in the same transaction.
	seq      int64
	numbered bool
}

const (
	statePending = "pending"
	stateFinal   = "final"
)

// insert outcomes
const (
	inserted = iota
	dupKey
	dupCTI
)

type wop struct {
	rec    *record
	update bool
	// results
	outcome  int
	existing *record
	err      error
	done     chan struct{}
}

// writer is the scans table's group commit: one goroutine takes whatever
// is queued (never waiting when idle) and writes it in one transaction on
// the writer connection, so on SQLite thousands of scans share one commit.
// Inserts use ON CONFLICT DO NOTHING: a conflict on (terminal, key) returns
// the existing row, a conflict on cti is a replayed code. Because the
// conflict is decided by the database's unique index, a code is good for
// one use across every process sharing the database.
type writer struct {
	db   *store.DB
	log  *slog.Logger
	in   chan *wop
	quit chan struct{}
	done chan struct{}
	once sync.Once
	max  int
	// pending async updates, for Flush
	wg sync.WaitGroup
}

func newWriter(db *store.DB, log *slog.Logger) *writer {
	w := &writer{db: db, log: log, in: make(chan *wop, 8192), quit: make(chan struct{}), done: make(chan struct{}), max: 1024}
	go w.run()
	return w
}

func (w *writer) close() {
	w.wg.Wait()
	w.once.Do(func() { close(w.quit) })
	<-w.done
}

func (w *writer) submit(ctx context.Context, o *wop) error {
	o.done = make(chan struct{})
	select {
	case w.in <- o:
	case <-w.quit:
		return apperr.Newf(apperr.Unavailable, "the node is shutting down", "节点正在关闭")
	case <-ctx.Done():
		return apperr.Wrap(apperr.Unavailable, ctx.Err())
	}
	select {
	case <-o.done:
		return o.err
	case <-ctx.Done():
		// The write may still happen; the caller's retry with the same key finds it.
		return apperr.Wrap(apperr.Unavailable, ctx.Err())
	}
}

// insert writes rec unless its key or cti is taken.
func (w *writer) insert(ctx context.Context, rec *record) (int, *record, error) {
	o := &wop{rec: rec}
	if err := w.submit(ctx, o); err != nil {
		return 0, nil, err
	}
	return o.outcome, o.existing, nil
}

// finalize records a scan's final outcome without waiting for the commit
// (a retry of a still-pending scan re-drives it idempotently).
func (w *writer) finalize(rec *record) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		o := &wop{rec: rec, update: true}
		if err := w.submit(ctx, o); err != nil {
			w.log.Warn("scan finalize failed; a retry or the sweep will settle it", "terminal", rec.terminal, "err", err)
		}
	}()
}

// finalizeSync is finalize waiting for the commit.
func (w *writer) finalizeSync(ctx context.Context, rec *record) error {
	return w.submit(ctx, &wop{rec: rec, update: true})
}

func (w *writer) run() {
	defer close(w.done)
	for {
		var first *wop
		select {
		case first = <-w.in:
		case <-w.quit:
			for {
				select {
				case o := <-w.in:
					o.err = apperr.Newf(apperr.Unavailable, "the node is shutting down", "节点正在关闭")
					close(o.done)
				default:
					return
				}
			}
		}
		batch := []*wop{first}
	fill:
		for len(batch) < w.max {
			select {
			case o := <-w.in:
				batch = append(batch, o)
			default:
				break fill
			}
		}
		var err error
		for attempt := 0; attempt < 3; attempt++ {
			err = w.apply(batch)
			if err == nil || !store.IsRetryable(err) {
				break
			}
			time.Sleep(time.Duration(attempt+1) * 5 * time.Millisecond)
		}
		for _, o := range batch {
			if err != nil {
				o.err = apperr.Wrap(apperr.Unavailable, err)
			}
			close(o.done)
		}
	}
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

const recordCols = `terminal_id, idem_key, req_hash, COALESCE(cti, ''), provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, offline, plan, answer, at`

func scanRecord(row interface{ Scan(...any) error }) (*record, error) {
	var r record
	var off int
	if err := row.Scan(&r.terminal, &r.key, &r.hash, &r.cti, &r.provider, &r.scenario, &r.residentID, &r.state, &r.decision, &r.reason,
		&r.charged, &r.debt, &off, &r.plan, &r.answer, &r.at); err != nil {
		return nil, err
	}
	r.offline = off != 0
	return &r, nil
}

func (w *writer) apply(batch []*wop) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return w.db.Tx(ctx, func(tx *sql.Tx) error {
		ins, err := tx.PrepareContext(ctx, `INSERT INTO scans(terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, offline, plan, answer, at)
			VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16) ON CONFLICT DO NOTHING`)
		if err != nil {
			return err
		}
		defer ins.Close()
		for _, o := range batch {
			r := o.rec
			o.outcome, o.existing = inserted, nil
			if o.update {
				_, err := tx.ExecContext(ctx, `UPDATE scans SET state = $3, decision = $4, reason = $5, charged_fen = $6, debt_fen = $7, answer = $8, plan = $9
					WHERE terminal_id = $1 AND idem_key = $2 AND state = 'pending'`,
					r.terminal, r.key, r.state, r.decision, r.reason, r.charged, r.debt, r.answer, r.plan)
				if err != nil {
					return err
				}
				continue
			}
			// A nonce stored under its old key (replayKeys) is taken too.
			taken := 0
			if r.legacyCTI != "" {
				if err := tx.QueryRowContext(ctx, legacyNonceSQL, r.legacyCTI).Scan(&taken); err != nil {
					return err
				}
			}
			if taken == 0 {
				res, err := ins.ExecContext(ctx, r.terminal, r.key, r.hash, nullable(r.cti), r.provider, r.scenario, r.residentID, r.state, r.decision, r.reason,
					r.charged, r.debt, b2i(r.offline), r.plan, r.answer, r.at)
				if err != nil {
					return err
				}
				if n, _ := res.RowsAffected(); n == 1 {
					continue
				}
			}
			ex, err := scanRecord(tx.QueryRowContext(ctx, `SELECT `+recordCols+` FROM scans WHERE terminal_id = $1 AND idem_key = $2`, r.terminal, r.key))
			switch {
			case err == nil:
				o.outcome, o.existing = dupKey, ex
			case errors.Is(err, sql.ErrNoRows):
				o.outcome = dupCTI
			default:
				return err
			}
		}
		return nil
	})
}

// lookup reads a scan by its idempotency key (nil if none).
func lookup(ctx context.Context, db *store.DB, terminal, key string) (*record, error) {
	r, err := scanRecord(db.R.QueryRowContext(ctx, `SELECT `+recordCols+` FROM scans WHERE terminal_id = $1 AND idem_key = $2`, terminal, key))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	return r, nil
}
