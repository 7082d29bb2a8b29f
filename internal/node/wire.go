package node

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/keys"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/subsidy"
	"github.com/yikatong/yikatong/internal/vault"
)

// services are the domain services of a node.
type services struct {
	Vault     *vault.Vault
	Residents *resident.Service
	Catalog   *catalog.Catalog
	Keys      *keys.Manager
	Ledger    *ledger.Ledger
	Subsidies *subsidy.Service
	trust     trustCache
	scan      *scanServices
}

// wire creates the domain services and registers the API routes.
func (n *Node) wire(ctx context.Context) error {
	v, err := n.openVault(ctx)
	if err != nil {
		return err
	}
	n.Vault = v
	n.Residents = resident.New(n.DB, v, n.Now)
	// New cards carry the city's region code as prefix, so that other
	// cities' nodes can tell where a physical card comes from.
	n.Residents.SetCardIssuer(n.City)
	if n.Catalog, err = catalog.Open(ctx, n.DB); err != nil {
		return fmt.Errorf("opening the service catalogue: %w", err)
	}
	// The trust bundle tells terminals which scenarios may run offline.
	n.Catalog.OnChange(n.invalidateTrust)
	alg := ecode.AlgSM2
	if n.Config.Alg != "" {
		if alg, err = ecode.ParseAlg(n.Config.Alg); err != nil {
			return fmt.Errorf("--alg: %w", err)
		}
	}
	if n.Keys, err = keys.Open(ctx, n.Config.DataDir, n.DB, alg); err != nil {
		return fmt.Errorf("opening signing keys: %w", err)
	}
	if n.Ledger, err = ledger.Open(ctx, n.DB, ledger.Options{Now: n.Now, Logger: n.Log}); err != nil {
		return fmt.Errorf("opening the ledger: %w", err)
	}
	n.closers = append(n.closers, func() error { n.Ledger.Close(); return nil })
	n.Subsidies = &subsidy.Service{L: n.Ledger, R: residentResolver{n}}
	n.registerMetrics()

	n.staffRoutes()
	n.residentRoutes()
	n.catalogRoutes()
	n.codeRoutes()
	n.ledgerRoutes()
	if err := n.wireScans(ctx); err != nil {
		return err
	}
	if err := n.wireFederation(ctx); err != nil {
		return err
	}
	if err := n.wireWeb(ctx); err != nil {
		return err
	}
	return nil
}

func (n *Node) registerMetrics() {
	reg := n.API.Registry()
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yikatong_ledger_batches_total", Help: "Ledger group-commit batches."},
		func() float64 { return float64(n.Ledger.Stats().Batches) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yikatong_ledger_requests_total", Help: "Ledger requests applied through batches."},
		func() float64 { return float64(n.Ledger.Stats().Entries) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yikatong_ledger_failed_batches_total", Help: "Ledger batches failed by the database."},
		func() float64 { return float64(n.Ledger.Stats().FailedBatches) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yikatong_ledger_retried_batches_total", Help: "Ledger batch attempts rolled back by a conflict with another process and run again."},
		func() float64 { return float64(n.Ledger.Stats().RetriedBatches) }))
	for i, name := range ledger.PhaseNames {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "yikatong_ledger_phase_seconds_total",
			Help:        "Time the ledger's group commit spent per phase (load, apply, write, commit; sync: SQLite's deferred WAL fsync, beside the next batch).",
			ConstLabels: prometheus.Labels{"phase": name}},
			func() float64 { return n.Ledger.Stats().Phases[i].Seconds() }))
	}
}

// background runs periodic work until ctx ends.
func (n *Node) background(ctx context.Context) {
	go n.Keys.RefreshLoop(ctx, keyRefreshEvery())
	n.sweepDebts(ctx) // debt a crash left uncollected after its top-up
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for i := 1; ; i++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := n.Ledger.ExpireHolds(ctx); err != nil && ctx.Err() == nil {
				n.Log.Warn("expiring holds", "err", err)
			}
			n.Auth.PurgeExpired(ctx, n.Now().Add(-24*time.Hour))
			if i%10 == 0 {
				// Every 5 minutes: debt whose wallet got money other than
				// by a top-up (a subsidy, a refund) or whose collection
				// after a top-up failed.
				n.sweepDebts(ctx)
			}
		}
	}
}

// keyRefreshEvery is keys.RefreshEvery, or YIKATONG_KEY_REFRESH (a Go
// duration, e.g. "1s") so multi-process tests need not wait 15 s.
func keyRefreshEvery() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("YIKATONG_KEY_REFRESH")); err == nil && d > 0 {
		return d
	}
	return keys.RefreshEvery
}

// openVault opens the data directory's master key and checks it is the
// key of this database. A database restored without its key (or beside
// another city's) would otherwise start with a new key: every resident's
// sealed data unreadable, their look-up hashes different, so a resident
// could be enrolled twice. The database keeps a check value (a keyed hash
// under the master key, which reveals nothing of it); a database from
// before the check value is checked by opening one resident's sealed data.
func (n *Node) openVault(ctx context.Context) (*vault.Vault, error) {
	dir := n.Config.DataDir
	var want string
	err := n.DB.R.QueryRowContext(ctx, `SELECT value FROM node_settings WHERE name = 'vault_check'`).Scan(&want)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("reading the master key's check value: %w", err)
	}
	keyFile := filepath.Join(dir, vault.KeyFile)
	if _, statErr := os.Stat(keyFile); errors.Is(statErr, os.ErrNotExist) && want != "" {
		return nil, fmt.Errorf("%s has no master key (%s), but the database has data sealed with one: put the city's master.key back from its custody (or restore the backup with it); a new key would make every resident's data unreadable (%s 中没有主密钥（%s），但数据库中有用主密钥加密的数据：请从保管处取回本市的 master.key，或连同密钥恢复备份；新生成的密钥会使所有居民的数据无法读取)", dir, vault.KeyFile, dir, vault.KeyFile)
	}
	v, err := vault.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("opening the vault (master key) in %s: %w", dir, err)
	}
	have := v.LookupHash("vault_check", "yikatong")
	wrongKey := fmt.Errorf("the master key in %s is not the key of this database: put the city's master.key back from its custody; with this key every resident's data would be unreadable (%s 中的主密钥不是此数据库的密钥：请从保管处取回本市的 master.key；用这个密钥，所有居民的数据都将无法读取)", keyFile, keyFile)
	if want != "" {
		if want != have {
			return nil, wrongKey
		}
		return v, nil
	}
	// No check value yet: a new database, or one from before the check.
	var id string
	var pii []byte
	err = n.DB.R.QueryRowContext(ctx, `SELECT id, pii FROM residents ORDER BY id LIMIT 1`).Scan(&id, &pii)
	switch {
	case err == nil:
		if _, err := v.Unseal(pii, id); err != nil {
			return nil, wrongKey
		}
	case !errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("checking the master key: %w", err)
	}
	if _, err := n.DB.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ('vault_check', $1) ON CONFLICT (name) DO NOTHING`, have); err != nil {
		return nil, fmt.Errorf("recording the master key's check value: %w", err)
	}
	return v, nil
}
