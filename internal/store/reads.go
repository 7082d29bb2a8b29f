package store

import (
	"context"
	"database/sql"
	"sync"
	"sync/atomic"
)

// Prepared reads. modernc's SQLite driver parses a statement on every
// QueryRowContext; on the hot read paths (a card by token, a message by
// id) parsing cost as much as running the query (measured on the
// cross-city authorisation path: 86 µs of its 1,400 µs of CPU). QueryRow
// and Query keep each statement prepared on the reader pool (database/sql
// prepares it once per connection). Only constant statement texts belong
// here: the cache is capped, and a text beyond the cap runs unprepared.
// PostgreSQL's driver (pgx) already caches statements by text.

const maxReadStmts = 256

type readStmts struct {
	m sync.Map // query text → *sql.Stmt
	n atomic.Int32
}

func (db *DB) readStmt(ctx context.Context, q string) *sql.Stmt {
	if db.Dialect != SQLite {
		return nil
	}
	if v, ok := db.reads.m.Load(q); ok {
		return v.(*sql.Stmt)
	}
	if db.reads.n.Load() >= maxReadStmts {
		return nil
	}
	st, err := db.R.PrepareContext(ctx, q)
	if err != nil {
		return nil // QueryRow runs it unprepared and reports the error
	}
	if v, loaded := db.reads.m.LoadOrStore(q, st); loaded {
		st.Close()
		return v.(*sql.Stmt)
	}
	db.reads.n.Add(1)
	return st
}

// QueryRow runs a read of at most one row on the reader pool, prepared
// once per connection on SQLite.
func (db *DB) QueryRow(ctx context.Context, q string, args ...any) *sql.Row {
	if st := db.readStmt(ctx, q); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return db.R.QueryRowContext(ctx, q, args...)
}

// Query runs a read on the reader pool, prepared once per connection on
// SQLite.
func (db *DB) Query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st := db.readStmt(ctx, q); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return db.R.QueryContext(ctx, q, args...)
}

func (db *DB) closeReads() {
	db.reads.m.Range(func(_, v any) bool {
		v.(*sql.Stmt).Close()
		return true
	})
}
