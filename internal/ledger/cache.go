package ledger

import "context"

// acctCache keeps, on SQLite only, the accounts' state as of the last
// batch this Ledger committed, so a batch reads only the accounts it has
// not seen. It is owned by the committer goroutine.
//
// It is correct because SQLite has one writer at a time and every batch
// runs under that write lock (BEGIN IMMEDIATE). At the start of each batch,
// under the lock, the cache is dropped unless all of these still hold:
//   - PRAGMA data_version on the writer connection is unchanged: no other
//     connection (another process on the same file) committed anything;
//   - the chain head's seq is the one our last batch wrote;
//   - no CloseAccount ran since (l.acctEpoch, bumped before its UPDATE);
//   - the last batch did not fail.
//
// Accounts created meanwhile are simply not cached yet (no negative
// entries). On PostgreSQL, where several node processes may write, there is
// no cache: each batch locks and re-reads its accounts.
type acctCache struct {
	valid       bool
	m           map[string]acct
	dataVersion int64
	epoch       int64
	seq         int64
}

// maxCached bounds the cache; past it, the cache is emptied and refills
// with the accounts in use.
const maxCached = 200_000

func (c *acctCache) drop() {
	c.valid = false
	c.m = nil
}

// validate checks the cache at the start of batch b (SQLite, under the
// write lock) against data_version, the chain head and the epoch.
func (b *batch) validateCache(ctx context.Context) error {
	c := &b.l.cache
	var dv int64
	if err := b.queryRow(ctx, `PRAGMA data_version`).Scan(&dv); err != nil {
		return err
	}
	b.epoch = b.l.acctEpoch.Load()
	if !c.valid || dv != c.dataVersion || b.epoch != c.epoch || b.seq != c.seq {
		c.m = make(map[string]acct, 1024)
		c.valid, c.dataVersion, c.epoch, c.seq = true, dv, b.epoch, b.seq
	}
	b.cached = true
	return nil
}

// remember stores the committed state of every account of batch b.
func (b *batch) remember() {
	c := &b.l.cache
	if !b.cached || !c.valid {
		return
	}
	if len(c.m)+len(b.accts) > maxCached {
		c.m = make(map[string]acct, 1024)
	}
	for id, a := range b.accts {
		v := *a
		v.dirty = false
		c.m[id] = v
	}
	c.seq, c.epoch = b.seq, b.epoch
}
