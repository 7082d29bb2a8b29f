package store

import (
	"context"
	"database/sql"
)

// WriterStmts are statements prepared once on SQLite's writer connection
// and run inside its write transactions (the ledger's batch and the rows
// attached to it). They must be prepared beforehand: SQLite has one writer
// connection, and a transaction holds it. Parsing a multi-row statement
// for every batch cost a tenth of a batch's time. On PostgreSQL the set is
// empty and statements run by text (pgx caches them itself); a text not in
// the set runs unprepared too.
type WriterStmts map[string]*sql.Stmt

// PrepareWriter prepares texts on db's writer connection (SQLite only).
func PrepareWriter(ctx context.Context, db *DB, texts []string) (WriterStmts, error) {
	s := WriterStmts{}
	if db.Dialect != SQLite {
		return s, nil
	}
	for _, q := range texts {
		if _, ok := s[q]; ok {
			continue
		}
		st, err := db.W.PrepareContext(ctx, q)
		if err != nil {
			s.Close()
			return nil, err
		}
		s[q] = st
	}
	return s, nil
}

// Close releases the prepared statements.
func (s WriterStmts) Close() {
	for _, st := range s {
		st.Close()
	}
}

// Exec runs q in tx, prepared when it is in the set.
func (s WriterStmts) Exec(ctx context.Context, tx *sql.Tx, q string, args ...any) (sql.Result, error) {
	if st := s[q]; st != nil {
		return tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return tx.ExecContext(ctx, q, args...)
}

// Query runs q in tx, prepared when it is in the set.
func (s WriterStmts) Query(ctx context.Context, tx *sql.Tx, q string, args ...any) (*sql.Rows, error) {
	if st := s[q]; st != nil {
		return tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return tx.QueryContext(ctx, q, args...)
}

// QueryRow runs q in tx, prepared when it is in the set.
func (s WriterStmts) QueryRow(ctx context.Context, tx *sql.Tx, q string, args ...any) *sql.Row {
	if st := s[q]; st != nil {
		return tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return tx.QueryRowContext(ctx, q, args...)
}
