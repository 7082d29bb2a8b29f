package ledger

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"

	"github.com/yikatong/yikatong/internal/store"
)

// The batch statements have a variable number of rows. To keep the number
// of distinct SQL texts small (so they can be prepared once), every
// statement is built for a power-of-two size class: IN lists are padded to
// the class by repeating their last value (harmless in IN), and multi-row
// INSERTs and UPDATEs are split into power-of-two pieces (37 rows = 32 + 4
// + 1). On SQLite the statements of every class are prepared when the
// Ledger opens, on the single writer connection; preparing them inside a
// batch would need a second connection, which SQLite's writer pool does
// not have. On PostgreSQL, pgx caches prepared statements per connection
// by text, so the same small set of texts is enough.

const maxClass = 512

func class(n int) int { return store.SizeClass(n) }

func floorClass(n int) int { return store.FloorSizeClass(n, maxClass) }

// placeholders writes n parameter markers: "$from, $from+1, …" on
// PostgreSQL, "?, ?, …" on SQLite. SQLite resolves each "$N" name through
// a linear list, which makes a statement with n named parameters cost
// O(n²) to prepare and bind (it was 70% of a batch's time); anonymous "?"
// parameters bind by position.
func placeholders(sb *strings.Builder, pg bool, from, n int) {
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteString(", ")
		}
		if !pg {
			sb.WriteByte('?')
			continue
		}
		sb.WriteByte('$')
		sb.WriteString(strconv.Itoa(from + i))
	}
}

// inSQL is prefix || "(" n placeholders ")" || suffix.
func inSQL(pg bool, prefix, suffix string, n int) string {
	var sb strings.Builder
	sb.WriteString(prefix)
	sb.WriteByte('(')
	placeholders(&sb, pg, 1, n)
	sb.WriteByte(')')
	sb.WriteString(suffix)
	return sb.String()
}

// The IN queries of a batch (prefix, suffix).
var inQueries = [][2]string{
	{`SELECT ` + entryCols + ` FROM ledger_journal WHERE idem_key IN `, ``},
	{holdCols + `WHERE id IN `, ``},
	{`SELECT ` + entryCols + ` FROM ledger_journal WHERE seq IN `, ``},
	{`SELECT ref, SUM(amount) FROM ledger_journal WHERE type = 'reversal' AND ref <> 0 AND ref IN `, ` GROUP BY ref`},
	{acctSelect, ` ORDER BY id`},
	{acctSelect, ` ORDER BY id FOR UPDATE`},
	{holdCols + `WHERE status = 'pending' AND debit IN `, ` ORDER BY id`},
}

const (
	holdCols   = `SELECT id, debit, credit, amount, expires_at, status, resolved_seq FROM ledger_holds `
	acctSelect = `SELECT id, kind, currency, floor_fen, unbounded, status, balance_fen, pending_fen, last_seq FROM ledger_accounts WHERE id IN `
	chainHead  = `SELECT seq, hash FROM ledger_chain WHERE id = 1`
	chainSet   = `UPDATE ledger_chain SET seq = $1, hash = $2 WHERE id = 1`
)

// orRollback: on SQLite a multi-row statement that may fail a constraint
// keeps a statement journal so that it can undo just itself; for a batch
// that journal exceeds its 64 KiB memory budget and spills to a temporary
// file (a pwrite per page, a quarter of the write phase). A failed batch is
// rolled back whole anyway, so the batch's writes say OR ROLLBACK, which
// needs no statement journal.
func orRollback(pg bool) string {
	if pg {
		return ""
	}
	return "OR ROLLBACK "
}

const journalCols = 20

func journalInsertSQL(pg bool, n int) string {
	var sb strings.Builder
	sb.Grow(200 + n*journalCols*6)
	sb.WriteString(`INSERT ` + orRollback(pg) + `INTO ledger_journal(seq, idem_key, req_hash, type, kind, debit, credit, amount, currency, ref, link, debit_after, credit_after, memo, meta, at, expires_at, hash, debit_prev, credit_prev) VALUES `)
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteByte('(')
		placeholders(&sb, pg, i*journalCols+1, journalCols)
		sb.WriteByte(')')
	}
	return sb.String()
}

func holdInsertSQL(pg bool, n int) string {
	var sb strings.Builder
	sb.WriteString(`INSERT ` + orRollback(pg) + `INTO ledger_holds(id, debit, credit, amount, expires_at, status, resolved_seq) VALUES `)
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteByte('(')
		placeholders(&sb, pg, i*7+1, 7)
		sb.WriteByte(')')
	}
	return sb.String()
}

// acctUpdateSQL writes n accounts' balances in one statement.
func acctUpdateSQL(pg bool, n int) string {
	var sb strings.Builder
	sb.WriteString(`WITH v(id, bal, pend, last) AS (VALUES `)
	for i := 0; i < n; i++ {
		switch {
		case i == 0 && pg:
			sb.WriteString(`(CAST($1 AS TEXT), CAST($2 AS BIGINT), CAST($3 AS BIGINT), CAST($4 AS BIGINT))`)
		case pg:
			fmt.Fprintf(&sb, `, ($%d, $%d, $%d, $%d)`, i*4+1, i*4+2, i*4+3, i*4+4)
		case i == 0:
			sb.WriteString(`(?, ?, ?, ?)`)
		default:
			sb.WriteString(`, (?, ?, ?, ?)`)
		}
	}
	sb.WriteString(`) UPDATE ` + orRollback(pg) + `ledger_accounts SET balance_fen = v.bal, pending_fen = v.pend, last_seq = v.last, version = ledger_accounts.version + 1 FROM v WHERE ledger_accounts.id = v.id`)
	return sb.String()
}

// prepareAll prepares every batch statement of every size class on the
// SQLite writer connection (nothing on PostgreSQL).
func (l *Ledger) prepareAll(ctx context.Context) error {
	var texts []string
	if l.db.Dialect == store.SQLite {
		texts = []string{chainHead, chainSet, `PRAGMA data_version`}
		for c := 1; c <= maxClass; c <<= 1 {
			for _, q := range inQueries {
				if strings.HasSuffix(q[1], "FOR UPDATE") {
					continue // PostgreSQL only
				}
				texts = append(texts, inSQL(false, q[0], q[1], c))
			}
			texts = append(texts, journalInsertSQL(false, c), holdInsertSQL(false, c), acctUpdateSQL(false, c))
		}
	}
	var err error
	l.stmts, err = store.PrepareWriter(ctx, l.db, texts)
	return err
}

func (l *Ledger) closeStmts() {
	l.stmts.Close()
	l.stmts = nil
}

// exec and query run q in the batch's transaction, through the statement
// prepared for it when there is one.
func (b *batch) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return b.l.stmts.Exec(ctx, b.tx, q, args...)
}

func (b *batch) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return b.l.stmts.Query(ctx, b.tx, q, args...)
}

func (b *batch) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	return b.l.stmts.QueryRow(ctx, b.tx, q, args...)
}

// inQuery runs prefix || "(" placeholders ")" || suffix over args in
// chunks of at most maxClass, each padded to its size class.
func (b *batch) inQuery(ctx context.Context, prefix, suffix string, args []any, fn func(*sql.Rows) error) error {
	for len(args) > 0 {
		n := min(maxClass, len(args))
		c := class(n)
		chunk := args[:n:n]
		for len(chunk) < c {
			chunk = append(chunk, args[n-1])
		}
		rows, err := b.query(ctx, inSQL(b.pg, prefix, suffix, c), chunk...)
		if err != nil {
			return err
		}
		for rows.Next() {
			if err := fn(rows); err != nil {
				rows.Close()
				return err
			}
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if err := rows.Err(); err != nil {
			return err
		}
		args = args[n:]
	}
	return nil
}
