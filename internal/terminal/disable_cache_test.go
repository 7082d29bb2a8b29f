package terminal_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/terminal"
)

// gatedDriver wraps the SQLite driver; while armed, the first row read
// from a query is held (its snapshot already taken) until released.
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

// gatedConnector opens name with the gated driver, so that a test needs
// no driver registered by name (sql.Register cannot be undone, and a
// second run of the test in one process would register it twice).
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
	armed := r.d.armed
	r.d.armed = false
	r.d.mu.Unlock()
	if armed {
		close(r.d.reached)
		<-r.d.release
	}
	return err
}

// A scan whose terminal look-up read the row just before the terminal was
// disabled must not put the enabled row back into the cache after
// DisableTerminal dropped it: "at once in this process" would otherwise
// become "within CacheTTL".
func TestDisableRacesCacheFill(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{})
	ctx := context.Background()
	svc := terminal.New(n.DB, n.Auth, nil, nil)
	p, err := svc.CreateProvider(ctx, "bus co", "transit", []string{"transit.bus"})
	if err != nil {
		t.Fatal(err)
	}
	tm, _, err := svc.CreateTerminal(ctx, p.ID, "gate", nil)
	if err != nil {
		t.Fatal(err)
	}
	// A second service over the same database whose reads go through the
	// gated driver.
	probe, _ := sql.Open("sqlite", ":memory:")
	gd := &gatedDriver{Driver: probe.Driver(), reached: make(chan struct{}), release: make(chan struct{})}
	probe.Close()
	r := sql.OpenDB(gatedConnector{gd, "file:" + filepath.Join(n.Dir, "yikatong.db") + "?_pragma=busy_timeout(10000)"})
	defer r.Close()
	db := &store.DB{Dialect: n.DB.Dialect, W: n.DB.W, R: r}
	gsvc := terminal.New(db, n.Auth, nil, nil)
	pr := auth.Principal{Kind: auth.KindTerminal, Subject: tm.ID, Role: auth.RoleTerminal, ProviderID: p.ID}

	gd.mu.Lock()
	gd.armed = true
	gd.mu.Unlock()
	done := make(chan error, 1)
	go func() { _, err := gsvc.Authorize(ctx, pr, "transit.bus"); done <- err }()
	select {
	case <-gd.reached:
	case <-time.After(10 * time.Second):
		t.Fatal("the look-up never reached the database")
	}
	// The row has been read (enabled); now the terminal is disabled.
	if _, err := gsvc.DisableTerminal(ctx, tm.ID); err != nil {
		t.Fatal(err)
	}
	close(gd.release)
	if err := <-done; err != nil {
		t.Logf("the in-flight scan: %v", err)
	}
	if _, err := gsvc.Authorize(ctx, pr, "transit.bus"); apperr.CodeOf(err) != apperr.TerminalDisabled {
		t.Fatalf("scan right after DisableTerminal returned: %v, want terminal_disabled", err)
	}
}
