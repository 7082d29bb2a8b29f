package store_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func TestOpenMigratesOnceOnBothBackends(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db, err := store.Open(ctx, dsn, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ms, _ := store.Migrations(db.Dialect)
		var n int
		if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != len(ms) || n == 0 {
			t.Fatalf("applied %d migrations, embedded %d", n, len(ms))
		}
		db.Close()
		// A second open applies nothing new and keeps the data.
		db, err = store.Open(ctx, dsn, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != len(ms) {
			t.Fatalf("after reopen %d migrations recorded, want %d", n, len(ms))
		}
		// Unique violations are recognised on both backends.
		if _, err := db.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ($1, $2)`, "k", "v"); err != nil {
			t.Fatal(err)
		}
		_, err = db.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ($1, $2)`, "k", "v2")
		if !store.IsUniqueViolation(err) {
			t.Fatalf("want unique violation, got %v", err)
		}
	})
}

func TestBothDialectsHaveTheSameMigrations(t *testing.T) {
	a, _ := store.Migrations(store.SQLite)
	b, _ := store.Migrations(store.Postgres)
	if len(a) != len(b) {
		t.Fatalf("sqlite has %d migrations, postgres %d", len(a), len(b))
	}
	for i := range a {
		if a[i].Name != b[i].Name {
			t.Fatalf("migration %d: sqlite %s, postgres %s", i, a[i].Name, b[i].Name)
		}
	}
}

func TestForPostgresTranslatesSQLiteSpellings(t *testing.T) {
	in := "CREATE TABLE t (\n    id INTEGER PRIMARY KEY AUTOINCREMENT,\n    seq INTEGER PRIMARY KEY,\n    h BLOB NOT NULL, blobby TEXT);\nINSERT INTO t(h) VALUES (X'00ff');"
	want := "CREATE TABLE t (\n    id BIGSERIAL PRIMARY KEY,\n    seq BIGINT PRIMARY KEY,\n    h BYTEA NOT NULL, blobby TEXT);\nINSERT INTO t(h) VALUES (decode('00ff', 'hex'));"
	if got := store.ForPostgres(in); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
	ms, _ := store.Migrations(store.Postgres)
	for _, m := range ms {
		for _, sqliteOnly := range []string{"BLOB", "AUTOINCREMENT", "X'"} {
			if strings.Contains(m.SQL, sqliteOnly) {
				t.Errorf("migration %s still says %s on PostgreSQL", m.Name, sqliteOnly)
			}
		}
	}
}

func TestWrongPostgresPasswordIsAPlainMessage(t *testing.T) {
	c, err := storetest.SharedCluster()
	if err != nil {
		t.Skip(err)
	}
	_ = c
	// Port 1 on loopback: nothing listens; the error must say where, not panic.
	_, err = store.Open(context.Background(), "postgres://bob:sekret@127.0.0.1:1/city?sslmode=disable", store.Options{})
	if err == nil {
		t.Fatal("want an error")
	}
	if strings.Contains(err.Error(), "sekret") {
		t.Fatalf("error leaks the password: %v", err)
	}
	if !strings.Contains(err.Error(), "cannot connect to PostgreSQL bob@127.0.0.1:1/city") {
		t.Fatalf("unhelpful error: %v", err)
	}
}

// A --db that is neither a PostgreSQL URL nor a file path is refused
// before anything is created; the PostgreSQL scheme is accepted in any
// case, and SQLite's spellings all open the same file.
func TestOpenClassifiesDatabaseNames(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir) // a refused name taken as a relative path would appear here
	ctx := context.Background()
	for _, tc := range []struct{ dsn, want string }{
		{"mysql://bob:sekret@db.city.internal/city", `unsupported database URL scheme "mysql"`},
		{"postgress://bob:sekret@127.0.0.1:1/city", `unsupported database URL scheme "postgress"`},
		{"http://127.0.0.1:5432/city", `unsupported database URL scheme "http"`},
		{"host=127.0.0.1 port=1 user=bob password=sekret dbname=city", "keyword/value connection string"},
		{"dbname=city", "keyword/value connection string"},
		{"  ", "no database given"},
		{"POSTGRES://bob:sekret@127.0.0.1:1/city?sslmode=disable", "cannot connect to PostgreSQL bob@127.0.0.1:1/city"},
	} {
		_, err := store.Open(ctx, tc.dsn, store.Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q) = %v, want an error saying %q", tc.dsn, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "sekret") {
			t.Errorf("Open(%q): the error shows the password: %v", tc.dsn, err)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("refused names created %v in the working directory", ents)
	}
	for _, dsn := range []string{"city.db", "sqlite:city.db", "file:city.db", "sqlite://" + filepath.Join(dir, "city.db"), "FILE://" + filepath.Join(dir, "city.db")} {
		db, err := store.Open(ctx, dsn, store.Options{})
		if err != nil {
			t.Fatalf("Open(%q): %v", dsn, err)
		}
		if db.Dialect != store.SQLite || db.Where != "city.db" && db.Where != filepath.Join(dir, "city.db") {
			t.Errorf("Open(%q) opened %v %q", dsn, db.Dialect, db.Where)
		}
		db.Close()
	}
	if ents, _ := os.ReadDir(dir); len(ents) == 0 || ents[0].Name() != "city.db" {
		t.Fatalf("working directory holds %v, want city.db (and its -wal/-shm)", ents)
	}
}

// Migrations are not bound by the pool's statement timeout, a bound meant
// for requests: a migration may rewrite a large table, and a process
// waits for another's migration as long as it takes. Every other
// statement keeps the timeout, on the very connection that migrated too.
func TestMigrationsOutliveTheStatementTimeout(t *testing.T) {
	dsn := storetest.Postgres(t)
	ctx := context.Background()
	db, err := store.Open(ctx, dsn, store.Options{StatementTimeout: 250 * time.Millisecond, MaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	timedOut := func(err error) bool {
		var pe *pgconn.PgError
		return errors.As(err, &pe) && pe.Code == "57014"
	}
	if err := store.MigrateWith(ctx, db, []store.Migration{{Name: "9990_slow", SQL: "SELECT pg_sleep(1);\n"}}); err != nil {
		t.Fatalf("a migration longer than the statement timeout: %v", err)
	}
	if _, err := db.W.ExecContext(ctx, `SELECT pg_sleep(1)`); !timedOut(err) {
		t.Fatalf("after migrating, a slow statement got %v, want a statement timeout", err)
	}

	// Another process holds the migration lock for longer than the timeout.
	other, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	lock, err := other.W.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(ctx, `SELECT pg_advisory_lock(7271001)`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- store.MigrateWith(ctx, db, []store.Migration{{Name: "9991_after_wait", SQL: "SELECT 1;\n"}})
	}()
	time.Sleep(time.Second)
	select {
	case err := <-done:
		t.Fatalf("migrated while another process held the lock: %v", err)
	default:
	}
	if _, err := lock.ExecContext(ctx, `SELECT pg_advisory_unlock(7271001)`); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("waiting for another process's migration: %v", err)
	}
	var n int
	if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE name IN ('9990_slow', '9991_after_wait')`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("recorded %d of 2 test migrations (%v)", n, err)
	}
	if _, err := db.W.ExecContext(ctx, `SELECT pg_sleep(1)`); !timedOut(err) {
		t.Fatalf("after waiting, a slow statement got %v, want a statement timeout", err)
	}
}

func TestIsRetryableClassifiesFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"serialization failure", &pgconn.PgError{Code: "40001"}, true},
		{"deadlock", &pgconn.PgError{Code: "40P01"}, true},
		{"admin shutdown (server restarting)", &pgconn.PgError{Code: "57P01"}, true},
		{"cannot connect now (starting up)", &pgconn.PgError{Code: "57P03"}, true},
		{"statement timeout", &pgconn.PgError{Code: "57014"}, true},
		{"connection failure", &pgconn.PgError{Code: "08006"}, true},
		{"too many connections", &pgconn.PgError{Code: "53300"}, true},
		{"read-only after failover", &pgconn.PgError{Code: "25006"}, true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"check violation", &pgconn.PgError{Code: "23514"}, false},
		{"syntax error", &pgconn.PgError{Code: "42601"}, false},
		{"wrapped", fmt.Errorf("ledger: %w", &pgconn.PgError{Code: "57P01"}), true},
		{"bad connection", driver.ErrBadConn, true},
		{"done connection", sql.ErrConnDone, true},
		{"refused", errors.New("dial tcp 127.0.0.1:5432: connect: connection refused"), true},
		{"no rows", sql.ErrNoRows, false},
		{"plain", errors.New("something else"), false},
	} {
		if got := store.IsRetryable(tc.err); got != tc.want {
			t.Errorf("%s: IsRetryable = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestReconnectsAfterServerRestart restarts a private cluster under an open
// pool: the first use after the restart may fail, retryably; then the same
// *DB works again without being reopened.
func TestReconnectsAfterServerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a PostgreSQL cluster")
	}
	c, err := storetest.StartCluster()
	if err != nil {
		if storetest.FindBinDir() == "" {
			t.Skip("SKIPPED: no PostgreSQL server binaries")
		}
		t.Fatal(err)
	}
	defer c.Stop()
	dsn, err := c.NewDatabase()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db, err := store.Open(ctx, dsn, store.Options{MaxConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Fill the pool with busy connections.
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db.W.ExecContext(ctx, `SELECT pg_sleep(0.05)`)
		}()
	}
	wg.Wait()
	if err := c.StopServer(); err != nil {
		t.Fatal(err)
	}
	_, err = db.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ('down', 'x')`)
	if err == nil || !store.IsRetryable(err) {
		t.Fatalf("a write while the server is down: %v (retryable: %v)", err, store.IsRetryable(err))
	}
	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	var ok bool
	for i := 0; i < 10 && !ok; i++ {
		_, err = db.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ($1, 'x')`, fmt.Sprint("up", i))
		if err == nil {
			ok = true
		} else if !store.IsRetryable(err) {
			t.Fatalf("after the restart: non-retryable %v", err)
		}
	}
	if !ok {
		t.Fatalf("the pool did not reconnect: %v", err)
	}
}

// TestConcurrentOpenersMigrateOnce: several processes' worth of openers on
// one fresh database all succeed and apply each migration once.
func TestConcurrentOpenersMigrateOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		errs := make(chan error, 4)
		for i := 0; i < 4; i++ {
			go func() {
				db, err := store.Open(ctx, dsn, store.Options{})
				if err == nil {
					db.Close()
				}
				errs <- err
			}()
		}
		for i := 0; i < 4; i++ {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		db, err := store.Open(ctx, dsn, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		ms, _ := store.Migrations(db.Dialect)
		var n int
		db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n)
		if n != len(ms) {
			t.Fatalf("%d migrations recorded, %d embedded", n, len(ms))
		}
	})
}

// The SQLite writer keeps statement journals in memory; readers keep the
// default (temporary files), so a reader's large sort does not grow the
// process.
func TestSQLiteWriterKeepsStatementJournalsInMemory(t *testing.T) {
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(t.TempDir(), "y.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, c := range []struct {
		name string
		db   *sql.DB
		want int
	}{{"writer", db.W, 2}, {"reader", db.R, 0}} {
		var got int
		if err := c.db.QueryRowContext(ctx, `PRAGMA temp_store`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("%s: temp_store = %d, want %d", c.name, got, c.want)
		}
	}
}

// TestNoMigrateChecksTheSchema: with NoMigrate (the administrative
// commands) a database with no schema, or one migration behind, is
// refused in plain words and left as it was; a current one opens.
func TestNoMigrateChecksTheSchema(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		if _, err := store.Open(ctx, dsn, store.Options{NoMigrate: true}); err == nil || !strings.Contains(err.Error(), "holds no yikatong schema") {
			t.Fatalf("an empty database: %v", err)
		}
		db, err := store.Open(ctx, dsn, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		ms, err := store.Migrations(db.Dialect)
		if err != nil {
			t.Fatal(err)
		}
		last := ms[len(ms)-1].Name
		if _, err := db.W.ExecContext(ctx, `DELETE FROM schema_migrations WHERE name = $1`, last); err != nil {
			t.Fatal(err)
		}
		for range 2 { // refused, and refused again: the first changed nothing
			_, err = store.Open(ctx, dsn, store.Options{NoMigrate: true})
			if err == nil || !strings.Contains(err.Error(), "lacks 1 migration") || !strings.Contains(err.Error(), last) {
				t.Fatalf("a database one migration behind: %v", err)
			}
		}
		if _, err := db.W.ExecContext(ctx, `INSERT INTO schema_migrations(name, applied_at) VALUES ($1, 0)`, last); err != nil {
			t.Fatal(err)
		}
		cur, err := store.Open(ctx, dsn, store.Options{NoMigrate: true})
		if err != nil {
			t.Fatalf("a current database: %v", err)
		}
		cur.Close()
	})
}
