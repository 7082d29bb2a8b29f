// Package store opens yikatong's database — SQLite (embedded default, pure Go,
// WAL, synchronous=FULL; the ledger defers its own fsync with SyncWAL) or
// PostgreSQL (pgx) — and runs the embedded, ordered migrations at start.
//
// Domain packages write plain SQL against *DB. The SQL is shared by both
// backends: placeholders are $1, $2 …; times are BIGINT Unix milliseconds
// (UTC); money is BIGINT fen; booleans are INTEGER 0/1; binary data is
// BLOB. Migrations are written once, in SQLite's spelling, and ForPostgres
// translates the few words that differ (BLOB, AUTOINCREMENT keys, X'…').
// Where the dialects must differ, branch on DB.Dialect.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Dialect names a backend.
type Dialect int

const (
	SQLite Dialect = iota + 1
	Postgres
)

func (d Dialect) String() string {
	switch d {
	case SQLite:
		return "sqlite"
	case Postgres:
		return "postgres"
	}
	return "unknown"
}

// DB is an open database. W is the writer pool and R the reader pool: on
// SQLite W has exactly one connection (SQLite has one writer; queuing in Go is
// cheaper than SQLITE_BUSY) and R several; on PostgreSQL both are one pool.
type DB struct {
	Dialect Dialect
	W       *sql.DB
	R       *sql.DB
	// Where is a human description without secrets (file path or host/db).
	Where   string
	walPath string // SQLite in WAL mode: the database file (SyncWAL)
	reads   readStmts
}

// Options tune Open.
type Options struct {
	// MaxConns caps the PostgreSQL pool (default 32) or the SQLite reader pool (default 8).
	MaxConns int
	// StatementTimeout bounds every PostgreSQL statement (default 5s).
	StatementTimeout time.Duration
	// NoMigrate checks that every migration of this binary was applied
	// instead of applying them (an administrative command run beside the
	// serving processes must not change their schema under them).
	NoMigrate bool
}

// Open opens the database named by dsn: "postgres://…" or "postgresql://…"
// (the scheme in any case) selects PostgreSQL; "sqlite:PATH", "file:PATH"
// or a bare path selects SQLite. Any other URL scheme ("mysql://…", a typo
// such as "postgress://…") and PostgreSQL's keyword/value form ("host=…
// dbname=…") are refused: taken as a file name they would quietly create
// an empty SQLite city. It checks the connection and runs migrations before
// returning; errors explain what is wrong in plain words (never a stack
// trace, never a password).
func Open(ctx context.Context, dsn string, opt Options) (*DB, error) {
	kind, dsn, err := ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	var db *DB
	switch kind {
	case Postgres:
		db, err = openPostgres(ctx, dsn, opt)
	default:
		db, err = openSQLite(ctx, dsn, opt)
	}
	if err != nil {
		return nil, err
	}
	if opt.NoMigrate {
		if err := db.checkMigrated(ctx); err != nil {
			db.Close()
			return nil, err
		}
		return db, nil
	}
	if err := db.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("migrating %s database %s: %w", db.Dialect, db.Where, err)
	}
	return db, nil
}

func openSQLite(ctx context.Context, path string, opt Options) (*DB, error) {
	if path == "" {
		return nil, errors.New("empty SQLite path")
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("creating database directory: %w", err)
		}
	}
	// cache_size: 8 MiB per connection. SQLite empties a connection's page
	// cache on every commit (pager_end_transaction truncates it, walking
	// the whole hash table of a large cache) and a reader's whenever
	// another connection has written, so a large cache cost more CPU per
	// commit than it saved in reads (measured: 7 % of a node's CPU at
	// 4,400 scans/s with 64 MiB; none with 8 MiB).
	q := url.Values{}
	for _, p := range []string{"busy_timeout(10000)", "journal_mode(WAL)", "synchronous(FULL)", "foreign_keys(ON)", "cache_size(-8192)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	dsn := "file:" + path + "?" + q.Encode() // the readers'
	// The writer keeps its statement journals in memory (temp_store):
	// a multi-row INSERT that gives the rowid (the ledger journal's seq)
	// opens one, and on disk each batch created, wrote and deleted a
	// temporary file (3 % of a node's CPU at 7,800 charges/s). Readers
	// keep SQLite's default, so a large sort spills to disk, not to memory.
	q.Add("_pragma", "temp_store(MEMORY)")
	w, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("opening SQLite database %s: %w", path, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	// Switching a brand-new file to WAL can answer SQLITE_BUSY without
	// consulting the busy timeout when another process is creating it at
	// the same moment: retry for a bounded time.
	for try := 0; ; try++ {
		err = w.PingContext(ctx)
		if err == nil || !IsRetryable(err) || try >= 200 {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("opening SQLite database %s: %w%s", path, err, notWritable(filepath.Dir(path)))
	}
	// The ledger defers its fsync only where SQLite really is in WAL mode
	// (a file system may refuse it; then every commit keeps its own fsync).
	var mode string
	if err := w.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		w.Close()
		return nil, fmt.Errorf("opening SQLite database %s: %w", path, err)
	}
	walPath := ""
	if strings.EqualFold(mode, "wal") {
		walPath = path
	}
	r, err := sql.Open("sqlite", dsn)
	if err != nil {
		w.Close()
		return nil, err
	}
	n := opt.MaxConns
	if n <= 0 {
		n = 8
	}
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	r.SetConnMaxIdleTime(0)
	if err := os.Chmod(path, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.Close()
		r.Close()
		return nil, err
	}
	return &DB{Dialect: SQLite, W: w, R: r, Where: path, walPath: walPath}, nil
}

// notWritable explains a failed open when dir cannot be written (a
// read-only mount, a directory of another user): SQLite's own words
// ("unable to open database file") do not say so.
func notWritable(dir string) string {
	f, err := os.CreateTemp(dir, ".yikatong-probe-")
	if err == nil {
		name := f.Name()
		f.Close()
		os.Remove(name)
		return ""
	}
	return fmt.Sprintf("; the directory %s cannot be written (%v): a SQLite node writes its database, write-ahead log and shared-memory files there (SQLite 数据库所在目录不可写)", dir, err)
}

func openPostgres(ctx context.Context, dsn string, opt Options) (*DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("the PostgreSQL URL is not valid: %s", redactErr(err, dsn))
	}
	where := fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
	st := opt.StatementTimeout
	if st <= 0 {
		st = 5 * time.Second
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	if _, ok := cfg.RuntimeParams["statement_timeout"]; !ok {
		cfg.RuntimeParams["statement_timeout"] = fmt.Sprint(st.Milliseconds())
	}
	cfg.RuntimeParams["timezone"] = "UTC"
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	db := stdlib.OpenDB(*cfg)
	n := opt.MaxConns
	if n <= 0 {
		n = 32
	}
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	db.SetConnMaxIdleTime(5 * time.Minute)
	// Recycle connections now and then, so that after a failover (the
	// database name now resolving to the promoted standby) or a pooler
	// change every process drifts to the new server without a restart.
	// Connections that died with a restarted server are dropped at once:
	// pgx pings a connection idle for over a second before reuse, and one
	// that fails mid-request surfaces as a retryable error (IsRetryable).
	db.SetConnMaxLifetime(30 * time.Minute)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("cannot connect to PostgreSQL %s: %s", where, redactErr(err, dsn))
	}
	return &DB{Dialect: Postgres, W: db, R: db, Where: where}, nil
}

// libpqKeyword matches one "keyword=value" field of PostgreSQL's
// keyword/value connection strings.
var libpqKeyword = regexp.MustCompile(`^(host|hostaddr|port|dbname|user|password|sslmode|connect_timeout|application_name|options|service)=`)

// ParseDSN names the backend of dsn (see Open) and returns what to open:
// the PostgreSQL URL (its scheme lower-cased, which pgx and libpq require)
// or the SQLite path.
func ParseDSN(dsn string) (Dialect, string, error) {
	if strings.TrimSpace(dsn) == "" {
		return 0, "", errors.New("no database given: use a file path for SQLite or postgres://user:password@host:5432/dbname for PostgreSQL")
	}
	if i := strings.Index(dsn, "://"); i > 0 && !strings.ContainsAny(dsn[:i], `/\`) {
		switch scheme := strings.ToLower(dsn[:i]); scheme {
		case "postgres", "postgresql":
			return Postgres, scheme + dsn[i:], nil
		case "sqlite", "file":
			return SQLite, dsn[i+3:], nil // "sqlite:///var/x.db" → "/var/x.db"
		default:
			return 0, "", fmt.Errorf("unsupported database URL scheme %q: use postgres://… for PostgreSQL, or a file path (or sqlite:PATH) for SQLite", scheme)
		}
	}
	for _, f := range strings.Fields(dsn) {
		if libpqKeyword.MatchString(f) {
			return 0, "", errors.New("this looks like a PostgreSQL keyword/value connection string; give it as a URL instead: postgres://user:password@host:5432/dbname?sslmode=verify-full")
		}
	}
	return SQLite, strings.TrimPrefix(strings.TrimPrefix(dsn, "sqlite:"), "file:"), nil
}

// redactErr returns err's text with any password from dsn removed.
func redactErr(err error, dsn string) string {
	msg := err.Error()
	if u, perr := url.Parse(dsn); perr == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "***")
		}
	}
	return msg
}

// Close closes both pools.
func (db *DB) Close() error {
	if db == nil {
		return nil
	}
	db.closeReads()
	err := db.W.Close()
	if db.R != db.W {
		if e := db.R.Close(); err == nil {
			err = e
		}
	}
	return err
}

// Tx runs fn in a write transaction and commits it, or rolls back if fn
// returns an error (or panics). On SQLite it takes the write lock at BEGIN.
func (db *DB) Tx(ctx context.Context, fn func(tx *sql.Tx) error) (err error) {
	tx, err := db.W.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			tx.Rollback()
			panic(p)
		}
		if err != nil {
			tx.Rollback()
		}
	}()
	if err = fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// Querier is what *sql.DB, *sql.Tx and *sql.Conn have in common.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// IsUniqueViolation reports whether err is a unique-constraint violation.
func IsUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code()
		return c == sqlite3.SQLITE_CONSTRAINT_UNIQUE || c == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// IsRetryable reports whether err is a transient database failure after
// which the same request may be retried: a lost or refused connection, a
// server shutting down, a serialization failure or deadlock, a busy SQLite.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "40001", pe.Code == "40P01": // serialization failure, deadlock
			return true
		case strings.HasPrefix(pe.Code, "08"): // connection exception
			return true
		case pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03": // admin shutdown, crash shutdown, cannot connect now
			return true
		case pe.Code == "57014": // statement timeout / cancel
			return true
		case pe.Code == "53300": // too many connections
			return true
		case pe.Code == "25006": // read-only transaction: still connected to a demoted primary after failover
			return true
		case pe.Code == "55P03": // lock not available (lock_timeout)
			return true
		}
		return false
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		c := se.Code() & 0xff
		return c == sqlite3.SQLITE_BUSY || c == sqlite3.SQLITE_LOCKED || c == sqlite3.SQLITE_IOERR
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	if errors.Is(err, sql.ErrConnDone) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"connection refused", "connection reset", "broken pipe", "EOF", "driver: bad connection", "conn closed", "closed network connection", "failed to connect"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// DeferredSync reports whether db can commit a transaction without waiting
// for its fsync and make it durable afterwards with SyncWAL: SQLite in WAL
// mode. Callers that use it (the ledger's committer) switch their own
// transaction to synchronous=NORMAL on a reserved connection, commit, and
// answer nobody until SyncWAL has returned — so the next batch's work
// overlaps the previous batch's fsync, and every answered write is still
// on disk.
func (db *DB) DeferredSync() bool { return db.Dialect == SQLite && db.walPath != "" }

// SyncWAL makes every transaction committed so far durable: it fdatasyncs
// the SQLite write-ahead log. SQLite's WAL is replayed on open up to the
// first frame whose checksum fails, so what survives a power cut is always
// a prefix of the commits, and everything committed before SyncWAL began
// is in it. The log exists as long as the database is open (SQLite
// removes it when its last connection closes), so a missing log is an
// error, not "nothing to sync".
func (db *DB) SyncWAL() error {
	if db.walPath == "" {
		return errors.New("SyncWAL: not an SQLite database in WAL mode")
	}
	f, err := os.OpenFile(db.walPath+"-wal", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening the write-ahead log to sync it: %w", err)
	}
	defer f.Close()
	if err := datasync(f); err != nil {
		return fmt.Errorf("syncing the write-ahead log: %w", err)
	}
	return nil
}
