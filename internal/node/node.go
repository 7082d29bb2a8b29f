// Package node wires one city node together: the database, the vault for
// personal data, signing keys, residents and cards, the ledger, the service
// catalogue, auth and the HTTP API. `yikatong serve` and the tests both use
// it, so tests exercise exactly what production runs.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/httpapi"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/vault"
)

// Config configures a node.
type Config struct {
	// DataDir holds keys, the vault's master key and (by default) the SQLite file.
	DataDir string
	// DB is a database URL; "" means SQLite at DataDir/yikatong.db.
	DB string
	// NoBackground: run none of a serving node's periodic jobs (hold
	// expiry, debt sweeps, key refresh), for the admin commands that open
	// the node beside the running processes only to read or change one
	// thing.
	NoBackground bool
	// NoMigrate: check that the schema is this version's instead of
	// migrating it (store.Options.NoMigrate), for the same commands.
	NoMigrate bool
	// City is this node's id, e.g. CN-410100; used on first start only
	// (afterwards the stored one wins, and a different one is an error).
	City string
	// Alg is the e-code signing algorithm of new keys: "SM2" (default) or "EdDSA".
	Alg string
	// TrustTTL is the validity of published trust bundles (default 24 h).
	TrustTTL time.Duration
	// MaxConns sizes the database pool.
	MaxConns int
	// StatementTimeout bounds PostgreSQL statements.
	StatementTimeout time.Duration
	// Logger for structured logs (default: JSON to stderr).
	Logger *slog.Logger
	// Now is the clock (tests move it).
	Now func() time.Time
	// Federation joins the node to a region (zero: no region).
	Federation federation.Config
}

// DefaultCity is the demo city, Zhengzhou.
const DefaultCity = "CN-410100"

var cityRe = regexp.MustCompile(`^CN-[0-9]{6}$`)

// Node is a running city node.
type Node struct {
	Config Config
	City   string
	DB     *store.DB
	Auth   *auth.Service
	API    *httpapi.Server
	Log    *slog.Logger
	services
	Now func() time.Time

	// Fed is the node's region federation (peers, clearing).
	Fed *federation.Service

	// DemoResidents is how many residents EnsureDemo enrols (default 1000).
	DemoResidents int
	// DemoMode is set when the node serves a demo city (serve --demo): the
	// gate simulator is then open to anyone.
	DemoMode atomic.Bool

	stop    context.CancelFunc
	bg      chan struct{}
	closers []func() error
}

// Open opens (creating on first start) a node.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = "yikatong-data"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data directory %s: %w", cfg.DataDir, err)
	}
	dsn := cfg.DB
	if dsn == "" {
		dsn = filepath.Join(cfg.DataDir, "yikatong.db")
		// A data directory with a master key belongs to a node that has
		// started before. If its SQLite file is not there, its database is
		// elsewhere (PostgreSQL, or another --db path): starting would
		// create an empty city that signs codes with the real city's keys.
		if _, err := os.Stat(filepath.Join(cfg.DataDir, vault.KeyFile)); err == nil {
			if _, err := os.Stat(dsn); errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%s belongs to a node that has started before, but holds no SQLite database (yikatong.db): give the node's --db (postgres://… or its SQLite path) (%s 属于曾启动过的节点，但其中没有 SQLite 数据库（yikatong.db）：请给出该节点的 --db（postgres://… 或其 SQLite 文件路径）)", cfg.DataDir, cfg.DataDir)
			}
		}
	}
	db, err := store.Open(ctx, dsn, store.Options{MaxConns: cfg.MaxConns, StatementTimeout: cfg.StatementTimeout, NoMigrate: cfg.NoMigrate})
	if err != nil {
		return nil, err
	}
	n := &Node{Config: cfg, DB: db, Log: cfg.Logger, Now: cfg.Now}
	n.closers = append(n.closers, db.Close)
	if err := n.init(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) init(ctx context.Context) error {
	city, err := n.settleCity(ctx)
	if err != nil {
		return err
	}
	n.City = city
	n.Auth = auth.New(n.DB, n.Now)
	reg := prometheus.NewRegistry()
	n.API = httpapi.NewServer(n.Log, n.Auth, reg)
	n.API.Ready = func(ctx context.Context) error {
		// A ledger stopped by a failed disk sync takes the node out of
		// its load balancer's rotation until it is restarted.
		if err := n.Ledger.Broken(); err != nil {
			return err
		}
		return n.DB.R.PingContext(ctx)
	}
	if err := n.wire(ctx); err != nil {
		return err
	}
	if n.Config.NoBackground {
		return nil
	}
	bgctx, cancel := context.WithCancel(context.Background())
	n.stop = cancel
	n.bg = make(chan struct{})
	go func() {
		defer close(n.bg)
		n.background(bgctx)
	}()
	return nil
}

// settleCity returns the stored city id, storing cfg.City on first start.
func (n *Node) settleCity(ctx context.Context) (string, error) {
	want := n.Config.City
	if want != "" && !cityRe.MatchString(want) {
		return "", fmt.Errorf("city id %q is not of the form CN-NNNNNN (e.g. CN-410100)", want)
	}
	var have string
	err := n.DB.R.QueryRowContext(ctx, `SELECT value FROM node_settings WHERE name = 'city'`).Scan(&have)
	if err == nil {
		if want != "" && want != have {
			return "", fmt.Errorf("this data belongs to city %s, not %s (此数据属于城市 %s，不是 %s；城市编号在首次启动时确定，不能更改)", have, want, have, want)
		}
		return have, nil
	}
	if want == "" {
		want = DefaultCity
	}
	_, err = n.DB.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ('city', $1) ON CONFLICT (name) DO NOTHING`, want)
	if err != nil {
		return "", err
	}
	if err := n.DB.R.QueryRowContext(ctx, `SELECT value FROM node_settings WHERE name = 'city'`).Scan(&have); err != nil {
		return "", err
	}
	return have, nil
}

// Handler is the node's HTTP handler (API and pages).
func (n *Node) Handler() http.Handler { return n.API }

// Close stops background work and closes the database.
func (n *Node) Close() error {
	if n.stop != nil {
		n.stop()
		<-n.bg
	}
	var first error
	for i := len(n.closers) - 1; i >= 0; i-- {
		if err := n.closers[i](); err != nil && first == nil {
			first = err
		}
	}
	n.closers = nil
	return first
}

// Serve serves HTTP on ln until ctx is cancelled, then shuts down
// gracefully (in-flight requests get up to 10 s).
func (n *Node) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           n.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(n.Log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if e := <-errc; !errors.Is(e, http.ErrServerClosed) && err == nil {
		err = e
	}
	return err
}
