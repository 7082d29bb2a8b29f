package node

import (
	"context"
	"fmt"
	"time"

	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/vault"
)

// services are the domain services of a node.
type services struct {
	Vault     *vault.Vault
	Residents *resident.Service
	Catalog   *catalog.Catalog
}

// wire creates the domain services and registers the API routes.
func (n *Node) wire(ctx context.Context) error {
	v, err := vault.Open(n.Config.DataDir)
	if err != nil {
		return fmt.Errorf("opening the vault (master key) in %s: %w", n.Config.DataDir, err)
	}
	n.Vault = v
	n.Residents = resident.New(n.DB, v, n.Now)
	if n.Catalog, err = catalog.Open(ctx, n.DB); err != nil {
		return fmt.Errorf("opening the service catalogue: %w", err)
	}

	n.staffRoutes()
	n.residentRoutes()
	n.catalogRoutes()
	if err := n.wireScans(ctx); err != nil {
		return err
	}
	if err := n.wireWeb(ctx); err != nil {
		return err
	}
	return nil
}

// background runs periodic work until ctx ends.
func (n *Node) background(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.Auth.PurgeExpired(ctx, n.Now().Add(-24*time.Hour))
		}
	}
}
