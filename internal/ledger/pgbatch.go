package ledger

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// The PostgreSQL execution of a batch.
//
// On PostgreSQL a batch's cost is its round trips: each one is a syscall
// pair and a wake-up in the node and in the backend, and the chain-head
// lock is held across all of them, so they also bound how many batches
// per second all node processes together can commit. Statement by
// statement (BEGIN, chain head, keys, accounts, journal, accounts, chain,
// COMMIT) a batch took about eight. Here it takes two, pipelined on the
// pgx connection under database/sql (sql.Conn.Raw):
//
//  1. load: BEGIN; the chain-head row FOR UPDATE NOWAIT; the journal entries of
//     the batch's keys; the accounts FOR UPDATE in id order; the expired
//     pending holds on them. The server runs a pipeline's statements in
//     order, so the lock order (chain head, then accounts by id) is the
//     one every process uses, and each statement sees what was committed
//     before the chain head was locked. A batch that posts, voids or
//     expires holds, or reverses transfers, learns some of its accounts
//     only from those rows: it reads them in the first pipeline and its
//     accounts in a second one. If another process holds the chain
//     head, NOWAIT fails the pipeline: the batch then begins again, waits
//     for the lock alone (reading the head as it takes it), takes in the
//     requests queued meanwhile (absorb) and loads the rest (linger.go).
//  2. write and commit: one INSERT for the journal, one each for new and
//     resolved holds, one statement that updates every touched account and
//     the chain head, and COMMIT. If the account UPDATE does not match
//     exactly the accounts the batch locked (it cannot, short of a bug),
//     the statement divides by zero, which aborts the transaction before
//     its COMMIT.
//
// Every statement's text is fixed whatever the batch size (rows are bound
// as arrays: = ANY($1), unnest), so pgx prepares each once per connection.
//
// A batch's attachments (attach.go) ride in the same two pipelines when
// their attachers are PipelineAttachers (the scans table's is): their
// reads after the loads, their writes before COMMIT. Any other attacher,
// or the test hook beforeCommit, needs a *sql.Tx: the batch begins one on
// the same connection (one more round trip), runs Claim and Write on it
// (one round trip per statement) and commits it with tx.Commit (another),
// still loading and writing the ledger's rows in the two pipelines.

const (
	pgChainLock       = chainHead + ` FOR UPDATE`
	pgChainLockNowait = chainHead + ` FOR UPDATE NOWAIT`
	pgKeys            = `SELECT ` + entryCols + ` FROM ledger_journal WHERE idem_key = ANY($1::text[])`
	pgHoldsByID       = holdCols + `WHERE id = ANY($1::bigint[])`
	pgExpiring        = holdCols + `WHERE status = 'pending' AND expires_at <= $1 ORDER BY expires_at LIMIT 1000`
	pgOrigs           = `SELECT ` + entryCols + ` FROM ledger_journal WHERE seq = ANY($1::bigint[])`
	// ref <> 0 lets the planner use the partial index ledger_journal_ref.
	pgReversed = `SELECT ref, CAST(SUM(amount) AS BIGINT) FROM ledger_journal WHERE type = 'reversal' AND ref <> 0 AND ref = ANY($1::bigint[]) GROUP BY ref`
	pgAccounts = `SELECT id, kind, currency, floor_fen, unbounded, status, balance_fen, pending_fen, last_seq FROM ledger_accounts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE`
	pgLate     = holdCols + `WHERE status = 'pending' AND debit = ANY($1::text[]) AND expires_at <= $2 ORDER BY id`

	pgJournalInsert = `INSERT INTO ledger_journal(seq, idem_key, req_hash, type, kind, debit, credit, amount, currency, ref, link, debit_after, credit_after, memo, meta, at, expires_at, hash, debit_prev, credit_prev)
SELECT seq, NULLIF(k, ''), NULLIF(rh, ''::bytea), typ, kind, debit, credit, amount, currency, ref, link, da, ca, memo, meta, at, exp, hash, dp, cp
FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::text[], $15::text[], $16::bigint[], $17::bigint[], $18::bytea[], $19::bigint[], $20::bigint[])
AS v(seq, k, rh, typ, kind, debit, credit, amount, currency, ref, link, da, ca, memo, meta, at, exp, hash, dp, cp)`
	pgHoldInsert = `INSERT INTO ledger_holds(id, debit, credit, amount, expires_at, status, resolved_seq)
SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::bigint[])`
	pgHoldUpdate = `UPDATE ledger_holds h SET status = v.status, resolved_seq = v.rs
FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS v(id, status, rs) WHERE h.id = v.id AND h.status = 'pending'`
	pgAccountsAndChain = `WITH v(id, bal, pend, last) AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])),
u AS (UPDATE ledger_accounts a SET balance_fen = v.bal, pending_fen = v.pend, last_seq = v.last, version = a.version + 1 FROM v WHERE a.id = v.id RETURNING a.id)
UPDATE ledger_chain SET seq = $5::bigint / (CASE WHEN (SELECT count(*) FROM u) = cardinality($1::text[]) THEN 1 ELSE 0 END), hash = $6
WHERE id = 1`
)

// applyBatchPG is applyBatch on PostgreSQL.
func (l *Ledger) applyBatchPG(ctx context.Context, opsp *[]*op) (err error) {
	ops := *opsp
	start := time.Now()
	t0 := start
	conn, err := l.db.W.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	b := l.newBatch(l.opt.Now().UnixMilli())
	// A batch needs a database/sql transaction only for the test hook or
	// an attacher that cannot ride in the pipelines (PipelineAttacher).
	useTx := l.opt.beforeCommit != nil
	for _, o := range ops {
		if o.att != nil && !pipelined(o.att.To) {
			useTx = true
		}
	}
	claims := !useTx // the attachers' reads ride in the load pipeline
	defer func() {
		if err == nil {
			return
		}
		if b.tx != nil {
			b.tx.Rollback()
			return
		}
		pgRollback(conn)
	}()
	lockBusy := false // the NOWAIT attempt found the chain head locked
	if !l.lg.shared {
		if useTx {
			if b.tx, err = conn.BeginTx(ctx, nil); err != nil {
				return err
			}
		}
		err = b.pgLoad(ctx, conn, ops, !useTx, pgChainLockNowait, claims)
		lockBusy = isLockNotAvailable(err)
		if lockBusy {
			if b.tx != nil {
				b.tx.Rollback()
				b.tx = nil
			} else {
				pgRollback(conn)
			}
		}
	}
	if l.lg.shared || lockBusy {
		// Another process holds the chain head (its batch is committing):
		// wait for it, and let the requests that arrive meanwhile join this
		// batch, so that processes taking turns commit full batches instead
		// of halves. Without a database/sql transaction the transaction
		// begins in the pipeline that waits, and commits in the one that
		// writes (three round trips); a request whose attacher needs the
		// transaction (not a PipelineAttacher) that arrives meanwhile
		// waits for the next batch.
		b = l.newBatch(b.now)
		lock := &pgx.Batch{}
		if useTx {
			if b.tx, err = conn.BeginTx(ctx, nil); err != nil {
				return err
			}
		} else {
			lock.Queue(`BEGIN`)
		}
		lock.Queue(pgChainLock).QueryRow(func(r pgx.Row) error { return r.Scan(&b.seq, &b.prevHash) })
		if err = pgSend(ctx, conn, lock); err != nil {
			return err
		}
		ops = l.absorb(ops, func(o *op) bool { return useTx || o.att == nil || pipelined(o.att.To) })
		*opsp = ops
		err = b.pgLoad(ctx, conn, ops, false, "", claims)
	}
	if err != nil {
		return err
	}
	seq0 := b.seq // the chain head as locked (linger.go: shared)
	if claims {
		err = b.decideClaims()
	} else {
		err = b.claimAttached(ctx, ops)
	}
	if err != nil {
		return err
	}
	t0 = l.phase(phaseLoad, t0)
	b.applyOps(ops)
	t0 = l.phase(phaseApply, t0)
	pb := b.pgWrites()
	if !useTx {
		if err := b.queueWrites(pb, ops); err != nil {
			return err
		}
		t0 = l.phase(phaseWrite, t0)
		pb.Queue(`COMMIT`)
		if err := pgSend(ctx, conn, pb); err != nil {
			return err
		}
	} else {
		if err := pgSend(ctx, conn, pb); err != nil {
			return err
		}
		if err := b.writeAttached(ctx, ops); err != nil {
			return err
		}
		t0 = l.phase(phaseWrite, t0)
		if l.opt.beforeCommit != nil {
			if err := l.opt.beforeCommit(ctx, b.tx, len(b.entries)); err != nil {
				return err
			}
		}
		if err := b.tx.Commit(); err != nil {
			return err
		}
	}
	end := l.phase(phaseCommit, t0)
	l.lg.observe(seq0, b.seq, lockBusy, end, end.Sub(start))
	l.batches.Add(1)
	l.entries.Add(int64(len(b.entries)))
	return nil
}

// isLockNotAvailable: a NOWAIT lock found the row locked (55P03).
func isLockNotAvailable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55P03"
}

// pgSend runs pb as one pipeline on conn's pgx connection and calls the
// queued callbacks in order; the first error stops it.
func pgSend(ctx context.Context, conn *sql.Conn, pb *pgx.Batch) error {
	if pb.Len() == 0 {
		return nil
	}
	return conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("ledger: the PostgreSQL driver connection is a %T", dc)
		}
		return c.Conn().SendBatch(ctx, pb).Close()
	})
}

// pgRollback ends a transaction begun in a pipeline after a failure. A
// connection it cannot bring back to idle is discarded (database/sql
// would also refuse to reuse one still in a transaction).
func pgRollback(conn *sql.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn.Raw(func(dc any) error {
		c, ok := dc.(*stdlib.Conn)
		if !ok {
			return driver.ErrBadConn
		}
		pc := c.Conn()
		if pc.IsClosed() {
			return driver.ErrBadConn
		}
		if pc.PgConn().TxStatus() == 'I' {
			return nil
		}
		if _, err := pc.Exec(ctx, `ROLLBACK`); err != nil || pc.PgConn().TxStatus() != 'I' {
			return driver.ErrBadConn
		}
		return nil
	})
}

// pgLoad reads and locks, in one pipeline (two when the batch refers to
// holds or transfers), what the batch may touch; begin puts BEGIN first,
// lock is the statement that locks and reads the chain head (empty when
// the waiting path has locked and read it already), and claims queues the
// attachers' reads at the end of the last pipeline (queueClaims).
func (b *batch) pgLoad(ctx context.Context, conn *sql.Conn, ops []*op, begin bool, lock string, claims bool) error {
	refs := collectRefs(ops)
	keys, holdIDs, origIDs, accounts, expire := refs.keys, refs.holdIDs, refs.origIDs, refs.accounts, refs.expire
	pb := &pgx.Batch{}
	if begin {
		pb.Queue(`BEGIN`)
	}
	if lock != "" {
		pb.Queue(lock).QueryRow(func(r pgx.Row) error { return r.Scan(&b.seq, &b.prevHash) })
	}
	if len(keys) > 0 {
		pb.Queue(pgKeys, keys).Query(func(r pgx.Rows) error {
			for r.Next() {
				e, err := scanEntry(r)
				if err != nil {
					return err
				}
				b.existing[e.key] = e
			}
			return r.Err()
		})
	}
	if len(holdIDs) > 0 {
		pb.Queue(pgHoldsByID, holdIDs).Query(func(r pgx.Rows) error {
			for r.Next() {
				h, err := pgScanHold(r)
				if err != nil {
					return err
				}
				b.holds[h.id] = h
				accounts[h.debit], accounts[h.credit] = true, true
			}
			return r.Err()
		})
	}
	if expire {
		pb.Queue(pgExpiring, b.now).Query(func(r pgx.Rows) error {
			for r.Next() {
				h, err := pgScanHold(r)
				if err != nil {
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
			return r.Err()
		})
	}
	if len(origIDs) > 0 {
		pb.Queue(pgOrigs, origIDs).Query(func(r pgx.Rows) error {
			for r.Next() {
				e, err := scanEntry(r)
				if err != nil {
					return err
				}
				b.origs[e.seq] = e
				accounts[e.debit], accounts[e.credit] = true, true
			}
			return r.Err()
		})
		pb.Queue(pgReversed, origIDs).Query(func(r pgx.Rows) error {
			for r.Next() {
				var ref, total int64
				if err := r.Scan(&ref, &total); err != nil {
					return err
				}
				b.reversed[ref] = total
			}
			return r.Err()
		})
	}
	if len(holdIDs) > 0 || expire || len(origIDs) > 0 {
		// The accounts of these rows are known once they are read.
		if err := pgSend(ctx, conn, pb); err != nil {
			return err
		}
		pb = &pgx.Batch{}
	}
	if len(accounts) > 0 {
		ids := make([]string, 0, len(accounts))
		for id := range accounts {
			ids = append(ids, id)
		}
		sort.Strings(ids) // the server locks them in ORDER BY id anyway
		pb.Queue(pgAccounts, ids).Query(func(r pgx.Rows) error {
			for r.Next() {
				a := &acct{}
				var unb int
				if err := r.Scan(&a.id, &a.kind, &a.currency, &a.floor, &unb, &a.status, &a.bal, &a.pending, &a.last); err != nil {
					return err
				}
				a.unbounded = unb != 0
				b.accts[a.id] = a
			}
			return r.Err()
		})
		// Lazy expiry: holds past their timeout on the accounts this batch
		// touches are voided first, so they stop reserving funds.
		var late []*holdState
		pb.Queue(pgLate, ids, b.now).Query(func(r pgx.Rows) error {
			for r.Next() {
				h, err := pgScanHold(r)
				if err != nil {
					return err
				}
				if old := b.holds[h.id]; old != nil {
					h = old
				} else {
					b.holds[h.id] = h
				}
				late = append(late, h)
			}
			return r.Err()
		})
		if claims {
			b.queueClaims(pb, ops)
		}
		if err := pgSend(ctx, conn, pb); err != nil {
			return err
		}
		for _, h := range late {
			if h.status == HoldPending && b.accts[h.debit] != nil {
				b.expire(h)
			}
		}
		return nil
	}
	if claims {
		b.queueClaims(pb, ops)
	}
	return pgSend(ctx, conn, pb)
}

func pgScanHold(r pgx.Rows) (*holdState, error) {
	h := &holdState{}
	err := r.Scan(&h.id, &h.debit, &h.credit, &h.amount, &h.expiresAt, &h.status, &h.resolvedSeq)
	return h, err
}

// pgWrites hashes the batch's entries into the chain and queues its
// writes: journal, holds, and the accounts together with the chain head.
func (b *batch) pgWrites() *pgx.Batch {
	pb := &pgx.Batch{}
	if len(b.entries) == 0 {
		return pb // nothing applied (all refused or replayed)
	}
	prev := b.prevHash
	n := len(b.entries)
	var (
		seq, amount, ref, link, da, ca, at, exp = make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
		dp, cp                                  = make([]int64, n), make([]int64, n)
		key, typ, kind, debit, credit, cur      = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		memo, meta                              = make([]string, n), make([]string, n)
		rh, hash                                = make([][]byte, n), make([][]byte, n)
	)
	for i, e := range b.entries {
		e.hash = e.chainHash(prev)
		prev = e.hash
		seq[i], key[i], rh[i], typ[i], kind[i], debit[i], credit[i], amount[i], cur[i] = e.seq, e.key, e.reqHash, e.typ, e.kind, e.debit, e.credit, e.amount, e.currency
		ref[i], link[i], da[i], ca[i], memo[i], meta[i], at[i], exp[i], hash[i] = e.ref, e.link, e.debitAfter, e.creditAfter, e.memo, e.meta, e.at, e.expiresAt, e.hash
		dp[i], cp[i] = e.debitPrev, e.creditPrev
		if rh[i] == nil {
			rh[i] = []byte{} // NULLIF makes it NULL
		}
	}
	pb.Queue(pgJournalInsert, seq, key, rh, typ, kind, debit, credit, amount, cur, ref, link, da, ca, memo, meta, at, exp, hash, dp, cp)

	var nh, uh struct {
		id, amount, exp, rs   []int64
		debit, credit, status []string
	}
	for _, h := range b.holds {
		switch {
		case !h.dirty:
		case h.isNew:
			nh.id, nh.debit, nh.credit, nh.amount = append(nh.id, h.id), append(nh.debit, h.debit), append(nh.credit, h.credit), append(nh.amount, h.amount)
			nh.exp, nh.status, nh.rs = append(nh.exp, h.expiresAt), append(nh.status, h.status), append(nh.rs, h.resolvedSeq)
		default:
			uh.id, uh.status, uh.rs = append(uh.id, h.id), append(uh.status, h.status), append(uh.rs, h.resolvedSeq)
		}
	}
	if len(nh.id) > 0 {
		pb.Queue(pgHoldInsert, nh.id, nh.debit, nh.credit, nh.amount, nh.exp, nh.status, nh.rs)
	}
	if len(uh.id) > 0 {
		pb.Queue(pgHoldUpdate, uh.id, uh.status, uh.rs)
	}

	// Never nil: pgx binds a nil slice as NULL, not as an empty array.
	ids, bal, pend, last := make([]string, 0, len(b.accts)), make([]int64, 0, len(b.accts)), make([]int64, 0, len(b.accts)), make([]int64, 0, len(b.accts))
	for _, a := range b.accts {
		if a.dirty {
			ids, bal, pend, last = append(ids, a.id), append(bal, a.bal), append(pend, a.pending), append(last, a.last)
		}
	}
	pb.Queue(pgAccountsAndChain, ids, bal, pend, last, b.seq, prev).Exec(func(ct pgconn.CommandTag) error {
		if ct.RowsAffected() != 1 {
			return fmt.Errorf("ledger: the chain head row is missing")
		}
		return nil
	})
	return pb
}
