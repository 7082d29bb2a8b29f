package ledger

import (
	"context"
	"database/sql"
	"database/sql/driver"
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
// commits: never a later batch without an earlier one. Other processes'
// readers may see a batch before its fsync; callers never do.

// syncLoop syncs and answers committed batches one at a time. The queue
// is unbuffered: while a sync is in flight the committer may commit one
// more batch and then waits to hand it over, so requests arriving
// meanwhile gather into the batch after it instead of into many small
// batches that would all wait for the same next sync.
func (l *Ledger) syncLoop() {
	defer close(l.synced)
	for ops := range l.syncq {
		t0 := time.Now()
		sync := l.db.SyncWAL
		if l.opt.syncWAL != nil {
			sync = l.opt.syncWAL
		}
		err := sync()
		l.phases[phaseSync].Add(int64(time.Since(t0)))
		if err != nil {
			// The batch is committed but may not be on disk. Its callers
			// are told to retry; a retry with the same key finds the
			// committed transfer and answers it.
			l.failed.Add(1)
			l.log.Error("ledger: syncing the write-ahead log failed; callers told to retry", "err", err)
		}
		for _, o := range ops {
			if err != nil {
				o.res, o.n = nil, 0
				o.err = apperr.Wrap(apperr.Unavailable, err)
			}
			close(o.done)
		}
	}
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
