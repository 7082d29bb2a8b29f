package store

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strings"
	"time"
)

// Migrations live in migrations/NNNN_name.sql, written once in the SQL both
// backends share (see the package doc) with SQLite's spelling of the few
// things that differ; ForPostgres translates those. They run in name order,
// each in its own transaction, exactly once; applied names are kept in
// schema_migrations.
//
// Number ranges by domain (keeps parallel work from colliding):
//
//	0001-0009 core     0010-0019 residents, cards, auth
//	0020-0029 keys, trust     0030-0039 ledger
//	0040-0049 catalogue, terminals, scans     0050-0059 federation
//	0060-0069 web, disputes, audit
//
//go:embed migrations
var migrationFS embed.FS

// Migration is one embedded migration.
type Migration struct {
	Name string
	SQL  string
}

// Migrations returns the embedded migrations for dialect d, in order.
func Migrations(d Dialect) ([]Migration, error) {
	const dir = "migrations"
	entries, err := fs.ReadDir(migrationFS, dir)
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		b, err := fs.ReadFile(migrationFS, dir+"/"+e.Name())
		if err != nil {
			return nil, err
		}
		sql := string(b)
		if d == Postgres {
			sql = ForPostgres(sql)
		}
		out = append(out, Migration{Name: strings.TrimSuffix(e.Name(), ".sql"), SQL: sql})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

var hexLiteral = regexp.MustCompile(`X'([0-9A-Fa-f]*)'`)

// ForPostgres rewrites a migration's SQLite spellings for PostgreSQL:
// BLOB → BYTEA, INTEGER PRIMARY KEY AUTOINCREMENT → BIGSERIAL PRIMARY KEY,
// INTEGER PRIMARY KEY (SQLite's 64-bit rowid) → BIGINT PRIMARY KEY, and
// X'…' hex literals → decode('…', 'hex'). Everything else is shared.
func ForPostgres(sql string) string {
	sql = strings.ReplaceAll(sql, "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
	sql = strings.ReplaceAll(sql, "INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY")
	sql = blobType.ReplaceAllString(sql, "BYTEA")
	return hexLiteral.ReplaceAllString(sql, "decode('$1', 'hex')")
}

var blobType = regexp.MustCompile(`\bBLOB\b`)

func (db *DB) migrate(ctx context.Context) error {
	ms, err := Migrations(db.Dialect)
	if err != nil {
		return err
	}
	return db.migrateList(ctx, ms)
}

// checkMigrated fails, in plain words, unless every migration of this
// binary is applied (Options.NoMigrate).
func (db *DB) checkMigrated(ctx context.Context) error {
	ms, err := Migrations(db.Dialect)
	if err != nil {
		return err
	}
	applied := map[string]bool{}
	rows, err := db.R.QueryContext(ctx, `SELECT name FROM schema_migrations`)
	if err != nil {
		return fmt.Errorf("%s database %s holds no yikatong schema (start `yikatong serve` on it first; 数据库中没有 yikatong 的表结构，请先启动节点): %w", db.Dialect, db.Where, err)
	}
	defer rows.Close()
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return err
		}
		applied[n] = true
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var missing []string
	for _, m := range ms {
		if !applied[m.Name] {
			missing = append(missing, m.Name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s database %s lacks %d migration(s) of this version (%s first): this command does not change the schema under the serving processes; upgrade the serving node first (docs/deploy.md: upgrades stop every process, the first new one migrates) and run it again (数据库结构落后于本程序版本，本命令不修改结构，请先升级节点后重试)",
			db.Dialect, db.Where, len(missing), missing[0])
	}
	return nil
}

// LiftStatementTimeout lifts, on PostgreSQL, the pool's statement timeout
// (a bound for requests: --statement-timeout) for the rest of tx, which
// its caller's context still bounds. For work whose length grows with the
// city's data, not with one request: a migration may rewrite a table of
// millions of rows, a process waits for another's migration as long as
// that takes, a ledger check reads the whole journal. SET LOCAL ends with
// the transaction, so the connection goes back to the pool with its
// timeout.
func (db *DB) LiftStatementTimeout(ctx context.Context, tx *sql.Tx) error {
	if db.Dialect != Postgres {
		return nil
	}
	_, err := tx.ExecContext(ctx, `SET LOCAL statement_timeout = 0`)
	return err
}

func (db *DB) migrateList(ctx context.Context, ms []Migration) error {
	conn, err := db.W.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if db.Dialect == Postgres {
		// Several node processes may start at once: one migrates, the
		// others wait. The lock is the session's: it outlives the
		// transaction that waits for it without a timeout.
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := db.LiftStatementTimeout(ctx, tx); err != nil {
			tx.Rollback()
			return err
		}
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_lock(7271001)`); err != nil {
			tx.Rollback()
			return err
		}
		// Registered before the COMMIT: whatever fails next, the pooled
		// connection does not keep the lock.
		defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(7271001)`)
		if err := tx.Commit(); err != nil {
			return err
		}
	}
	if _, err := conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
		return err
	}
	applied := map[string]bool{}
	rows, err := conn.QueryContext(ctx, `SELECT name FROM schema_migrations`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return err
		}
		applied[n] = true
	}
	rows.Close()
	for _, m := range ms {
		if applied[m.Name] {
			continue
		}
		if err := db.runMigration(ctx, conn, m); err != nil {
			return fmt.Errorf("migration %s: %w", m.Name, err)
		}
	}
	return nil
}

func (db *DB) runMigration(ctx context.Context, conn *sql.Conn, m Migration) error {
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := db.LiftStatementTimeout(ctx, tx); err != nil {
		return err
	}
	// Another process may have applied it since we looked (SQLite has no
	// advisory lock; its write transaction serialises this check).
	var done int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE name = $1`, m.Name).Scan(&done); err != nil {
		return err
	}
	if done > 0 {
		return nil
	}
	for _, stmt := range splitStatements(m.SQL) {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("%w\n%s", err, stmt)
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations(name, applied_at) VALUES ($1, $2)`, m.Name, time.Now().UnixMilli()); err != nil {
		return err
	}
	return tx.Commit()
}

// splitStatements splits a migration on lines that end with ";". Keep
// statements free of semicolons inside strings or bodies at line ends.
func splitStatements(src string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(src, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteString("\n")
		if strings.HasSuffix(trimmed, ";") {
			if s := strings.TrimSpace(cur.String()); s != ";" {
				out = append(out, s)
			}
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}
