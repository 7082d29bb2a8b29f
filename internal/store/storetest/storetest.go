// Package storetest gives tests real databases: a fresh SQLite file, or a
// fresh database in a throwaway PostgreSQL cluster that this package starts
// from the installed server binaries (initdb + pg_ctl in a temp dir, a free
// loopback port) and stops when the test binary ends.
//
// A package that uses Postgres or Each must have
//
//	func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }
//
// so the cluster is stopped at the end.
package storetest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/yikatong/yikatong/internal/store"
)

// Cluster is a running throwaway PostgreSQL server.
type Cluster struct {
	Dir     string // data directory
	Port    int
	BinDir  string
	asUser  string // run server commands as this user ("" = current)
	counter atomic.Int64
}

var (
	once       sync.Once
	shared     *Cluster
	sharedErr  error
	noBinaries bool
)

// Main runs the tests and stops the shared cluster afterwards.
func Main(m *testing.M) int {
	code := m.Run()
	if shared != nil {
		shared.Stop()
	}
	return code
}

// FindBinDir returns the directory holding initdb, pg_ctl and postgres, or "".
func FindBinDir() string {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
				return dir
			}
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	for i := len(matches) - 1; i >= 0; i-- {
		return filepath.Dir(matches[i])
	}
	return ""
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartCluster initialises and starts a new cluster in a fresh temp dir.
// Callers own it and must Stop it.
func StartCluster() (*Cluster, error) {
	bin := FindBinDir()
	if bin == "" {
		return nil, errNoBinaries
	}
	c := &Cluster{BinDir: bin}
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root; use the postgres account the
		// Debian package creates.
		if _, err := user.Lookup("postgres"); err != nil {
			return nil, fmt.Errorf("running as root and no 'postgres' user to run the server as: %w", err)
		}
		c.asUser = "postgres"
	}
	dir, err := os.MkdirTemp("", "yikatong-pg-")
	if err != nil {
		return nil, err
	}
	c.Dir = dir
	if c.asUser != "" {
		u, _ := user.Lookup(c.asUser)
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := c.run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		c.Port = port
		opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s -c max_connections=300 -c shared_buffers=256MB -c fsync=on -c synchronous_commit=on", port, dir)
		out, err := c.run("pg_ctl", "-D", data, "-o", opts, "-l", filepath.Join(dir, "server.log"), "-w", "-t", "60", "start")
		if err == nil {
			return c, nil
		}
		lastErr = fmt.Errorf("pg_ctl start: %v\n%s", err, out)
	}
	os.RemoveAll(dir)
	return nil, lastErr
}

func (c *Cluster) run(name string, args ...string) ([]byte, error) {
	path := filepath.Join(c.BinDir, name)
	var cmd *exec.Cmd
	if c.asUser != "" {
		cmd = exec.Command("runuser", append([]string{"-u", c.asUser, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = os.TempDir()
	return cmd.CombinedOutput()
}

// Restart stops the server (fast mode: clients are disconnected) and starts
// it again on the same port.
func (c *Cluster) Restart() error {
	if err := c.StopServer(); err != nil {
		return err
	}
	return c.StartServer()
}

// StopServer stops the server, keeping its data.
func (c *Cluster) StopServer() error {
	out, err := c.run("pg_ctl", "-D", filepath.Join(c.Dir, "data"), "-m", "fast", "-w", "stop")
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
}

// StartServer starts a stopped server again on the same port.
func (c *Cluster) StartServer() error {
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s -c max_connections=300 -c shared_buffers=256MB", c.Port, c.Dir)
	out, err := c.run("pg_ctl", "-D", filepath.Join(c.Dir, "data"), "-o", opts, "-l", filepath.Join(c.Dir, "server.log"), "-w", "-t", "60", "start")
	if err != nil {
		return fmt.Errorf("pg_ctl start: %v\n%s", err, out)
	}
	return nil
}

// Stop stops the server and removes its files.
func (c *Cluster) Stop() {
	c.StopServer()
	os.RemoveAll(c.Dir)
}

// AdminURL is the URL of the cluster's postgres database.
func (c *Cluster) AdminURL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.Port)
}

// NewDatabase creates a fresh, empty database and returns its URL.
func (c *Cluster) NewDatabase() (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), c.counter.Add(1))
	db, err := sql.Open("pgx", c.AdminURL())
	if err != nil {
		return "", err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, name), nil
}

var errNoBinaries = fmt.Errorf("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: install Debian's postgresql package (scripts/test.sh does)")

// SharedCluster returns the cluster shared by this test binary, starting it
// on first use. It reports (nil, errNoBinaries) where no server is installed.
func SharedCluster() (*Cluster, error) {
	once.Do(func() {
		shared, sharedErr = StartCluster()
		if sharedErr == errNoBinaries {
			noBinaries = true
		}
	})
	return shared, sharedErr
}

// Postgres returns the URL of a fresh database in the shared cluster. It
// skips the test, loudly, only when no PostgreSQL server is installed at all.
func Postgres(t testing.TB) string {
	t.Helper()
	c, err := SharedCluster()
	if err != nil {
		if noBinaries {
			fmt.Fprintln(os.Stderr, "\n*** SKIPPING PostgreSQL TESTS: "+err.Error()+" ***")
			t.Skip("SKIPPED: " + err.Error())
		}
		t.Fatalf("starting PostgreSQL: %v", err)
	}
	url, err := c.NewDatabase()
	if err != nil {
		t.Fatalf("creating database: %v", err)
	}
	return url
}

// SQLite returns the path of a fresh SQLite database file.
func SQLite(t testing.TB) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "yikatong.db")
}

// Backend is one database backend to run a test against.
type Backend struct {
	Name string
	DSN  func(t testing.TB) string
}

// Backends are SQLite and PostgreSQL; YIKATONG_BACKENDS=sqlite limits them.
func Backends() []Backend {
	all := []Backend{{"sqlite", SQLite}, {"postgres", Postgres}}
	want := os.Getenv("YIKATONG_BACKENDS")
	if want == "" {
		return all
	}
	var out []Backend
	for _, b := range all {
		if strings.Contains(want, b.Name) {
			out = append(out, b)
		}
	}
	return out
}

// Each runs fn as a subtest against every backend with a fresh database.
func Each(t *testing.T, fn func(t *testing.T, dsn string)) {
	for _, b := range Backends() {
		t.Run(b.Name, func(t *testing.T) { fn(t, b.DSN(t)) })
	}
}

// QueryPlan is SQLite's EXPLAIN QUERY PLAN of query with args, its steps
// joined by "; " (for tests that a query uses the index meant for it).
func QueryPlan(tb testing.TB, db *sql.DB, query string, args ...any) string {
	tb.Helper()
	rows, err := db.QueryContext(context.Background(), `EXPLAIN QUERY PLAN `+query, args...)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			tb.Fatal(err)
		}
		plan = append(plan, detail)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return strings.Join(plan, "; ")
}

// Plan is db's plan for query with args, for tests that a query uses the
// index meant for it, on either backend: SQLite's QueryPlan, or
// PostgreSQL's EXPLAIN with sequential scans priced out, so that an index
// the planner may use shows even on a nearly empty table.
func Plan(tb testing.TB, db *store.DB, query string, args ...any) string {
	tb.Helper()
	if db.Dialect != store.Postgres {
		return QueryPlan(tb, db.R, query, args...)
	}
	ctx := context.Background()
	conn, err := db.R.Conn(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `SET enable_seqscan = off`); err != nil {
		tb.Fatal(err)
	}
	defer conn.ExecContext(ctx, `RESET enable_seqscan`)
	rows, err := conn.QueryContext(ctx, `EXPLAIN `+query, args...)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	var lines []string
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			tb.Fatal(err)
		}
		lines = append(lines, l)
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return strings.Join(lines, "; ")
}

// Open opens (and migrates) the database at dsn for a test, closed when
// the test ends.
func Open(tb testing.TB, dsn string) *store.DB {
	tb.Helper()
	db, err := store.Open(context.Background(), dsn, store.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}
