package federation

import (
	"context"
	"database/sql"
	"sync"

	"github.com/yikatong/yikatong/internal/store"
)

// writer group-commits the federation's row writes: concurrent
// authorisations and the messages of a batch share one transaction (one
// fsync) instead of one commit each. If a shared transaction fails, its
// statements are retried one by one so that one bad statement fails only
// its own caller.
type writer struct {
	db    *store.DB
	ch    chan *wop
	stop  chan struct{}
	wg    sync.WaitGroup
	stmts map[string]*sql.Stmt // prepared on the writer pool, used only by loop
}

type wop struct {
	q    string
	args []any
	n    int64 // rows affected, set before done
	done chan error
}

const maxGroup = 1024

func newWriter(db *store.DB) *writer {
	w := &writer{db: db, ch: make(chan *wop, maxGroup), stop: make(chan struct{}), stmts: map[string]*sql.Stmt{}}
	w.wg.Add(1)
	go w.loop()
	return w
}

func (w *writer) exec(ctx context.Context, q string, args ...any) error {
	_, err := w.execN(ctx, q, args...)
	return err
}

// execN is exec returning the number of rows the statement affected (a
// conditional UPDATE or an INSERT … ON CONFLICT DO NOTHING tells whether it
// took the row).
func (w *writer) execN(ctx context.Context, q string, args ...any) (int64, error) {
	op := &wop{q: q, args: args, done: make(chan error, 1)}
	select {
	case w.ch <- op:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-w.stop:
		r, err := w.db.W.ExecContext(ctx, q, args...)
		if err != nil {
			return 0, err
		}
		return r.RowsAffected()
	}
	select {
	case err := <-op.done:
		return op.n, err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// execAsync queues a statement without waiting for its commit. Statements
// run in queue order, so a later exec of the same row sees it.
func (w *writer) execAsync(q string, args ...any) {
	op := &wop{q: q, args: args, done: make(chan error, 1)}
	select {
	case w.ch <- op:
	case <-w.stop:
		w.db.W.ExecContext(context.Background(), q, args...)
	}
}

func (w *writer) close() {
	close(w.stop)
	w.wg.Wait()
	for _, st := range w.stmts {
		st.Close()
	}
}

// stmt returns q prepared once (statement parsing was a tenth of the
// authorisation path's CPU).
func (w *writer) stmt(ctx context.Context, q string) (*sql.Stmt, error) {
	if st, ok := w.stmts[q]; ok {
		return st, nil
	}
	st, err := w.db.W.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	w.stmts[q] = st
	return st, nil
}

func (w *writer) loop() {
	defer w.wg.Done()
	for {
		var first *wop
		select {
		case first = <-w.ch:
		case <-w.stop:
			// Finish what was queued before the stop.
			for {
				select {
				case op := <-w.ch:
					w.run([]*wop{op})
				default:
					return
				}
			}
		}
		ops := []*wop{first}
	drain:
		for len(ops) < maxGroup {
			select {
			case op := <-w.ch:
				ops = append(ops, op)
			default:
				break drain
			}
		}
		w.run(ops)
	}
}

func (w *writer) run(ops []*wop) {
	ctx := context.Background()
	// Prepare before the transaction: on SQLite the writer pool is one
	// connection, which the transaction holds.
	sts := make([]*sql.Stmt, len(ops))
	var err error
	for i, op := range ops {
		if sts[i], err = w.stmt(ctx, op.q); err != nil {
			break
		}
	}
	if err == nil {
		err = w.db.Tx(ctx, func(tx *sql.Tx) error {
			for i, op := range ops {
				r, err := tx.StmtContext(ctx, sts[i]).ExecContext(ctx, op.args...)
				if err != nil {
					return err
				}
				if op.n, err = r.RowsAffected(); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err == nil {
		for _, op := range ops {
			op.done <- nil
		}
		return
	}
	if len(ops) == 1 {
		ops[0].done <- err
		return
	}
	for _, op := range ops {
		r, err := w.db.W.ExecContext(ctx, op.q, op.args...)
		if err == nil {
			op.n, err = r.RowsAffected()
		}
		op.done <- err
	}
}
