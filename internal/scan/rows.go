package scan

import (
	"context"
	"database/sql"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/store"
)

// rows is the scans table's ledger.Attacher: a scan's row rides in the
// ledger's group-commit transaction that applies its transfers (one
// commit per charging scan, shared by the whole batch). Scans that move no
// money (identify-only scans, declines) ride along the same way, with no
// transfers, so every new scan row goes through one committer.
//
// Claim, per batch and under the batch's lock, reads in IN queries: the
// rows already stored under the batch's (terminal, key) pairs (refusal:
// dupKey, the caller answers from the stored row), the codes' nonces
// already used (refusal: replayed), the status of the cards the scans were
// decided on (refusal: stale card, the caller forgets its cached card and
// decides again), and for offline records their terminals' marks
// (refusal: errMarkMoved, another upload has moved the mark since the
// record's order was checked, and it is out of order after that upload;
// ApplyBatch checks it again). A key or nonce used twice inside the batch
// refuses only the later scan. Write inserts the rows of the batch in
// multi-row INSERTs; each row is built from the ledger's outcome (the
// accepted answer carries the balance after the fare; a refused fare is
// stored as a declined scan with the ledger's reason, keeping its nonce,
// so the code cannot be presented again). The UNIQUE index on cti and the
// primary key stay the authority across processes: a row another process
// committed after Claim read fails the INSERT, and the ledger re-runs the
// batch, whose Claim then sees it.
type rows struct {
	s     *Service
	pg    bool
	stmts store.WriterStmts
}

// A row to write (Attachment.Value).
type attachRow struct {
	rec *record
	// card the scan was decided on ("" = none, e.g. another city's code).
	cardNumber  string
	cardStatus  string
	cardChanged int64
	// build returns the final record for the ledger's outcome, or nil to
	// write nothing. nil build: write rec as it is.
	build func(trs []ledger.Transfer, err error) *record
	// written is what Write stored.
	written *record
	// update: the row is stored already, pending (left by an older
	// version); Claim admits it only while it is still pending, and Write
	// finalises it with an UPDATE instead of inserting it.
	update bool
	// debt > 0: the row advances this much "ride first, pay later" credit
	// to residentID; Claim admits it only if the resident's outstanding
	// debt (stored rows, and earlier rows of the batch) plus debt stays
	// within limit (refusal: errOverLimit).
	debt, limit int64
	// mark: a new offline record's row, its order checked against its
	// terminal's mark as mark says; Claim admits it only if the mark, read
	// under the batch's lock and moved by the earlier rows of the batch,
	// is one it was checked against, or one it passes the checks against
	// (refusal: errMarkMoved).
	mark *markCheck
}

// Refusals set by Claim.
type dupKeyErr struct{ existing *record } // key already stored (existing nil: earlier in this batch)

func (e *dupKeyErr) Error() string { return "scan: idempotency key already used" }

var (
	errReplayed  = errors.New("scan: the code was used already")
	errStaleCard = errors.New("scan: the card changed since it was read")
	// errKeyPending: the key was taken by an earlier row of the same batch
	// that then wrote nothing (the caller may try again).
	errKeyPending = errors.New("scan: the key's row was not written")
	errOverLimit  = errors.New("scan: the credit would exceed the resident's limit")
	// errMarkMoved: another upload of the terminal moved its mark since
	// the record's order was checked, to a record it is out of order
	// with (the caller checks it again, and reports why).
	errMarkMoved = errors.New("scan: the terminal's offline mark moved since the record was checked")
)

// owedSQL is a resident's outstanding offline debt ($1: resident id): the
// debt advanced on accepted scans (index scans_debt) minus what later
// top-ups collected (scan_debt_collections, collect.go).
const owedSQL = `SELECT COALESCE(SUM(debt_fen), 0) - (SELECT COALESCE(SUM(amount_fen), 0) FROM scan_debt_collections WHERE resident_id = $1)
	FROM scans WHERE resident_id = $1 AND debt_fen > 0 AND decision = 'accepted'`

const (
	rowCols  = 16
	maxClass = 256
)

func class(n int) int { return store.SizeClass(n) }

func floorClass(n int) int { return store.FloorSizeClass(n, maxClass) }

func ph(sb *strings.Builder, pg bool, i int) {
	if pg {
		sb.WriteByte('$')
		sb.WriteString(strconv.Itoa(i))
		return
	}
	sb.WriteByte('?')
}

func tuples(sb *strings.Builder, pg bool, n, width int) {
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteByte('(')
		for j := 0; j < width; j++ {
			if j > 0 {
				sb.WriteString(", ")
			}
			ph(sb, pg, i*width+j+1)
		}
		sb.WriteByte(')')
	}
}

func keysSQL(pg bool, n int) string {
	var sb strings.Builder
	sb.WriteString(`SELECT ` + recordCols + ` FROM scans WHERE (terminal_id, idem_key) IN (VALUES `)
	tuples(&sb, pg, n, 2)
	sb.WriteByte(')')
	return sb.String()
}

func listSQL(pg bool, prefix string, n int) string {
	var sb strings.Builder
	sb.WriteString(prefix)
	sb.WriteByte('(')
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteString(", ")
		}
		ph(&sb, pg, i+1)
	}
	sb.WriteByte(')')
	return sb.String()
}

// Reads by nonce search the partial unique index scans_cti (migration
// 0048); they say "cti IS NOT NULL" so that it plainly applies (both
// planners also infer it from the comparison).
const (
	ctiPrefix      = `SELECT cti FROM scans WHERE cti IS NOT NULL AND cti IN `
	legacyNonceSQL = `SELECT COUNT(*) FROM scans WHERE cti IS NOT NULL AND cti = $1`
	cardPrefix     = `SELECT number, status, status_changed_at FROM cards WHERE number IN `
	markPrefix     = `SELECT id, offline_seq, offline_at FROM terminals WHERE id IN `
)

func insertSQL(pg bool, n int) string {
	var sb strings.Builder
	sb.WriteString(`INSERT `)
	if !pg {
		// A failed batch is rolled back whole: no statement journal.
		sb.WriteString(`OR ROLLBACK `)
	}
	sb.WriteString(`INTO scans(terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, offline, plan, answer, at) VALUES `)
	tuples(&sb, pg, n, rowCols)
	return sb.String()
}

// newRows prepares the statements of every size class on SQLite's writer
// connection (store.WriterStmts).
func newRows(ctx context.Context, s *Service) (*rows, error) {
	r := &rows{s: s, pg: s.DB.Dialect == store.Postgres}
	var texts []string
	if !r.pg {
		for c := 1; c <= maxClass; c <<= 1 {
			texts = append(texts, keysSQL(false, c), listSQL(false, ctiPrefix, c), listSQL(false, cardPrefix, c), listSQL(false, markPrefix, c), insertSQL(false, c))
		}
		texts = append(texts, markSQL)
	}
	var err error
	if r.stmts, err = store.PrepareWriter(ctx, s.DB, texts); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rows) close() { r.stmts.Close() }

// stmt is one statement of Claim or Write: its text and arguments, and
// for a read what each row does.
type stmt struct {
	sql  string
	args []any
	each func(scan func(dest ...any) error) error
}

// in appends to out sqlFor(class) over args (width values per item) in
// chunks, each padded to its size class by repeating its last item.
func in(out []stmt, sqlFor func(int) string, args []any, width int, each func(scan func(dest ...any) error) error) []stmt {
	for len(args) > 0 {
		n := min(maxClass, len(args)/width)
		c := class(n)
		chunk := make([]any, 0, c*width)
		chunk = append(chunk, args[:n*width]...)
		for len(chunk) < c*width {
			chunk = append(chunk, args[(n-1)*width:n*width]...)
		}
		out = append(out, stmt{sql: sqlFor(c), args: chunk, each: each})
		args = args[n*width:]
	}
	return out
}

// run runs the read q in tx, prepared when its text is in stmts (a nil
// set runs it unprepared).
func (q stmt) run(ctx context.Context, tx *sql.Tx, stmts store.WriterStmts) error {
	rs, err := stmts.Query(ctx, tx, q.sql, q.args...)
	if err != nil {
		return err
	}
	for rs.Next() {
		if err := q.each(rs.Scan); err != nil {
			rs.Close()
			return err
		}
	}
	if err := rs.Close(); err != nil {
		return err
	}
	return rs.Err()
}

type tk struct{ terminal, key string }

type cardState struct {
	status  string
	changed int64
}

// claim is what Claim's reads found, and decides the refusals from it.
type claim struct {
	r      *rows
	atts   []*ledger.Attachment
	stored map[tk]*record
	used   map[string]bool
	cards  map[string]cardState
	// owed: outstanding debt of the residents the batch advances credit
	// to, read under the batch's lock: two batches (or two rows of one)
	// cannot both pass the limit.
	owed map[string]int64
	// marks: the offline marks of the terminals of the batch's new offline
	// records, read under the batch's lock (no row: none).
	marks map[string]markState
}

// newClaim returns the claim of atts and the reads that fill it.
func (r *rows) newClaim(atts []*ledger.Attachment) (*claim, []stmt) {
	c := &claim{r: r, atts: atts, stored: map[tk]*record{}, used: map[string]bool{}, cards: map[string]cardState{}, owed: map[string]int64{}}
	var keyArgs, ctiArgs, cardArgs, termArgs []any
	seenCard, seenDebtor := map[string]bool{}, map[string]bool{}
	var owedOf []string
	for _, a := range atts {
		w := a.Value.(*attachRow)
		keyArgs = append(keyArgs, w.rec.terminal, w.rec.key)
		if w.rec.cti != "" {
			ctiArgs = append(ctiArgs, w.rec.cti)
		}
		if w.rec.legacyCTI != "" {
			ctiArgs = append(ctiArgs, w.rec.legacyCTI)
		}
		if w.cardNumber != "" && !seenCard[w.cardNumber] {
			seenCard[w.cardNumber] = true
			cardArgs = append(cardArgs, w.cardNumber)
		}
		if w.debt > 0 && !seenDebtor[w.rec.residentID] {
			seenDebtor[w.rec.residentID] = true
			owedOf = append(owedOf, w.rec.residentID)
		}
		if w.mark != nil && !w.update {
			if c.marks == nil {
				c.marks = map[string]markState{}
			}
			if _, ok := c.marks[w.rec.terminal]; !ok {
				c.marks[w.rec.terminal] = markState{}
				termArgs = append(termArgs, w.rec.terminal)
			}
		}
	}
	var reads []stmt
	reads = in(reads, func(n int) string { return keysSQL(r.pg, n) }, keyArgs, 2, func(scan func(...any) error) error {
		rec, err := scanRecord(scanFunc(scan))
		if err == nil {
			c.stored[tk{rec.terminal, rec.key}] = rec
		}
		return err
	})
	reads = in(reads, func(n int) string { return listSQL(r.pg, ctiPrefix, n) }, ctiArgs, 1, func(scan func(...any) error) error {
		var cti string
		err := scan(&cti)
		c.used[cti] = true
		return err
	})
	reads = in(reads, func(n int) string { return listSQL(r.pg, cardPrefix, n) }, cardArgs, 1, func(scan func(...any) error) error {
		var n string
		var st cardState
		err := scan(&n, &st.status, &st.changed)
		c.cards[n] = st
		return err
	})
	reads = in(reads, func(n int) string { return listSQL(r.pg, markPrefix, n) }, termArgs, 1, func(scan func(...any) error) error {
		var id string
		var seq sql.NullInt64
		var at int64
		err := scan(&id, &seq, &at)
		if err == nil && seq.Valid {
			c.marks[id] = markState{seq: seq.Int64, at: at, set: true}
		}
		return err
	})
	for _, id := range owedOf {
		reads = append(reads, stmt{sql: owedSQL, args: []any{id}, each: func(scan func(...any) error) error {
			var n int64
			err := scan(&n)
			c.owed[id] = n
			return err
		}})
	}
	return c, reads
}

// scanFunc makes a Scan method of a row's scan function.
type scanFunc func(dest ...any) error

func (f scanFunc) Scan(dest ...any) error { return f(dest...) }

// decide sets the refusals of the claim's attachments.
func (c *claim) decide() error {
	inBatch := map[tk]bool{}
	for _, a := range c.atts {
		w := a.Value.(*attachRow)
		k := tk{w.rec.terminal, w.rec.key}
		switch {
		case w.update && (c.stored[k] == nil || c.stored[k].state != statePending):
			a.Refused = &dupKeyErr{existing: c.stored[k]}
		case w.update && inBatch[k]:
			a.Refused = &dupKeyErr{}
		case w.update: // the pending row holds its nonce already
		case c.stored[k] != nil:
			a.Refused = &dupKeyErr{existing: c.stored[k]}
		case inBatch[k]:
			a.Refused = &dupKeyErr{}
		case w.mark != nil && !w.mark.admits(c.marks[w.rec.terminal], w.rec.seq, w.rec.at):
			// Its order was checked against a mark another upload moved
			// since, and it is out of order after that upload's records:
			// not to be applied at all, so this comes before the refusals
			// that decide it again (replayed, stale card) or limit its
			// credit.
			a.Refused = errMarkMoved
		case w.rec.cti != "" && (c.used[w.rec.cti] || w.rec.legacyCTI != "" && c.used[w.rec.legacyCTI]):
			a.Refused = errReplayed
		case w.cardNumber != "" && (c.cards[w.cardNumber].status != w.cardStatus || c.cards[w.cardNumber].changed != w.cardChanged):
			a.Refused = errStaleCard
			c.r.s.cards.forget(w.cardNumber)
		}
		if a.Refused == nil && w.debt > 0 {
			if c.owed[w.rec.residentID]+w.debt > w.limit {
				a.Refused = errOverLimit
			} else {
				// Counted even if the ledger then refuses its transfers: a
				// later row of the batch may be declined that could have
				// passed, never the other way round.
				c.owed[w.rec.residentID] += w.debt
			}
		}
		if a.Refused != nil {
			continue
		}
		if w.mark != nil && !w.update && w.rec.numbered {
			// The row moves the mark (Write: markSQL) for the later rows.
			if m := c.marks[w.rec.terminal]; !m.set || w.rec.seq > m.seq {
				c.marks[w.rec.terminal] = markState{seq: w.rec.seq, at: w.rec.at, set: true}
			}
		}
		inBatch[k] = true
		if w.rec.cti != "" {
			c.used[w.rec.cti] = true
		}
	}
	return nil
}

// Claim implements ledger.Attacher.
func (r *rows) Claim(ctx context.Context, tx *sql.Tx, atts []*ledger.Attachment) error {
	c, reads := r.newClaim(atts)
	for _, q := range reads {
		if err := q.run(ctx, tx, r.stmts); err != nil {
			return err
		}
	}
	return c.decide()
}

// QueueClaim implements ledger.PipelineAttacher: Claim's reads, queued.
func (r *rows) QueueClaim(q ledger.Queue, atts []*ledger.Attachment) func() error {
	c, reads := r.newClaim(atts)
	for _, rd := range reads {
		q.Query(rd.sql, rd.args, rd.each)
	}
	return c.decide
}

// writes builds the rows of atts from the ledger's outcomes (setting each
// one's written) and returns the statements that store them: an UPDATE per
// pending row finalised, multi-row INSERTs for the rest, and an UPDATE of
// the mark of each terminal whose numbered offline records are among them.
func (r *rows) writes(atts []*ledger.Attachment) []stmt {
	var out []stmt
	args := make([]any, 0, len(atts)*rowCols)
	n := 0
	var marks map[string]*record // terminal → its written record with the highest seq
	for _, a := range atts {
		w := a.Value.(*attachRow)
		rec := w.rec
		if w.build != nil {
			rec = w.build(a.Transfers, a.Err)
		}
		w.written = rec
		if rec == nil {
			continue
		}
		if rec.numbered {
			if marks == nil {
				marks = map[string]*record{}
			}
			if m := marks[rec.terminal]; m == nil || rec.seq > m.seq {
				marks[rec.terminal] = rec
			}
		}
		if w.update {
			out = append(out, stmt{sql: `UPDATE scans SET state = $3, decision = $4, reason = $5, charged_fen = $6, debt_fen = $7, answer = $8, plan = $9
				WHERE terminal_id = $1 AND idem_key = $2 AND state = 'pending'`,
				args: []any{rec.terminal, rec.key, rec.state, rec.decision, rec.reason, rec.charged, rec.debt, rec.answer, rec.plan}})
			continue
		}
		n++
		args = append(args, rec.terminal, rec.key, rec.hash, nullable(rec.cti), rec.provider, rec.scenario, rec.residentID, rec.state, rec.decision, rec.reason,
			rec.charged, rec.debt, b2i(rec.offline), rec.plan, rec.answer, rec.at)
	}
	for n > 0 {
		c := floorClass(n)
		out = append(out, stmt{sql: insertSQL(r.pg, c), args: args[:c*rowCols]})
		args, n = args[c*rowCols:], n-c
	}
	for _, id := range slices.Sorted(maps.Keys(marks)) { // in id order: one lock order for every batch
		m := marks[id]
		out = append(out, stmt{sql: markSQL, args: []any{m.terminal, m.seq, m.at}})
	}
	return out
}

// markSQL moves a terminal's offline mark forward (never back: of two
// uploads at once, the higher stays).
const markSQL = `UPDATE terminals SET offline_seq = $2, offline_at = $3 WHERE id = $1 AND (offline_seq IS NULL OR offline_seq < $2)`

// Write implements ledger.Attacher.
func (r *rows) Write(ctx context.Context, tx *sql.Tx, atts []*ledger.Attachment) error {
	for _, w := range r.writes(atts) {
		if _, err := r.stmts.Exec(ctx, tx, w.sql, w.args...); err != nil {
			return err
		}
	}
	return nil
}

// QueueWrite implements ledger.PipelineAttacher: Write's statements,
// queued.
func (r *rows) QueueWrite(q ledger.Queue, atts []*ledger.Attachment) error {
	for _, w := range r.writes(atts) {
		q.Exec(w.sql, w.args...)
	}
	return nil
}
