package node

import (
	"context"
	"fmt"
	"time"

	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/vault"
)

// services are the domain services of a node.
type services struct {
	Vault     *vault.Vault
	Residents *resident.Service
}

// wire creates the domain services and registers the API routes.
func (n *Node) wire(ctx context.Context) error {
	v, err := vault.Open(n.Config.DataDir)
	if err != nil {
		return fmt.Errorf("opening the vault (master key) in %s: %w", n.Config.DataDir, err)
	}
	n.Vault = v
	n.Residents = resident.New(n.DB, v, n.Now)

	n.staffRoutes()
	n.residentRoutes()
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
