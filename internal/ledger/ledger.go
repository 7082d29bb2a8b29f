package ledger

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
)

// Options tune a Ledger.
type Options struct {
	// MaxBatch caps the journal entries applied in one database
	// transaction (default 1024).
	MaxBatch int
	// BatchTimeout bounds one batch's database work (default 10s).
	BatchTimeout time.Duration
	// Now is the clock (default time.Now); tests move it to expire holds.
	Now func() time.Time
	// Logger receives batch failures (default slog.Default()).
	Logger *slog.Logger
	// SyncInCommit keeps SQLite's fsync inside every batch's COMMIT
	// (synchronous=FULL) instead of the deferred sync of sync.go; for
	// comparison benchmarks. PostgreSQL always syncs in COMMIT.
	SyncInCommit bool

	// beforeCommit, if set (tests only), runs inside the batch transaction
	// after all writes and before COMMIT, with the number of entries written.
	beforeCommit func(ctx context.Context, tx *sql.Tx, entries int) error
	// syncWAL, if set (tests only), replaces the deferred sync's fsync.
	syncWAL func() error
}

// Ledger is the double-entry ledger of one node process. All writes go
// through its committer goroutine; reads go straight to the database.
type Ledger struct {
	db  *store.DB
	opt Options
	in  chan *op
	// carry: requests taken from in that wait for the committer's next
	// batch (absorb); the committer's own.
	carry []*op
	quit  chan struct{}
	done  chan struct{}
	once  sync.Once
	log   *slog.Logger

	batches, entries, failed atomic.Int64
	retried                  atomic.Int64 // batch attempts run again after a conflict
	batchNanos               atomic.Int64
	phases                   [nPhases]atomic.Int64

	stmts     store.WriterStmts // SQLite: prepared batch statements (stmts.go)
	cache     acctCache         // SQLite: committed account state (cache.go)
	acctEpoch atomic.Int64      // bumped by CloseAccount inside its transaction
	lg        lingerState       // sharing the chain head, PostgreSQL (linger.go)

	deferSync bool       // SQLite: answer after the syncer's fsync (sync.go)
	syncq     chan []*op // committed batches waiting for their fsync
	synced    chan struct{}
	stopped   atomic.Pointer[error] // a failed fsync stopped the ledger (sync.go)
}

// Stats are counters since Open (for metrics).
type Stats struct {
	Batches       int64 // database transactions committed
	Entries       int64 // journal entries written
	FailedBatches int64 // batches failed by a database error
	// RetriedBatches counts batch attempts rolled back by a conflict with
	// another process (a unique key, a deadlock or a serialization
	// failure) and run again at once; their callers never see them.
	RetriedBatches int64
	BatchTime      time.Duration
	Phases         [nPhases]time.Duration // time spent per phase (PhaseNames)
}

// Stats returns the ledger's counters.
func (l *Ledger) Stats() Stats {
	st := Stats{Batches: l.batches.Load(), Entries: l.entries.Load(), FailedBatches: l.failed.Load(), RetriedBatches: l.retried.Load(), BatchTime: time.Duration(l.batchNanos.Load())}
	for i := range st.Phases {
		st.Phases[i] = time.Duration(l.phases[i].Load())
	}
	return st
}

// PhaseNames name Stats.Phases: BEGIN and reads; applying in memory;
// hashing and row writes; COMMIT; and, on SQLite, the deferred fsync of
// the write-ahead log, which runs beside the next batch.
var PhaseNames = [nPhases]string{"load", "apply", "write", "commit", "sync"}

// Open starts a Ledger over db (already migrated) and makes sure the
// well-known external and fee accounts exist.
func Open(ctx context.Context, db *store.DB, opt Options) (*Ledger, error) {
	if opt.MaxBatch <= 0 {
		opt.MaxBatch = 1024
	}
	if opt.BatchTimeout <= 0 {
		opt.BatchTimeout = 10 * time.Second
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	l := &Ledger{db: db, opt: opt, in: make(chan *op, 4096), quit: make(chan struct{}), done: make(chan struct{}), log: opt.Logger}
	if l.log == nil {
		l.log = slog.Default()
	}
	l.lg.on = db.Dialect == store.Postgres
	l.deferSync = db.DeferredSync() && !opt.SyncInCommit
	for _, a := range []Account{
		{ID: AccountBank, Kind: KindExternal, Label: "bank top-up channel"},
		{ID: AccountTreasury, Kind: KindExternal, Label: "treasury funding"},
		{ID: AccountMedicalFund, Kind: KindExternal, Label: "medical insurance fund"},
		{ID: AccountFeeIncome, Kind: KindFeeIncome, Label: "fee income"},
	} {
		if _, err := l.CreateAccount(ctx, a); err != nil {
			return nil, err
		}
	}
	if err := l.prepareAll(ctx); err != nil {
		return nil, err
	}
	if l.deferSync {
		l.syncq, l.synced = make(chan []*op), make(chan struct{})
		go l.syncLoop()
	}
	go l.committer()
	return l, nil
}

// Close stops the committer after the batch in progress; requests still
// queued are answered unavailable (retry with the same key elsewhere).
func (l *Ledger) Close() {
	l.once.Do(func() {
		close(l.quit)
		<-l.done
		l.closeStmts()
	})
	<-l.done
}

// ---- the committer ----

type opKind int

const (
	opItems  opKind = iota // independent items
	opLinked               // items that succeed or fail together
	opExpire               // void expired holds
)

// item is one requested journal entry.
type item struct {
	typ     string
	key     string
	hash    []byte
	debit   string
	credit  string
	amount  int64
	kind    string
	memo    string
	meta    string            // stored form (metaJSON), encoded by the caller, not the committer
	metaMap map[string]string // the caller's, answered as is (not decoded again)
	ref     int64             // hold (post/void) or original (reversal)
	timeout time.Duration
}

type itemResult struct {
	t   Transfer
	err error
}

type op struct {
	ctx   context.Context
	kind  opKind
	items []item
	res   []itemResult
	att   *Attachment // caller's rows in the same transaction (attach.go)
	n     int         // opExpire: holds expired
	err   error
	done  chan struct{}
}

func (l *Ledger) submit(ctx context.Context, o *op) error {
	o.ctx = ctx
	o.done = make(chan struct{})
	if err := l.broken(); err != nil {
		return err
	}
	select {
	case <-l.quit:
		return apperr.Newf(apperr.Unavailable, "the ledger is shutting down", "账本正在关闭")
	default:
	}
	select {
	case l.in <- o:
	case <-ctx.Done():
		return apperr.Wrap(apperr.Unavailable, ctx.Err())
	case <-l.quit:
		return apperr.Newf(apperr.Unavailable, "the ledger is shutting down", "账本正在关闭")
	}
	select {
	case <-o.done:
		return o.err
	case <-ctx.Done():
		// The outcome is unknown to this caller: a retry with the same key
		// tells.
		return apperr.Wrap(apperr.Unavailable, ctx.Err())
	}
}

func (l *Ledger) committer() {
	defer close(l.done)
	defer func() {
		if l.deferSync {
			close(l.syncq)
			<-l.synced
		}
	}()
	var batch []*op
	for {
		batch = batch[:0]
		if len(l.carry) > 0 {
			batch = append(batch, l.carry...)
			l.carry = l.carry[:0]
		} else {
			select {
			case o := <-l.in:
				batch = append(batch, o)
			case <-l.quit:
				l.drainClosed()
				return
			}
		}
		l.runBatch(l.absorb(batch, nil))
	}
}

// absorb adds to ops the requests queued meanwhile, up to MaxBatch
// entries, without waiting; a request whose caller has gone is answered
// at once. The committer fills each batch with it, and a PostgreSQL batch
// that waited for another process's chain-head lock takes in what came
// during the wait (pgbatch.go). A request that accept (if not nil)
// refuses is carried to the committer's next batch.
func (l *Ledger) absorb(ops []*op, accept func(*op) bool) []*op {
	n := 0
	for _, o := range ops {
		n += max(len(o.items), 1)
	}
	for n < l.opt.MaxBatch {
		select {
		case o := <-l.in:
			if err := o.ctx.Err(); err != nil {
				o.err = apperr.Wrap(apperr.Unavailable, err)
				close(o.done)
				continue
			}
			if accept != nil && !accept(o) {
				l.carry = append(l.carry, o)
				if len(l.carry) >= l.opt.MaxBatch {
					return ops
				}
				continue
			}
			ops = append(ops, o)
			n += max(len(o.items), 1)
		default:
			return ops
		}
	}
	return ops
}

func (l *Ledger) drainClosed() {
	for {
		select {
		case o := <-l.in:
			o.err = apperr.Newf(apperr.Unavailable, "the ledger is shutting down", "账本正在关闭")
			close(o.done)
		default:
			return
		}
	}
}

// runBatch applies a batch, re-running it when a concurrent process
// committed one of its idempotency keys first, and answers every caller.
func (l *Ledger) runBatch(batch []*op) {
	live := batch[:0:0]
	for _, o := range batch {
		if err := o.ctx.Err(); err != nil {
			o.err = apperr.Wrap(apperr.Unavailable, err)
			close(o.done)
			continue
		}
		live = append(live, o)
	}
	if len(live) == 0 {
		return
	}
	var err error
	t0 := time.Now()
	defer func() { l.batchNanos.Add(int64(time.Since(t0))) }()
	if err := l.broken(); err != nil {
		for _, o := range live {
			o.err = err
			close(o.done)
		}
		return
	}
	for attempt := 0; attempt < 5; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), l.opt.BatchTimeout)
		err = l.applyBatch(ctx, &live)
		cancel()
		if err == nil {
			break
		}
		if !store.IsUniqueViolation(err) && !isSerialization(err) {
			break
		}
		l.retried.Add(1)
	}
	if err != nil {
		l.failed.Add(1)
		l.log.Warn("ledger batch failed; every caller told to retry", "ops", len(live), "err", err)
		for _, o := range live {
			o.res = nil
			o.n = 0
			o.err = apperr.Wrap(apperr.Unavailable, err)
		}
	}
	if err == nil && l.deferSync {
		l.syncq <- live
		return
	}
	for _, o := range live {
		close(o.done)
	}
}

func isSerialization(err error) bool {
	// Deadlocks and serialization failures are retryable by re-running.
	return store.IsRetryable(err) && !errors.Is(err, context.DeadlineExceeded) && isPgConflict(err)
}

// ---- public write API ----

func (l *Ledger) one(ctx context.Context, it item) (Transfer, error) {
	o := &op{kind: opItems, items: []item{it}}
	if err := l.submit(ctx, o); err != nil {
		return Transfer{}, err
	}
	r := o.res[0]
	return r.t, r.err
}

// Transfer debits req.Debit and credits req.Credit by req.Amount, atomically
// and at most once per key. A refused transfer writes nothing, so the same
// key may succeed later (e.g. after a top-up).
func (l *Ledger) Transfer(ctx context.Context, req TransferRequest) (Transfer, error) {
	if err := req.validate(); err != nil {
		return Transfer{}, err
	}
	return l.one(ctx, transferItem(req, 0, 0))
}

func transferItem(req TransferRequest, n, i int) item {
	return item{typ: TypeTransfer, key: req.Key, debit: req.Debit, credit: req.Credit, amount: req.Amount,
		kind: req.Kind, memo: req.Memo, meta: metaJSON(req.Meta), metaMap: metaCopy(req.Meta),
		hash: requestHash(TypeTransfer, req.Debit, req.Credit, req.Amount, req.Kind, req.Memo, req.Meta, 0, 0, n, i)}
}

// Linked applies reqs all or nothing. On failure the error names the
// index of the transfer that failed and nothing is written. Retrying the
// same set with the same keys returns the original transfers.
func (l *Ledger) Linked(ctx context.Context, reqs []TransferRequest) ([]Transfer, error) {
	if len(reqs) == 0 {
		return nil, invalid("transfers", "a linked set needs at least one transfer", "关联转账至少需要一笔")
	}
	if len(reqs) > 64 {
		return nil, invalid("transfers", "a linked set has at most 64 transfers", "关联转账最多 64 笔")
	}
	seen := map[string]bool{}
	o := &op{kind: opLinked}
	for i := range reqs {
		if err := reqs[i].validate(); err != nil {
			return nil, linkedErr(i, err)
		}
		if seen[reqs[i].Key] {
			return nil, invalid("key", "the keys of a linked set must be distinct", "关联转账的幂等键不能重复")
		}
		seen[reqs[i].Key] = true
		o.items = append(o.items, transferItem(reqs[i], len(reqs), i))
	}
	if err := l.submit(ctx, o); err != nil {
		return nil, err
	}
	out := make([]Transfer, len(o.res))
	for i, r := range o.res {
		if r.err != nil {
			return nil, r.err
		}
		out[i] = r.t
	}
	return out, nil
}

func linkedErr(i int, err error) error {
	e := apperr.As(err)
	c := *e
	en, zh := e.Text()
	c.Detail = "transfer " + itoa(i) + " of the linked set: " + en
	c.DetailZh = "关联转账第 " + itoa(i) + " 笔：" + zh
	return &c
}

// BatchResult is the outcome of one request of Batch.
type BatchResult struct {
	Transfer Transfer
	Err      error
}

// Batch applies independent transfers as fast as the ledger can (whole
// groups per database transaction) and reports each one's outcome; one
// refused transfer does not affect the others.
func (l *Ledger) Batch(ctx context.Context, reqs []TransferRequest) []BatchResult {
	out := make([]BatchResult, len(reqs))
	chunk := l.opt.MaxBatch
	var o *op
	var idx []int
	flush := func() {
		if o == nil {
			return
		}
		err := l.submit(ctx, o)
		for j, i := range idx {
			if err != nil {
				out[i].Err = err
			} else {
				out[i] = BatchResult{o.res[j].t, o.res[j].err}
			}
		}
		o, idx = nil, nil
	}
	for i := range reqs {
		if err := reqs[i].validate(); err != nil {
			out[i].Err = err
			continue
		}
		if o == nil {
			o = &op{kind: opItems}
		}
		o.items = append(o.items, transferItem(reqs[i], 0, 0))
		idx = append(idx, i)
		if len(o.items) >= chunk {
			flush()
		}
	}
	flush()
	return out
}

// Hold reserves req.Amount on req.Debit (available balance = balance -
// pending holds must stay ≥ floor) until posted, voided or timed out.
func (l *Ledger) Hold(ctx context.Context, req HoldRequest) (Transfer, error) {
	tr := TransferRequest{Key: req.Key, Debit: req.Debit, Credit: req.Credit, Amount: req.Amount, Kind: req.Kind, Memo: req.Memo, Meta: req.Meta}
	if err := tr.validate(); err != nil {
		return Transfer{}, err
	}
	if req.Timeout == 0 {
		req.Timeout = DefaultHoldTimeout
	}
	if req.Timeout < time.Millisecond || req.Timeout > MaxHoldTimeout {
		return Transfer{}, invalid("timeout", "the hold timeout must be between 1 ms and 30 days", "预授权时限须在 1 毫秒到 30 天之间")
	}
	it := transferItem(tr, 0, 0)
	it.typ = TypeHold
	it.timeout = req.Timeout
	it.hash = requestHash(TypeHold, req.Debit, req.Credit, req.Amount, req.Kind, req.Memo, req.Meta, 0, req.Timeout, 0, 0)
	return l.one(ctx, it)
}

// PostHold settles a pending hold for amount (≤ the amount held; the
// remainder is released). Posting twice, or after a void or timeout, is
// hold_not_pending.
func (l *Ledger) PostHold(ctx context.Context, key, holdID string, amount int64) (Transfer, error) {
	return l.resolve(ctx, TypePost, key, holdID, amount)
}

// VoidHold releases a pending hold.
func (l *Ledger) VoidHold(ctx context.Context, key, holdID string) (Transfer, error) {
	return l.resolve(ctx, TypeVoid, key, holdID, 0)
}

func (l *Ledger) resolve(ctx context.Context, typ, key, holdID string, amount int64) (Transfer, error) {
	if err := checkKey(key); err != nil {
		return Transfer{}, err
	}
	seq, ok := parseID(holdID)
	if !ok {
		return Transfer{}, apperr.Newf(apperr.NotFound, "no such hold", "预授权不存在")
	}
	if typ == TypePost {
		if err := checkAmount(amount); err != nil {
			return Transfer{}, err
		}
	}
	return l.one(ctx, item{typ: typ, key: key, ref: seq, amount: amount,
		hash: requestHash(typ, "", "", amount, "", "", nil, seq, 0, 0, 0)})
}

// Reverse moves amount back from the original transfer's credit account
// to its debit account, as a new entry referring to the original. The
// reversals of one transfer never add up to more than its amount
// (reversal_exceeds). The original's credit account's floor applies.
func (l *Ledger) Reverse(ctx context.Context, key, transferID string, amount int64) (Transfer, error) {
	if err := checkKey(key); err != nil {
		return Transfer{}, err
	}
	seq, ok := parseID(transferID)
	if !ok {
		return Transfer{}, apperr.Newf(apperr.NotFound, "no such transfer", "交易不存在")
	}
	if err := checkAmount(amount); err != nil {
		return Transfer{}, err
	}
	return l.one(ctx, item{typ: TypeReversal, key: key, ref: seq, amount: amount, kind: TypeReversal,
		hash: requestHash(TypeReversal, "", "", amount, "", "", nil, seq, 0, 0, 0)})
}

// ExpireHolds voids (up to 1000) holds whose timeout has passed and
// returns how many it voided. The node calls it periodically; holds are
// also expired lazily when touched.
func (l *Ledger) ExpireHolds(ctx context.Context) (int, error) {
	o := &op{kind: opExpire}
	if err := l.submit(ctx, o); err != nil {
		return 0, err
	}
	return o.n, nil
}

// TopUp credits a resident's wallet from the bank top-up channel.
func (l *Ledger) TopUp(ctx context.Context, key, walletID string, amount int64, meta map[string]string) (Transfer, error) {
	return l.Transfer(ctx, TransferRequest{Key: key, Debit: AccountBank, Credit: walletID, Amount: amount, Kind: "topup", Meta: meta})
}

// ---- accounts ----

// CreateAccount creates an account; creating it again with the same
// content is fine, with other content it is a conflict.
func (l *Ledger) CreateAccount(ctx context.Context, a Account) (AccountInfo, error) {
	if err := a.validate(); err != nil {
		return AccountInfo{}, err
	}
	unb := 0
	if a.Kind == KindExternal {
		unb = 1
	}
	_, err := l.db.W.ExecContext(ctx, `INSERT INTO ledger_accounts(id, kind, currency, floor_fen, unbounded, status, label, created_at)
		VALUES ($1, $2, $3, $4, $5, 'open', $6, $7) ON CONFLICT (id) DO NOTHING`,
		a.ID, a.Kind, a.Currency, a.Floor, unb, a.Label, l.opt.Now().UnixMilli())
	if err != nil {
		return AccountInfo{}, dbErr(err)
	}
	got, err := l.account(ctx, l.db.W, a.ID)
	if err != nil {
		return AccountInfo{}, err
	}
	if got.Kind != a.Kind || got.Currency != a.Currency || got.Floor != a.Floor || got.Label != a.Label {
		return AccountInfo{}, apperr.Newf(apperr.Conflict, "an account with this id exists with other settings", "同编号账户已存在且设置不同")
	}
	return got, nil
}

// OpenResidentAccounts creates a resident's wallet and medical personal
// account (both floor 0) if they do not exist, and returns their ids.
func (l *Ledger) OpenResidentAccounts(ctx context.Context, residentID string) (wallet, medical string, err error) {
	if residentID == "" {
		return "", "", invalid("resident_id", "resident id is required", "缺少居民编号")
	}
	w, m := WalletID(residentID), MedicalID(residentID)
	if _, err := l.CreateAccount(ctx, Account{ID: w, Kind: KindWallet}); err != nil {
		return "", "", err
	}
	if _, err := l.CreateAccount(ctx, Account{ID: m, Kind: KindMedical}); err != nil {
		return "", "", err
	}
	return w, m, nil
}

// CloseAccount closes an account whose balance and pending holds are zero
// (conflict otherwise). Closing a closed account is fine.
func (l *Ledger) CloseAccount(ctx context.Context, id string) error {
	var n int64
	err := l.db.Tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE ledger_accounts SET status = 'closed', version = version + 1
		WHERE id = $1 AND status = 'open' AND balance_fen = 0 AND pending_fen = 0`, id)
		if err != nil {
			return err
		}
		n, _ = res.RowsAffected()
		// Bumped while this transaction holds SQLite's only writer
		// connection: the next batch, which can begin only after this
		// commits, sees it and drops its account cache.
		l.acctEpoch.Add(1)
		return nil
	})
	if err != nil {
		return dbErr(err)
	}
	if n == 1 {
		return nil
	}
	a, err := l.account(ctx, l.db.W, id)
	if err != nil {
		return err
	}
	if a.Status == StatusClosed {
		return nil
	}
	return apperr.Newf(apperr.Conflict, "only an account with zero balance and no pending holds can be closed", "只有余额为零且无待处理预授权的账户才能关闭")
}

func dbErr(err error) error {
	var ae *apperr.Error
	if errors.As(err, &ae) {
		return ae
	}
	return apperr.Wrap(apperr.Unavailable, err)
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	if i == 0 {
		return "0"
	}
	neg := i < 0
	if neg {
		i = -i
	}
	for i > 0 {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
	}
	if neg {
		n--
		b[n] = '-'
	}
	return string(b[n:])
}
