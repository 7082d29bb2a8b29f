package ledger

import (
	"context"
	"database/sql"

	"github.com/jackc/pgx/v5"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Attachments let a caller write its own rows in the same database
// transaction as its transfers, so that a business record and the money it
// moves commit together, with one shared commit (one fsync) for the whole
// group-commit batch instead of one for the caller's rows and one for the
// ledger's. The scan path uses it: a charging scan's row (its idempotency
// key, the code's one-use nonce and the stored answer) rides in the ledger
// batch that applies its fare.
//
// The rules, per batch (the database transaction of one group commit):
//
//  1. After the batch has loaded its state (on PostgreSQL: after it locked
//     the chain head, so batches of every process are serialised), the
//     ledger calls each Attacher's Claim once with all of its attachments
//     in the batch, in queue order. Claim reads what it needs in the
//     batch's transaction and sets Refused on the attachments that must
//     not go ahead (e.g. a key or a nonce already taken, in the database or
//     by an earlier attachment of the same batch). A refused attachment's
//     transfers are not applied and Write does not see it; its request
//     returns Refused as its error. A refusal is not a failure: the other
//     requests of the batch go on.
//  2. The ledger applies the transfers of the remaining requests. A
//     transfer the ledger refuses (insufficient funds, closed account …)
//     writes no journal entry, as always.
//  3. After the ledger's own writes, each Attacher's Write is called once
//     with the attachments Claim let through, each carrying its outcome:
//     Transfers (applied, or replayed) or Err (the ledger's refusal). The
//     Attacher decides what a refusal writes (the scan path writes a
//     declined scan record, so the refused answer is stored like any other).
//  4. Everything commits in one COMMIT, or nothing does: if Claim or Write
//     returns an error, the batch fails like any database error (every
//     caller is told unavailable and retries with the same keys). A unique
//     violation raised by Write (a row another process committed after
//     Claim read) re-runs the batch like a ledger key conflict, and Claim
//     then sees that row.
//
// Claim and Write run on the ledger's committer goroutine, inside its
// transaction; they must not block on anything but that transaction, and
// must reset nothing but the fields of the attachments they are given.
type Attacher interface {
	Claim(ctx context.Context, tx *sql.Tx, atts []*Attachment) error
	Write(ctx context.Context, tx *sql.Tx, atts []*Attachment) error
}

// Attachment is a caller's rows riding along with one request's transfers.
type Attachment struct {
	// To writes the rows.
	To Attacher
	// Value is the caller's own data (the rows to write).
	Value any

	// Refused is set by Claim to keep the request out of the batch.
	Refused error
	// Outcome, set by the ledger before Write: the request's transfers
	// (applied, or Replayed), or the ledger's refusal.
	Transfers []Transfer
	Err       error
}

// Attached is one request of AttachMany.
type Attached struct {
	Transfers []TransferRequest
	Att       *Attachment
}

// Outcome is what became of an attached request.
type Outcome struct {
	Refused   error      // Claim's refusal: nothing applied, nothing written
	Transfers []Transfer // applied (or replayed)
	Err       error      // the ledger's refusal of the transfers
}

// Attach applies reqs with att's rows in the same transaction: no
// transfer is one attachment only (written whatever happens, unless
// refused by Claim); one transfer is applied like Transfer (same request
// hash); several like Linked (all or nothing). The error is unavailable
// (the batch failed, or ctx ended while queued: the outcome is unknown,
// and att must not be read) or a validation error; otherwise the Outcome
// says what happened.
func (l *Ledger) Attach(ctx context.Context, reqs []TransferRequest, att *Attachment) (Outcome, error) {
	o, err := attachedOp(Attached{Transfers: reqs, Att: att})
	if err != nil {
		return Outcome{}, err
	}
	if err := l.submit(ctx, o); err != nil {
		return Outcome{}, err
	}
	return Outcome{Refused: att.Refused, Transfers: att.Transfers, Err: att.Err}, nil
}

// AttachMany is Attach for many independent requests, queued at once so
// the committer applies them in as few batches as possible, in order. The
// outcome of reqs[i] is out[i]; errs[i] is non-nil when it is unknown
// (unavailable: the batch failed, or ctx ended; re-send with the same
// keys) or the request was invalid.
func (l *Ledger) AttachMany(ctx context.Context, reqs []Attached) (out []Outcome, errs []error) {
	out, errs = make([]Outcome, len(reqs)), make([]error, len(reqs))
	ops := make([]*op, len(reqs))
	for i, r := range reqs {
		o, err := attachedOp(r)
		if err != nil {
			errs[i] = err
			continue
		}
		o.ctx = ctx
		o.done = make(chan struct{})
		ops[i] = o
	}
	queued := 0
queue:
	for ; queued < len(ops); queued++ {
		if ops[queued] == nil {
			continue
		}
		select {
		case l.in <- ops[queued]:
		case <-ctx.Done():
			break queue
		case <-l.quit:
			break queue
		}
	}
	for i, o := range ops[:queued] {
		if o == nil {
			continue
		}
		select {
		case <-o.done:
			if o.err != nil {
				errs[i] = o.err
				continue
			}
			out[i] = Outcome{Refused: o.att.Refused, Transfers: o.att.Transfers, Err: o.att.Err}
		case <-ctx.Done():
			errs[i] = apperr.Wrap(apperr.Unavailable, ctx.Err())
		}
	}
	for i := queued; i < len(ops); i++ {
		if ops[i] != nil {
			errs[i] = apperr.Newf(apperr.Unavailable, "the ledger is shutting down or the request ended", "账本正在关闭或请求已结束")
		}
	}
	return out, errs
}

func (l *Ledger) closedErr() error {
	return apperr.Newf(apperr.Unavailable, "the ledger is shutting down", "账本正在关闭")
}

func attachedOp(r Attached) (*op, error) {
	if r.Att == nil || r.Att.To == nil {
		return nil, invalid("attachment", "an attachment needs an Attacher", "附加记录缺少写入方")
	}
	o := &op{kind: opItems, att: r.Att}
	switch n := len(r.Transfers); {
	case n == 1:
		if err := r.Transfers[0].validate(); err != nil {
			return nil, err
		}
		o.items = []item{transferItem(r.Transfers[0], 0, 0)}
	case n > 1:
		if n > 64 {
			return nil, invalid("transfers", "a linked set has at most 64 transfers", "关联转账最多 64 笔")
		}
		o.kind = opLinked
		seen := map[string]bool{}
		for i := range r.Transfers {
			if err := r.Transfers[i].validate(); err != nil {
				return nil, linkedErr(i, err)
			}
			if seen[r.Transfers[i].Key] {
				return nil, invalid("key", "the keys of a linked set must be distinct", "关联转账的幂等键不能重复")
			}
			seen[r.Transfers[i].Key] = true
			o.items = append(o.items, transferItem(r.Transfers[i], n, i))
		}
	}
	return o, nil
}

// attachersOf groups the batch's live attachments by Attacher, in order.
func attachersOf(ops []*op, live func(*op) bool) ([]Attacher, map[Attacher][]*Attachment) {
	var order []Attacher
	m := map[Attacher][]*Attachment{}
	for _, o := range ops {
		if o.att == nil || !live(o) {
			continue
		}
		if _, ok := m[o.att.To]; !ok {
			order = append(order, o.att.To)
		}
		m[o.att.To] = append(m[o.att.To], o.att)
	}
	return order, m
}

// claimAttached runs step 1 (see Attacher) for batch b.
func (b *batch) claimAttached(ctx context.Context, ops []*op) error {
	for _, o := range ops {
		if o.att != nil {
			o.att.Refused, o.att.Err, o.att.Transfers = nil, nil, nil
		}
	}
	order, m := attachersOf(ops, func(*op) bool { return true })
	for _, a := range order {
		if err := a.Claim(ctx, b.tx, m[a]); err != nil {
			return err
		}
	}
	return nil
}

// refused reports whether o is kept out of the batch by its attachment.
func refused(o *op) bool { return o.att != nil && o.att.Refused != nil }

// writeAttached runs step 3 (see Attacher) for batch b, after the
// ledger's writes.
func (b *batch) writeAttached(ctx context.Context, ops []*op) error {
	outcomes(ops)
	order, m := attachersOf(ops, func(o *op) bool { return !refused(o) })
	for _, a := range order {
		if err := a.Write(ctx, b.tx, m[a]); err != nil {
			return err
		}
	}
	return nil
}

// PipelineAttacher is an Attacher whose reads and writes can ride in the
// ledger's PostgreSQL pipelines (pgbatch.go) instead of a database/sql
// transaction: QueueClaim queues Claim's reads behind the batch's own
// loads (the same round trip, after the chain head is locked) and returns
// the function that decides the refusals once they have run; QueueWrite
// queues Write's statements behind the ledger's writes, before COMMIT.
// A batch whose attachers all implement it takes the two round trips of a
// batch without attachments; through a transaction it took one for BEGIN,
// one per read and write statement of the attacher, and one for COMMIT.
// Both methods must behave exactly as Claim and Write do (the same rules,
// in the same order); only where the statements run differs. SQLite
// calls Claim and Write.
type PipelineAttacher interface {
	Attacher
	QueueClaim(q Queue, atts []*Attachment) (decide func() error)
	QueueWrite(q Queue, atts []*Attachment) error
}

// Queue collects statements for one PostgreSQL pipeline
// (PipelineAttacher). A statement's error fails the whole batch, as an
// error of Claim or Write does.
type Queue struct{ pb *pgx.Batch }

// Query queues a query; once the pipeline has run, each is called with
// every row's Scan, in order.
func (q Queue) Query(sql string, args []any, each func(scan func(dest ...any) error) error) {
	q.pb.Queue(sql, args...).Query(func(r pgx.Rows) error {
		for r.Next() {
			if err := each(r.Scan); err != nil {
				return err
			}
		}
		return r.Err()
	})
}

// Exec queues a statement whose rows, if any, are not read.
func (q Queue) Exec(sql string, args ...any) { q.pb.Queue(sql, args...) }

// pipelined reports whether a can ride in the pipelines.
func pipelined(a Attacher) bool {
	_, ok := a.(PipelineAttacher)
	return ok
}

// queueClaims is claimAttached for a pipelined batch: it queues every
// attacher's reads on pb and keeps the functions that decide.
func (b *batch) queueClaims(pb *pgx.Batch, ops []*op) {
	for _, o := range ops {
		if o.att != nil {
			o.att.Refused, o.att.Err, o.att.Transfers = nil, nil, nil
		}
	}
	b.decides = b.decides[:0]
	order, m := attachersOf(ops, func(*op) bool { return true })
	for _, a := range order {
		b.decides = append(b.decides, a.(PipelineAttacher).QueueClaim(Queue{pb}, m[a]))
	}
}

// decideClaims runs the deciding half of queueClaims, after the pipeline.
func (b *batch) decideClaims() error {
	for _, d := range b.decides {
		if err := d(); err != nil {
			return err
		}
	}
	return nil
}

// outcomes sets each live attachment's outcome from its op's results
// (step 3, before Write).
func outcomes(ops []*op) {
	for _, o := range ops {
		if o.att == nil || refused(o) {
			continue
		}
		for _, r := range o.res {
			if r.err != nil {
				o.att.Err = r.err
				o.att.Transfers = nil
				break
			}
			o.att.Transfers = append(o.att.Transfers, r.t)
		}
	}
}

// queueWrites is writeAttached for a pipelined batch.
func (b *batch) queueWrites(pb *pgx.Batch, ops []*op) error {
	outcomes(ops)
	order, m := attachersOf(ops, func(o *op) bool { return !refused(o) })
	for _, a := range order {
		if err := a.(PipelineAttacher).QueueWrite(Queue{pb}, m[a]); err != nil {
			return err
		}
	}
	return nil
}
