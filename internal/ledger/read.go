package ledger

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
)

func (l *Ledger) account(ctx context.Context, q store.Querier, id string) (AccountInfo, error) {
	var a AccountInfo
	var unb int
	var created int64
	err := q.QueryRowContext(ctx, `SELECT id, kind, currency, floor_fen, unbounded, status, label, balance_fen, pending_fen, version, created_at
		FROM ledger_accounts WHERE id = $1`, id).Scan(&a.ID, &a.Kind, &a.Currency, &a.Floor, &unb, &a.Status, &a.Label,
		&a.Balance, &a.Pending, &a.Version, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return AccountInfo{}, unknownAccount(id)
	}
	if err != nil {
		return AccountInfo{}, dbErr(err)
	}
	a.Unbounded = unb != 0
	a.Available = a.Balance - a.Pending
	a.CreatedAt = time.UnixMilli(created).UTC()
	return a, nil
}

// Balance returns an account with its balances (unknown_account if none).
func (l *Ledger) Balance(ctx context.Context, id string) (AccountInfo, error) {
	return l.account(ctx, l.db.R, id)
}

// GetTransfer returns one journal entry by id.
func (l *Ledger) GetTransfer(ctx context.Context, id string) (Transfer, error) {
	seq, ok := parseID(id)
	if !ok {
		return Transfer{}, apperr.Newf(apperr.NotFound, "no such transfer", "交易不存在")
	}
	return l.entryWhere(ctx, `seq = $1`, seq)
}

// GetTransferByKey returns the journal entry applied under an
// idempotency key (not_found if none was).
func (l *Ledger) GetTransferByKey(ctx context.Context, key string) (Transfer, error) {
	return l.entryWhere(ctx, `idem_key = $1`, key)
}

// entryWhere reads the one journal entry matching cond ($1 = arg).
func (l *Ledger) entryWhere(ctx context.Context, cond string, arg any) (Transfer, error) {
	e, err := scanEntry(l.db.QueryRow(ctx, `SELECT `+entryCols+` FROM ledger_journal WHERE `+cond, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return Transfer{}, apperr.Newf(apperr.NotFound, "no such transfer", "交易不存在")
	}
	if err != nil {
		return Transfer{}, dbErr(err)
	}
	return e.transfer(), nil
}

// Reversed returns how much of transfer id its reversals have returned,
// leaving out the reversal made under the key except (if not empty): what
// a caller that reverses under its own key sees others to have reversed.
func (l *Ledger) Reversed(ctx context.Context, id, except string) (int64, error) {
	seq, ok := parseID(id)
	if !ok {
		return 0, apperr.Newf(apperr.NotFound, "no such transfer", "交易不存在")
	}
	// ref <> 0 lets the planner use the partial index ledger_journal_ref.
	var n int64
	err := l.db.QueryRow(ctx, `SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM ledger_journal
		WHERE type = 'reversal' AND ref <> 0 AND ref = $1 AND COALESCE(idem_key, '') <> $2`, seq, except).Scan(&n)
	if err != nil {
		return 0, dbErr(err)
	}
	return n, nil
}

// GetHold returns a hold and its current status. A hold past its timeout
// that nobody has touched yet is reported as expired.
func (l *Ledger) GetHold(ctx context.Context, id string) (HoldInfo, error) {
	seq, ok := parseID(id)
	if !ok {
		return HoldInfo{}, apperr.Newf(apperr.NotFound, "no such hold", "预授权不存在")
	}
	var h HoldInfo
	var exp, res int64
	err := l.db.QueryRow(ctx, `SELECT debit, credit, amount, expires_at, status, resolved_seq FROM ledger_holds WHERE id = $1`, seq).
		Scan(&h.Debit, &h.Credit, &h.Amount, &exp, &h.Status, &res)
	if errors.Is(err, sql.ErrNoRows) {
		return HoldInfo{}, apperr.Newf(apperr.NotFound, "no such hold", "预授权不存在")
	}
	if err != nil {
		return HoldInfo{}, dbErr(err)
	}
	h.ID, h.ExpiresAt, h.ResolvedBy = id, time.UnixMilli(exp).UTC(), refID(res)
	if h.Status == HoldPending && exp <= l.opt.Now().UnixMilli() {
		h.Status = HoldExpired
	}
	return h, nil
}

// StatementEntry is one movement on an account.
type StatementEntry struct {
	Transfer
	// Delta is the signed change to the account (credit +, debit -);
	// BalanceAfter the account's balance right after.
	Delta        int64
	BalanceAfter int64
}

// Statement lists the balance movements (transfers, posted holds,
// reversals) of an account with at in [from, to), oldest first, with the
// running balance. A zero from/to is open. cursor is "" or the Next of the
// previous page; limit is 1..1000 (default 100).
func (l *Ledger) Statement(ctx context.Context, accountID string, from, to time.Time, cursor string, limit int) ([]StatementEntry, string, error) {
	if limit <= 0 {
		limit = 100
	}
	if limit > 1000 {
		return nil, "", invalid("limit", "limit is at most 1000", "每页最多 1000 条")
	}
	var after int64
	if cursor != "" {
		n, err := strconv.ParseInt(cursor, 10, 64)
		if err != nil || n < 0 {
			return nil, "", invalid("cursor", "the cursor is not valid", "分页游标无效")
		}
		after = n
	}
	lo, hi := int64(-1<<62), int64(1<<62)
	if !from.IsZero() {
		lo = from.UnixMilli()
	}
	if !to.IsZero() {
		hi = to.UnixMilli()
	}
	if _, err := l.account(ctx, l.db.R, accountID); err != nil {
		return nil, "", err
	}
	if chained(accountID) {
		return l.chainStatement(ctx, accountID, after, lo, hi, limit)
	}
	// Two index range scans (debit side, credit side), merged by seq.
	get := func(col string) ([]*entry, error) {
		rows, err := l.db.R.QueryContext(ctx, statementSQL(col), accountID, after, lo, hi, limit+1)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out []*entry
		for rows.Next() {
			e, err := scanEntry(rows)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		return out, rows.Err()
	}
	ds, err := get("debit")
	if err != nil {
		return nil, "", dbErr(err)
	}
	cs, err := get("credit")
	if err != nil {
		return nil, "", dbErr(err)
	}
	var out []StatementEntry
	for len(out) < limit+1 && (len(ds) > 0 || len(cs) > 0) {
		var e *entry
		var debit bool
		if len(cs) == 0 || (len(ds) > 0 && ds[0].seq < cs[0].seq) {
			e, ds, debit = ds[0], ds[1:], true
		} else {
			e, cs = cs[0], cs[1:]
		}
		out = append(out, statementEntry(e, debit))
	}
	out, next := statementPage(out, limit)
	return out, next, nil
}

func statementEntry(e *entry, debit bool) StatementEntry {
	se := StatementEntry{Transfer: e.transfer()}
	if debit {
		se.Delta, se.BalanceAfter = -e.amount, e.debitAfter
	} else {
		se.Delta, se.BalanceAfter = e.amount, e.creditAfter
	}
	return se
}

// statementPage cuts up to limit+1 entries, oldest first, to a page of
// limit and the cursor of the next page ("" when this is the last).
func statementPage(out []StatementEntry, limit int) ([]StatementEntry, string) {
	if len(out) <= limit {
		return out, ""
	}
	out = out[:limit]
	id, _ := parseID(out[limit-1].ID)
	return out, strconv.FormatInt(id, 10)
}

// chained reports whether an account's entries are found through its
// chain of moving entries (residents' wallets and medical accounts) rather
// than the journal's indexes, which leave them out (migration 0031).
func chained(id string) bool {
	return strings.HasPrefix(id, WalletID("")) || strings.HasPrefix(id, MedicalID(""))
}

// statementSQL reads a page of an indexed account's moving entries on
// one side (col: "debit" or "credit").
func statementSQL(col string) string {
	return `SELECT ` + entryCols + ` FROM ledger_journal WHERE ` + col + ` = $1 AND ` + indexed(col) + ` AND seq > $2
			AND type IN ('transfer', 'post', 'reversal') AND at >= $3 AND at < $4 ORDER BY seq LIMIT $5`
}

// indexed is the condition of the partial index on col ("debit" or
// "credit"); a query must state it to use that index.
func indexed(col string) string { return `substr(` + col + `, 1, 2) NOT IN ('w:', 'm:')` }

// chainSQL walks a chained account's movements ($1) from its last one
// back to the cursor ($2), in the database (one primary-key look-up a
// step), and returns each step's seq, the step it leads to, its time, and
// whether it names the account. The walk never goes forward (a corrupt
// link ends it, and chainStatement reports it).
const chainSQL = `WITH RECURSIVE c(seq, nxt, at, named) AS (
	SELECT j.seq, CASE WHEN j.debit = $1 THEN j.debit_prev ELSE j.credit_prev END, j.at,
		CASE WHEN j.debit = $1 OR j.credit = $1 THEN 1 ELSE 0 END
	FROM ledger_accounts a JOIN ledger_journal j ON j.seq = a.last_seq WHERE a.id = $1 AND a.last_seq > $2
	UNION ALL
	SELECT j.seq, CASE WHEN j.debit = $1 THEN j.debit_prev ELSE j.credit_prev END, j.at,
		CASE WHEN j.debit = $1 OR j.credit = $1 THEN 1 ELSE 0 END
	FROM c JOIN ledger_journal j ON j.seq = c.nxt WHERE c.nxt > $2 AND c.nxt < c.seq AND c.named = 1
) SELECT seq, nxt, at, named FROM c ORDER BY seq DESC`

// chainStatement is Statement for a chained account: it walks the
// account's chain from its last movement back to the cursor (chainSQL),
// picks the oldest limit+1 movements in [lo, hi), and reads those
// entries. Two queries whatever the account's history; a resident's
// history is a few movements a day.
func (l *Ledger) chainStatement(ctx context.Context, id string, after, lo, hi int64, limit int) ([]StatementEntry, string, error) {
	rows, err := l.db.R.QueryContext(ctx, chainSQL, id, after)
	if err != nil {
		return nil, "", dbErr(err)
	}
	var picked []any // newest first
	last := struct{ seq, nxt int64 }{}
	broken := ""
	for rows.Next() {
		var seq, nxt, at int64
		var named int
		if err := rows.Scan(&seq, &nxt, &at, &named); err != nil {
			rows.Close()
			return nil, "", dbErr(err)
		}
		switch {
		case named != 1:
			broken = fmt.Sprintf("chain entry %d names other accounts", seq)
		case nxt >= seq:
			broken = fmt.Sprintf("chain entry %d points forward to %d", seq, nxt)
		case at >= lo && at < hi:
			picked = append(picked, seq)
		}
		last.seq, last.nxt = seq, nxt
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, "", dbErr(err)
	}
	if broken == "" && last.seq != 0 && last.nxt > after {
		broken = fmt.Sprintf("chain entry %d leads to %d, which is not in the journal", last.seq, last.nxt)
	}
	if broken != "" {
		return nil, "", apperr.Wrap(apperr.Internal, fmt.Errorf("ledger: account %s: %s", id, broken))
	}
	if len(picked) > limit+1 {
		picked = picked[len(picked)-(limit+1):]
	}
	if len(picked) == 0 {
		return nil, "", nil
	}
	slices.Reverse(picked)
	var sb strings.Builder
	sb.WriteString(`SELECT ` + entryCols + ` FROM ledger_journal WHERE seq IN (`)
	placeholders(&sb, l.db.Dialect == store.Postgres, 1, len(picked))
	sb.WriteString(`) ORDER BY seq`)
	rows, err = l.db.R.QueryContext(ctx, sb.String(), picked...)
	if err != nil {
		return nil, "", dbErr(err)
	}
	defer rows.Close()
	out := make([]StatementEntry, 0, len(picked))
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			return nil, "", dbErr(err)
		}
		out = append(out, statementEntry(e, e.debit == id))
	}
	if err := rows.Err(); err != nil {
		return nil, "", dbErr(err)
	}
	out, next := statementPage(out, limit)
	return out, next, nil
}

// CheckResult is the outcome of Check.
type CheckResult struct {
	Accounts  int64
	Transfers int64 // journal entries
	SumFen    int64 // sum of all balances: 0 when the books balance
	JournalOK bool  // the hash chain verifies end to end
	Problems  []string
}

// OK reports whether the ledger passed every check.
func (r CheckResult) OK() bool { return r.JournalOK && r.SumFen == 0 && len(r.Problems) == 0 }

// Check verifies the ledger in one consistent snapshot: the balances sum
// to zero; every balance equals its postings (credits − debits) and every
// pending amount its pending holds; each entry's running balances are
// right; the SM3 hash chain verifies from the first entry to the chain
// head. Problems lists what is wrong (empty when all is well). Its time
// grows with the journal, so on PostgreSQL it is not bounded by the
// statement timeout of requests; ctx bounds it.
func (l *Ledger) Check(ctx context.Context) (CheckResult, error) {
	var opts *sql.TxOptions
	if l.db.Dialect == store.Postgres {
		opts = &sql.TxOptions{Isolation: sql.LevelRepeatableRead, ReadOnly: true}
	}
	tx, err := l.db.R.BeginTx(ctx, opts)
	if err != nil {
		return CheckResult{}, dbErr(err)
	}
	defer tx.Rollback()
	if err := l.db.LiftStatementTimeout(ctx, tx); err != nil {
		return CheckResult{}, dbErr(err)
	}
	r, err := check(ctx, tx)
	if err != nil {
		return CheckResult{}, dbErr(err)
	}
	return r, nil
}

// RequestCheckLimit bounds a check run for one HTTP request (CheckWithin),
// under the node's 60 s write timeout.
const RequestCheckLimit = 50 * time.Second

// CheckWithin is Check bounded by d: a check that cannot finish in time
// (a large journal) is cancelled and answered unavailable, pointing to the
// command that runs it without a bound, instead of reading on after its
// caller has stopped waiting.
func (l *Ledger) CheckWithin(ctx context.Context, d time.Duration) (CheckResult, error) {
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	r, err := l.Check(cctx)
	if err != nil && ctx.Err() == nil && cctx.Err() != nil {
		return CheckResult{}, apperr.Newf(apperr.Unavailable,
			fmt.Sprintf("the ledger check did not finish within %v; run it beside the node without a time bound: yikatong ledger check", d),
			fmt.Sprintf("账本核对未能在 %v 内完成；请在节点旁运行不限时的核对：yikatong ledger check", d))
	}
	return r, err
}

func check(ctx context.Context, tx *sql.Tx) (CheckResult, error) {
	var r CheckResult
	problem := func(f string, a ...any) {
		if len(r.Problems) < 100 {
			r.Problems = append(r.Problems, fmt.Sprintf(f, a...))
		}
	}
	var headSeq int64
	var headHash []byte
	if err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM ledger_chain WHERE id = 1`).Scan(&headSeq, &headHash); err != nil {
		return r, err
	}
	type bal struct{ balance, pending, postings, holds, lastSeq, last int64 }
	accts := map[string]*bal{}
	rows, err := tx.QueryContext(ctx, `SELECT id, balance_fen, pending_fen, last_seq FROM ledger_accounts`)
	if err != nil {
		return r, err
	}
	total := new(big.Int)
	for rows.Next() {
		var id string
		b := &bal{}
		if err := rows.Scan(&id, &b.balance, &b.pending, &b.lastSeq); err != nil {
			rows.Close()
			return r, err
		}
		accts[id] = b
		r.Accounts++
		total.Add(total, big.NewInt(b.balance))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return r, err
	}
	if !total.IsInt64() {
		problem("the balances sum to %s fen, not 0", total)
		r.SumFen = math.MaxInt64
	} else {
		r.SumFen = total.Int64()
	}
	if r.SumFen != 0 {
		problem("the balances sum to %d fen, not 0", r.SumFen)
	}
	rows, err = tx.QueryContext(ctx, `SELECT debit, SUM(amount) FROM ledger_holds WHERE status = 'pending' GROUP BY debit`)
	if err != nil {
		return r, err
	}
	for rows.Next() {
		var id string
		var n int64
		if err := rows.Scan(&id, &n); err != nil {
			rows.Close()
			return r, err
		}
		if b := accts[id]; b != nil {
			b.holds = n
		} else {
			problem("pending hold on unknown account %q", id)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return r, err
	}
	// Walk the journal once: chain, postings, running balances.
	rows, err = tx.QueryContext(ctx, `SELECT `+entryCols+` FROM ledger_journal ORDER BY seq`)
	if err != nil {
		return r, err
	}
	prev := make([]byte, 32)
	r.JournalOK = true
	var want int64 = 1
	for rows.Next() {
		e, err := scanEntry(rows)
		if err != nil {
			rows.Close()
			return r, err
		}
		r.Transfers++
		if e.seq != want {
			r.JournalOK = false
			problem("journal entry %d follows %d: entries missing", e.seq, want-1)
		}
		want = e.seq + 1
		if h := e.chainHash(prev); !bytes.Equal(h, e.hash) {
			if r.JournalOK {
				problem("journal hash chain broken at entry %d", e.seq)
			}
			r.JournalOK = false
		}
		prev = e.hash
		if !moves(e.typ) {
			if e.debitPrev != 0 || e.creditPrev != 0 {
				problem("entry %d (%s) is chained to entries %d/%d", e.seq, e.typ, e.debitPrev, e.creditPrev)
			}
			continue
		}
		d, c := accts[e.debit], accts[e.credit]
		if d == nil || c == nil {
			problem("entry %d names an unknown account", e.seq)
			continue
		}
		d.postings -= e.amount
		c.postings += e.amount
		if d.postings != e.debitAfter || c.postings != e.creditAfter {
			problem("entry %d: running balances %d/%d, postings give %d/%d", e.seq, e.debitAfter, e.creditAfter, d.postings, c.postings)
		}
		if e.debitPrev != d.last || e.creditPrev != c.last {
			problem("entry %d: chained to entries %d/%d, the accounts' previous entries are %d/%d", e.seq, e.debitPrev, e.creditPrev, d.last, c.last)
		}
		d.last, c.last = e.seq, e.seq
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return r, err
	}
	if r.Transfers != headSeq || (headSeq > 0 && !bytes.Equal(prev, headHash)) {
		r.JournalOK = false
		problem("the chain head (entry %d) does not match the journal's last entry", headSeq)
	}
	for id, b := range accts {
		if b.balance != b.postings {
			problem("account %q: balance %d, postings %d", id, b.balance, b.postings)
		}
		if b.pending != b.holds {
			problem("account %q: pending %d, pending holds %d", id, b.pending, b.holds)
		}
		if b.lastSeq != b.last {
			problem("account %q: last entry %d, the journal's is %d", id, b.lastSeq, b.last)
		}
	}
	return r, nil
}
