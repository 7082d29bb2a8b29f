package node

import (
	"context"
	"fmt"
	"os"
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
	v, err := vault.Open(n.Config.DataDir)
	if err != nil {
		return fmt.Errorf("opening the vault (master key) in %s: %w", n.Config.DataDir, err)
	}
	n.Vault = v
	n.Residents = resident.New(n.DB, v, n.Now)
	// New cards carry the city's region code as prefix, so that other
	// cities' nodes can tell where a physical card comes from.
	n.Residents.SetCardIssuer(n.City)
	if n.Catalog, err = catalog.Open(ctx, n.DB); err != nil {
		return fmt.Errorf("opening the service catalogue: %w", err)
	}
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
