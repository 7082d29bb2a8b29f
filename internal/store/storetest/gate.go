package storetest

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"sync"
	"testing"
	"time"
)

// Gate holds, while armed, the first row a query reads (its snapshot
// already taken) until Release: for tests of a read racing a write, such
// as a cache filled from a read made just before a revocation.
type Gate struct {
	d *gatedDriver
}

// GatedSQLite opens the SQLite database file at path (another pool on a
// database already open) with its reads passing through a Gate. The pool
// is closed when the test ends.
func GatedSQLite(tb testing.TB, path string) (*sql.DB, *Gate) {
	tb.Helper()
	probe, err := sql.Open("sqlite", ":memory:")
	if err != nil {
		tb.Fatal(err)
	}
	d := &gatedDriver{Driver: probe.Driver()}
	probe.Close()
	db := sql.OpenDB(gatedConnector{d, "file:" + path + "?_pragma=busy_timeout(10000)"})
	tb.Cleanup(func() { db.Close() })
	return db, &Gate{d}
}

// Arm makes the next row read wait for Release (again after a Release).
func (g *Gate) Arm() {
	g.d.mu.Lock()
	g.d.armed = true
	g.d.reached, g.d.release = make(chan struct{}), make(chan struct{})
	g.d.mu.Unlock()
}

// Reached is closed once the armed read has read its row.
func (g *Gate) Reached() <-chan struct{} {
	g.d.mu.Lock()
	defer g.d.mu.Unlock()
	return g.d.reached
}

// Wait waits for the armed read to have read its row, failing the test
// after 10 s.
func (g *Gate) Wait(tb testing.TB) {
	tb.Helper()
	select {
	case <-g.Reached():
	case <-time.After(10 * time.Second):
		tb.Fatal("the armed read never reached the database")
	}
}

// Release lets the held read go on.
func (g *Gate) Release() {
	g.d.mu.Lock()
	defer g.d.mu.Unlock()
	close(g.d.release)
}

type gatedDriver struct {
	driver.Driver
	mu      sync.Mutex
	armed   bool
	reached chan struct{}
	release chan struct{}
}

func (d *gatedDriver) Open(name string) (driver.Conn, error) {
	c, err := d.Driver.Open(name)
	return gatedConn{c, d}, err
}

// gatedConnector opens name with the gated driver, so that no driver is
// registered by name (sql.Register cannot be undone, and a test run twice
// in one process would register it twice).
type gatedConnector struct {
	d    *gatedDriver
	name string
}

func (c gatedConnector) Connect(context.Context) (driver.Conn, error) { return c.d.Open(c.name) }
func (c gatedConnector) Driver() driver.Driver                        { return c.d }

type gatedConn struct {
	driver.Conn
	d *gatedDriver
}

func (c gatedConn) Prepare(q string) (driver.Stmt, error) {
	st, err := c.Conn.Prepare(q)
	return gatedStmt{st, c.d}, err
}

type gatedStmt struct {
	driver.Stmt
	d *gatedDriver
}

func (s gatedStmt) Query(args []driver.Value) (driver.Rows, error) {
	r, err := s.Stmt.Query(args) //nolint:staticcheck // the plain interface, on purpose
	return gatedRows{r, s.d}, err
}

type gatedRows struct {
	driver.Rows
	d *gatedDriver
}

func (r gatedRows) Next(dest []driver.Value) error {
	err := r.Rows.Next(dest)
	r.d.mu.Lock()
	armed, reached, release := r.d.armed, r.d.reached, r.d.release
	r.d.armed = false
	r.d.mu.Unlock()
	if armed {
		close(reached)
		<-release
	}
	return err
}
