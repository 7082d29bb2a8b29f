package ledger

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Deferred fsync (SQLite): the committer commits a batch without waiting
// for its fsync and goes on with the next batch while the syncer makes the
// write-ahead log durable. A batch's callers are answered only after a
// SyncWAL that began after their COMMIT returned, so an answered transfer
// survives a power cut exactly as with synchronous=FULL; what changes is
// that batch N+1's reads, apply and row writes overlap batch N's fsync.
//
// Order is kept: the syncer answers batches in commit order, and a batch
// that reads an earlier batch's rows (a replayed key) is answered after
// the earlier batch's sync. SQLite recovers a write-ahead log up to the
// first frame whose checksum fails, so a crash keeps a prefix of the
// commits: never a later batch without an earlier one. Other readers (an
// idempotent replay of a scan or of a clearing message read through the
// reader pool) may see a batch before its sync: they call Durable before
// answering from what they read.
//
// A failed fsync is fatal, as in PostgreSQL: the kernel may have dropped
// the unwritten pages and marked them clean, so a later fsync could
// succeed without them. The ledger stops: that batch's callers and every
// later request get "unavailable", and the node must be restarted, which
// recovers the database from what is really on disk.

// syncLoop syncs and answers committed batches one at a time. The queue
// is unbuffered: while a sync is in flight the committer may commit one
// more batch and then waits to hand it over, so requests arriving
// meanwhile gather into the batch after it instead of into many small
// batches that would all wait for the same next sync.
func (l *Ledger) syncLoop() {
	defer close(l.synced)
	for ops := range l.syncq {
		err := l.broken()
		if err == nil {
			t0 := time.Now()
			sync := l.db.SyncWAL
			if l.opt.syncWAL != nil {
				sync = l.opt.syncWAL
			}
			if serr := sync(); serr != nil {
				l.fail(serr)
				err = l.broken()
			}
			l.phases[phaseSync].Add(int64(time.Since(t0)))
		}
		for _, o := range ops {
			if err != nil {
				o.res, o.n = nil, 0
				o.err = err
			}
			close(o.done)
		}
	}
}

// fail stops the ledger after a failed fsync (see above).
func (l *Ledger) fail(cause error) {
	if l.stopped.CompareAndSwap(nil, &cause) {
		l.failed.Add(1)
		l.log.Error("ledger: syncing the write-ahead log failed; the ledger refuses all writes until the node is restarted", "err", cause)
	}
}

// Broken is the error every write gets once a failed fsync has stopped
// the ledger (nil while it runs): for the node's health check.
func (l *Ledger) Broken() error {
	if l == nil {
		return nil
	}
	return l.broken()
}

// broken is the error every request gets once the ledger has stopped.
func (l *Ledger) broken() error {
	c := l.stopped.Load()
	if c == nil {
		return nil
	}
	return apperr.Wrap(apperr.Unavailable, fmt.Errorf("the ledger stopped after a failed disk sync (restart the node): %w", *c))
}

// Durable makes everything this node has committed durable before a
// caller answers from rows it has read: on SQLite with the deferred sync
// it syncs the write-ahead log itself (a replay is rare; this costs one
// fsync, and it also covers another process's commits to the same file);
// otherwise commits are durable already and it returns at once.
func (l *Ledger) Durable(ctx context.Context) error {
	if l == nil || !l.deferSync {
		return nil
	}
	if err := l.broken(); err != nil {
		return err
	}
	if err := l.db.SyncWAL(); err != nil {
		l.fail(err)
		return l.broken()
	}
	return ctx.Err()
}

// releaseConn returns the batch's reserved writer connection to the pool
// with synchronous=FULL restored; a connection that cannot be restored is
// discarded rather than left to commit without fsync for other writers.
func (l *Ledger) releaseConn(c *sql.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.ExecContext(ctx, "PRAGMA synchronous=FULL"); err != nil {
		l.log.Warn("ledger: restoring synchronous=FULL failed; connection discarded", "err", err)
		_ = c.Raw(func(any) error { return driver.ErrBadConn })
	}
	_ = c.Close()
}
