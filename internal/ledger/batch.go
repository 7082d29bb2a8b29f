package ledger

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
)

func isPgConflict(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// acct is an account row loaded (and locked) for one batch.
type acct struct {
	id, kind, currency, status string
	floor                      int64
	unbounded                  bool
	bal, pending               int64
	last                       int64 // the last moving entry (last_seq; see chain)
	dirty                      bool
}

type holdState struct {
	id, amount, expiresAt, resolvedSeq int64
	debit, credit, status              string
	isNew, dirty, counted              bool
}

// batch is the in-memory state of one database transaction. Only the
// accounts it committed outlive it, in the SQLite account cache (cache.go).
type batch struct {
	l        *Ledger
	tx       *sql.Tx
	pg       bool
	now      int64
	seq      int64
	prevHash []byte
	accts    map[string]*acct
	holds    map[int64]*holdState
	expiring []*holdState // for opExpire
	origs    map[int64]*entry
	reversed map[int64]int64
	existing map[string]*entry
	applied  map[string]*entry
	entries  []*entry
	decides  []func() error // PipelineAttachers' decisions (queueClaims)

	cached bool  // accounts come from l.cache where present (SQLite)
	epoch  int64 // l.acctEpoch when the batch began

	undoOn   bool
	undoAcct map[*acct]acct
	undoKeys []string
}

const entryCols = `seq, COALESCE(idem_key, ''), req_hash, type, kind, debit, credit, amount, currency, ref, link, debit_after, credit_after, memo, meta, at, expires_at, hash, debit_prev, credit_prev`

func scanEntry(rows interface{ Scan(...any) error }) (*entry, error) {
	e := &entry{}
	err := rows.Scan(&e.seq, &e.key, &e.reqHash, &e.typ, &e.kind, &e.debit, &e.credit, &e.amount, &e.currency,
		&e.ref, &e.link, &e.debitAfter, &e.creditAfter, &e.memo, &e.meta, &e.at, &e.expiresAt, &e.hash, &e.debitPrev, &e.creditPrev)
	return e, err
}

// applyBatch applies *opsp in one transaction. On PostgreSQL the batch
// may grow while it waits for another process's chain-head lock
// (pgbatch.go): *opsp then holds the requests that joined it.
func (l *Ledger) applyBatch(ctx context.Context, opsp *[]*op) (err error) {
	ops := *opsp
	for _, o := range ops {
		o.res, o.n, o.err = nil, 0, nil
	}
	if l.db.Dialect == store.Postgres {
		return l.applyBatchPG(ctx, opsp) // pgbatch.go
	}
	t0 := time.Now()
	var tx *sql.Tx
	if l.deferSync {
		// The batch commits with synchronous=NORMAL on the reserved writer
		// connection (no fsync in COMMIT); its callers are answered only
		// after the syncer's SyncWAL (sync.go). The connection goes back
		// to the pool in FULL mode, so other writers keep their fsync.
		conn, err := l.db.W.Conn(ctx)
		if err != nil {
			return err
		}
		defer l.releaseConn(conn)
		if _, err := conn.ExecContext(ctx, "PRAGMA synchronous=NORMAL"); err != nil {
			return err
		}
		tx, err = conn.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
	} else {
		tx, err = l.db.W.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
	}
	defer func() {
		if err != nil {
			tx.Rollback()
			l.cache.drop()
		}
	}()
	b := l.newBatch(l.opt.Now().UnixMilli())
	b.tx = tx
	if err := b.load(ctx, ops); err != nil {
		return err
	}
	if err := b.claimAttached(ctx, ops); err != nil {
		return err
	}
	t0 = l.phase(phaseLoad, t0)
	b.applyOps(ops)
	t0 = l.phase(phaseApply, t0)
	if err := b.write(ctx); err != nil {
		return err
	}
	if err := b.writeAttached(ctx, ops); err != nil {
		return err
	}
	t0 = l.phase(phaseWrite, t0)
	if l.opt.beforeCommit != nil {
		if err := l.opt.beforeCommit(ctx, tx, len(b.entries)); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	l.phase(phaseCommit, t0)
	b.remember()
	l.batches.Add(1)
	l.entries.Add(int64(len(b.entries)))
	return nil
}

// newBatch is an empty batch as of now (Unix ms).
func (l *Ledger) newBatch(now int64) *batch {
	return &batch{l: l, pg: l.db.Dialect == store.Postgres, now: now,
		accts: map[string]*acct{}, holds: map[int64]*holdState{}, origs: map[int64]*entry{},
		reversed: map[int64]int64{}, existing: map[string]*entry{}, applied: map[string]*entry{}}
}

// applyOps applies the batch's requests in memory, in queue order.
func (b *batch) applyOps(ops []*op) {
	for _, o := range ops {
		if refused(o) {
			continue
		}
		switch o.kind {
		case opExpire:
			for _, h := range b.expiring {
				if h.status == HoldPending {
					b.expire(h)
				}
				// Every hold listed was pending when loaded; it has now
				// expired here (maybe lazily, just before).
				if h.status == HoldExpired && !h.counted {
					h.counted = true
					o.n++
				}
			}
		case opItems:
			o.res = make([]itemResult, len(o.items))
			for i := range o.items {
				o.res[i] = b.apply(&o.items[i], 0)
			}
		case opLinked:
			b.applyLinked(o)
		}
	}
}

// batchRefs is what a batch must read before it applies: its idempotency
// keys (once each), the holds it posts or voids, the transfers it reverses,
// the accounts it moves, and whether it expires holds.
type batchRefs struct {
	keys             []string
	holdIDs, origIDs []int64
	accounts         map[string]bool
	expire           bool
}

// collectRefs gathers a batch's references (shared by both backends).
func collectRefs(ops []*op) batchRefs {
	r := batchRefs{accounts: map[string]bool{}}
	seenKey := map[string]bool{}
	for _, o := range ops {
		if o.kind == opExpire {
			r.expire = true
		}
		for i := range o.items {
			it := &o.items[i]
			if !seenKey[it.key] {
				seenKey[it.key] = true
				r.keys = append(r.keys, it.key)
			}
			switch it.typ {
			case TypeTransfer, TypeHold:
				r.accounts[it.debit] = true
				r.accounts[it.credit] = true
			case TypePost, TypeVoid:
				r.holdIDs = append(r.holdIDs, it.ref)
			case TypeReversal:
				r.origIDs = append(r.origIDs, it.ref)
			}
		}
	}
	return r
}

func anys[T any](xs []T) []any {
	out := make([]any, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

// load reads, under lock, everything the batch may touch: the chain head,
// the entries of known idempotency keys, referenced holds and transfers,
// and the accounts (in id order).
func (b *batch) load(ctx context.Context, ops []*op) error {
	forUpdate := ""
	if b.pg {
		forUpdate = " FOR UPDATE"
	}
	if err := b.queryRow(ctx, chainHead+forUpdate).Scan(&b.seq, &b.prevHash); err != nil {
		return err
	}
	if !b.pg {
		if err := b.validateCache(ctx); err != nil {
			return err
		}
	}
	refs := collectRefs(ops)
	keys, holdIDs, origIDs := anys(refs.keys), anys(refs.holdIDs), anys(refs.origIDs)
	accounts, expire := refs.accounts, refs.expire
	if len(keys) > 0 {
		err := b.inQuery(ctx, inQueries[0][0], inQueries[0][1], keys, func(r *sql.Rows) error {
			e, err := scanEntry(r)
			b.existing[e.key] = e
			return err
		})
		if err != nil {
			return err
		}
	}
	scanHold := func(r interface{ Scan(...any) error }) (*holdState, error) {
		h := &holdState{}
		err := r.Scan(&h.id, &h.debit, &h.credit, &h.amount, &h.expiresAt, &h.status, &h.resolvedSeq)
		return h, err
	}
	if len(holdIDs) > 0 {
		err := b.inQuery(ctx, inQueries[1][0], inQueries[1][1], holdIDs, func(r *sql.Rows) error {
			h, err := scanHold(r)
			b.holds[h.id] = h
			accounts[h.debit], accounts[h.credit] = true, true
			return err
		})
		if err != nil {
			return err
		}
	}
	if expire {
		rows, err := b.query(ctx, holdCols+`WHERE status = 'pending' AND expires_at <= $1 ORDER BY expires_at LIMIT 1000`, b.now)
		if err != nil {
			return err
		}
		for rows.Next() {
			h, err := scanHold(rows)
			if err != nil {
				rows.Close()
				return err
			}
			if old := b.holds[h.id]; old != nil {
				h = old
			} else {
				b.holds[h.id] = h
			}
			b.expiring = append(b.expiring, h)
			accounts[h.debit] = true
		}
		if err := rows.Close(); err != nil {
			return err
		}
	}
	if len(origIDs) > 0 {
		err := b.inQuery(ctx, inQueries[2][0], inQueries[2][1], origIDs, func(r *sql.Rows) error {
			e, err := scanEntry(r)
			b.origs[e.seq] = e
			accounts[e.debit], accounts[e.credit] = true, true
			return err
		})
		if err != nil {
			return err
		}
		err = b.inQuery(ctx, inQueries[3][0], inQueries[3][1], origIDs, func(r *sql.Rows) error {
			var ref, total int64
			err := r.Scan(&ref, &total)
			b.reversed[ref] = total
			return err
		})
		if err != nil {
			return err
		}
	}
	ids := make([]string, 0, len(accounts))
	var withPending []any
	for id := range accounts {
		if b.cached {
			if v, ok := b.l.cache.m[id]; ok {
				a := v
				b.accts[id] = &a
				if a.pending > 0 {
					withPending = append(withPending, id)
				}
				continue
			}
		}
		ids = append(ids, id)
	}
	sort.Strings(ids) // lock order: by id, so concurrent processes never deadlock
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	if len(args) > 0 {
		q := inQueries[4]
		if b.pg {
			q = inQueries[5]
		}
		err := b.inQuery(ctx, q[0], q[1], args, func(r *sql.Rows) error {
			a := &acct{}
			var unb int
			err := r.Scan(&a.id, &a.kind, &a.currency, &a.floor, &unb, &a.status, &a.bal, &a.pending, &a.last)
			a.unbounded = unb != 0
			b.accts[a.id] = a
			if a.pending > 0 {
				withPending = append(withPending, a.id)
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	// Lazy expiry: holds past their timeout on the accounts this batch
	// touches are voided first, so they stop reserving funds.
	if len(withPending) > 0 {
		var late []*holdState
		sort.Slice(withPending, func(i, j int) bool { return withPending[i].(string) < withPending[j].(string) })
		err := b.inQuery(ctx, inQueries[6][0], inQueries[6][1], withPending, func(r *sql.Rows) error {
			h, err := scanHold(r)
			if err != nil || h.expiresAt > b.now {
				return err
			}
			if old := b.holds[h.id]; old != nil {
				h = old
			} else {
				b.holds[h.id] = h
			}
			late = append(late, h)
			return err
		})
		if err != nil {
			return err
		}
		for _, h := range late {
			if h.status == HoldPending {
				b.expire(h)
			}
		}
	}
	return nil
}

// ---- applying items ----

func (b *batch) touch(a *acct) {
	if b.undoOn {
		if _, ok := b.undoAcct[a]; !ok {
			b.undoAcct[a] = *a
		}
	}
	a.dirty = true
}

func (b *batch) newEntry(typ, key string, hash []byte, link int64) *entry {
	b.seq++
	e := &entry{seq: b.seq, key: key, reqHash: hash, typ: typ, link: link, at: b.now}
	b.entries = append(b.entries, e)
	if key != "" {
		b.applied[key] = e
		if b.undoOn {
			b.undoKeys = append(b.undoKeys, key)
		}
	}
	return e
}

func conflictErr() error { return apperr.New(apperr.IdempotencyConflict) }

func replay(e *entry) itemResult {
	t := e.transfer()
	t.Replayed = true
	return itemResult{t: t}
}

func (b *batch) prior(key string) *entry {
	if e := b.applied[key]; e != nil {
		return e
	}
	return b.existing[key]
}

func unknownAccount(id string) error {
	return apperr.Newf(apperr.UnknownAccount, "unknown account "+strconv.Quote(id), "账户 "+strconv.Quote(id)+" 不存在")
}

// pair checks the two accounts of a movement.
func (b *batch) pair(debit, credit string) (*acct, *acct, error) {
	d, c := b.accts[debit], b.accts[credit]
	if d == nil {
		return nil, nil, unknownAccount(debit)
	}
	if c == nil {
		return nil, nil, unknownAccount(credit)
	}
	if d.status != StatusOpen {
		return nil, nil, apperr.Newf(apperr.AccountClosed, "account "+strconv.Quote(debit)+" is closed", "账户 "+strconv.Quote(debit)+" 已关闭")
	}
	if c.status != StatusOpen {
		return nil, nil, apperr.Newf(apperr.AccountClosed, "account "+strconv.Quote(credit)+" is closed", "账户 "+strconv.Quote(credit)+" 已关闭")
	}
	if d.currency != c.currency {
		return nil, nil, apperr.New(apperr.CurrencyMismatch)
	}
	return d, c, nil
}

// move computes the balances after debiting d and crediting c by amount,
// with pendingDelta added to d's pending holds, checking overflow and d's floor.
func move(d, c *acct, amount, pendingDelta int64) (nd, nc, np int64, err error) {
	var ok1, ok2, ok3 bool
	nd, ok1 = addOK(d.bal, -amount)
	nc, ok2 = addOK(c.bal, amount)
	np, ok3 = addOK(d.pending, pendingDelta)
	if !ok1 || !ok2 || !ok3 {
		return 0, 0, 0, apperr.New(apperr.Overflow)
	}
	// Releasing a hold (void, or post of at most the amount held) never
	// lowers the available balance, so only new debits and holds are checked.
	if !d.unbounded && pendingDelta >= 0 {
		avail, ok := addOK(nd, -np)
		if !ok || avail < d.floor {
			return 0, 0, 0, apperr.New(apperr.InsufficientFunds)
		}
	}
	return nd, nc, np, nil
}

func (b *batch) apply(it *item, link int64) itemResult {
	if e := b.prior(it.key); e != nil {
		if !bytes.Equal(e.reqHash, it.hash) {
			return itemResult{err: conflictErr()}
		}
		return replay(e)
	}
	switch it.typ {
	case TypeTransfer, TypeHold:
		d, c, err := b.pair(it.debit, it.credit)
		if err != nil {
			return itemResult{err: err}
		}
		var nd, nc, np int64
		if it.typ == TypeTransfer {
			nd, nc, np, err = move(d, c, it.amount, 0)
		} else {
			nd, nc, np, err = move(d, c, 0, it.amount)
		}
		if err != nil {
			return itemResult{err: err}
		}
		b.touch(d)
		b.touch(c)
		d.bal, c.bal, d.pending = nd, nc, np
		e := b.newEntry(it.typ, it.key, it.hash, link)
		e.kind, e.debit, e.credit, e.amount, e.currency = it.kind, it.debit, it.credit, it.amount, d.currency
		e.memo, e.meta = it.memo, it.meta
		e.debitAfter, e.creditAfter = nd, nc
		if it.typ == TypeTransfer {
			chain(e, d, c)
		}
		if it.typ == TypeHold {
			e.expiresAt = b.now + it.timeout.Milliseconds()
			b.holds[e.seq] = &holdState{id: e.seq, debit: d.id, credit: c.id, amount: it.amount, expiresAt: e.expiresAt,
				status: HoldPending, isNew: true, dirty: true}
		}
		return itemResult{t: e.transferMeta(it.metaMap)}
	case TypePost, TypeVoid:
		h := b.holds[it.ref]
		if h == nil {
			return itemResult{err: apperr.Newf(apperr.NotFound, "no such hold", "预授权不存在")}
		}
		if h.status == HoldPending && h.expiresAt <= b.now {
			b.expire(h)
		}
		if h.status != HoldPending {
			return itemResult{err: apperr.Newf(apperr.HoldNotPending, "the hold is already "+h.status, "预授权已处于状态："+h.status)}
		}
		d, c := b.accts[h.debit], b.accts[h.credit]
		if d == nil || c == nil {
			return itemResult{err: unknownAccount(h.credit)}
		}
		amount := it.amount
		if it.typ == TypeVoid {
			amount = 0
		} else {
			if amount > h.amount {
				return itemResult{err: apperr.Newf(apperr.InvalidAmount, "the amount posted exceeds the amount held", "结算金额超过预授权金额")}
			}
			if c.status != StatusOpen {
				return itemResult{err: apperr.Newf(apperr.AccountClosed, "account "+strconv.Quote(c.id)+" is closed", "账户 "+strconv.Quote(c.id)+" 已关闭")}
			}
		}
		nd, nc, np, err := move(d, c, amount, -h.amount)
		if err != nil {
			return itemResult{err: err}
		}
		b.touch(d)
		b.touch(c)
		d.bal, c.bal, d.pending = nd, nc, np
		e := b.newEntry(it.typ, it.key, it.hash, link)
		e.debit, e.credit, e.currency, e.ref = h.debit, h.credit, d.currency, h.id
		e.amount = amount
		if it.typ == TypeVoid {
			e.amount = h.amount
			h.status = HoldVoided
		} else {
			e.debitAfter, e.creditAfter = nd, nc
			h.status = HoldPosted
			chain(e, d, c)
		}
		h.resolvedSeq, h.dirty = e.seq, true
		return itemResult{t: e.transfer()}
	case TypeReversal:
		o := b.origs[it.ref]
		if o == nil {
			return itemResult{err: apperr.Newf(apperr.NotFound, "no such transfer", "交易不存在")}
		}
		if !moves(o.typ) {
			return itemResult{err: invalid("transfer_id", "only transfers, posted holds and reversals can be reversed", "只能冲正转账、已结算的预授权或冲正交易")}
		}
		total, ok := addOK(b.reversed[o.seq], it.amount)
		if !ok || total > o.amount {
			return itemResult{err: apperr.New(apperr.ReversalExceeds)}
		}
		d, c, err := b.pair(o.credit, o.debit)
		if err != nil {
			return itemResult{err: err}
		}
		nd, nc, np, err := move(d, c, it.amount, 0)
		if err != nil {
			return itemResult{err: err}
		}
		b.touch(d)
		b.touch(c)
		d.bal, c.bal, d.pending = nd, nc, np
		b.reversed[o.seq] = total
		e := b.newEntry(TypeReversal, it.key, it.hash, link)
		e.kind, e.debit, e.credit, e.amount, e.currency, e.ref = TypeReversal, d.id, c.id, it.amount, d.currency, o.seq
		e.debitAfter, e.creditAfter = nd, nc
		chain(e, d, c)
		return itemResult{t: e.transfer()}
	}
	return itemResult{err: apperr.New(apperr.Internal)}
}

// chain links moving entry e (debiting d, crediting c) into both
// accounts' chains of moving entries: a resident's statement follows them
// (the journal has no index of residents' accounts; migration 0031).
func chain(e *entry, d, c *acct) {
	e.debitPrev, e.creditPrev = d.last, c.last
	d.last, c.last = e.seq, e.seq
}

// expire voids a hold whose timeout passed (a system event without key).
func (b *batch) expire(h *holdState) {
	d := b.accts[h.debit]
	if d == nil {
		return // cannot happen: the debit account is always loaded
	}
	b.touch(d)
	d.pending -= h.amount
	e := b.newEntry(TypeExpire, "", nil, 0)
	e.debit, e.credit, e.amount, e.currency, e.ref = h.debit, h.credit, h.amount, d.currency, h.id
	h.status, h.resolvedSeq, h.dirty = HoldExpired, e.seq, true
}

func (b *batch) applyLinked(o *op) {
	n := len(o.items)
	o.res = make([]itemResult, n)
	found, conflict := 0, -1
	var link int64 = -1
	for i := range o.items {
		e := b.prior(o.items[i].key)
		if e == nil {
			continue
		}
		found++
		if conflict < 0 && (!bytes.Equal(e.reqHash, o.items[i].hash) || (link >= 0 && e.link != link)) {
			conflict = i
		}
		link = e.link
	}
	if found > 0 {
		if found == n && conflict < 0 {
			for i := range o.items {
				o.res[i] = replay(b.prior(o.items[i].key))
			}
			return
		}
		if conflict < 0 {
			conflict = 0
		}
		for i := range o.res {
			o.res[i].err = linkedErr(conflict, conflictErr())
		}
		return
	}
	// All or nothing: record what we change, undo it all on the first failure.
	b.undoOn, b.undoAcct, b.undoKeys = true, map[*acct]acct{}, nil
	mark, seq := len(b.entries), b.seq
	first := b.seq + 1
	for i := range o.items {
		r := b.apply(&o.items[i], first)
		if r.err != nil {
			for a, old := range b.undoAcct {
				*a = old
			}
			for _, k := range b.undoKeys {
				delete(b.applied, k)
			}
			b.entries, b.seq = b.entries[:mark], seq
			err := linkedErr(i, r.err)
			for j := range o.res {
				o.res[j] = itemResult{err: err}
			}
			b.undoOn = false
			return
		}
		o.res[i] = r
	}
	b.undoOn = false
}

// ---- writing ----

func (b *batch) write(ctx context.Context) error {
	if len(b.entries) == 0 {
		// Nothing applied (all refused or replayed): nothing to write.
		return nil
	}
	prev := b.prevHash
	for _, e := range b.entries {
		e.hash = e.chainHash(prev)
		prev = e.hash
	}
	for rest := b.entries; len(rest) > 0; {
		n := floorClass(len(rest))
		args := make([]any, 0, n*journalCols)
		for _, e := range rest[:n] {
			var key any
			if e.key != "" {
				key = e.key
			}
			var rh any
			if e.reqHash != nil {
				rh = e.reqHash
			}
			args = append(args, e.seq, key, rh, e.typ, e.kind, e.debit, e.credit, e.amount, e.currency, e.ref, e.link,
				e.debitAfter, e.creditAfter, e.memo, e.meta, e.at, e.expiresAt, e.hash, e.debitPrev, e.creditPrev)
		}
		if _, err := b.exec(ctx, journalInsertSQL(b.pg, n), args...); err != nil {
			return err
		}
		rest = rest[n:]
	}
	var newHolds []any
	for _, h := range b.holds {
		if !h.dirty {
			continue
		}
		if h.isNew {
			newHolds = append(newHolds, h.id, h.debit, h.credit, h.amount, h.expiresAt, h.status, h.resolvedSeq)
			continue
		}
		if _, err := b.exec(ctx, `UPDATE ledger_holds SET status = $1, resolved_seq = $2 WHERE id = $3 AND status = 'pending'`,
			h.status, h.resolvedSeq, h.id); err != nil {
			return err
		}
	}
	for len(newHolds) > 0 {
		n := floorClass(len(newHolds) / 7)
		if _, err := b.exec(ctx, holdInsertSQL(b.pg, n), newHolds[:n*7]...); err != nil {
			return err
		}
		newHolds = newHolds[n*7:]
	}
	// One UPDATE per batch for all touched accounts, however hot.
	var dirty []*acct
	for _, a := range b.accts {
		if a.dirty {
			dirty = append(dirty, a)
		}
	}
	sort.Slice(dirty, func(i, j int) bool { return dirty[i].id < dirty[j].id })
	for len(dirty) > 0 {
		n := floorClass(len(dirty))
		args := make([]any, 0, n*4)
		for _, a := range dirty[:n] {
			args = append(args, a.id, a.bal, a.pending, a.last)
		}
		res, err := b.exec(ctx, acctUpdateSQL(b.pg, n), args...)
		if err != nil {
			return err
		}
		if got, err := res.RowsAffected(); err == nil && got != int64(n) {
			return fmt.Errorf("ledger: updated %d account rows, want %d", got, n)
		}
		dirty = dirty[n:]
	}
	_, err := b.exec(ctx, chainSet, b.seq, prev)
	return err
}

// Phases of a batch, timed for benchmarks (docs/benchmarks.md).
const (
	phaseLoad   = iota // BEGIN and reads
	phaseApply         // applying items in memory
	phaseWrite         // hashing and writing rows
	phaseCommit        // COMMIT (WAL append, and fsync unless deferred)
	phaseSync          // SQLite: the syncer's fsync of the WAL (sync.go), off the committer
	nPhases
)

func (l *Ledger) phase(p int, t0 time.Time) time.Time {
	t := time.Now()
	l.phases[p].Add(int64(t.Sub(t0)))
	return t
}
