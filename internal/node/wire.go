package node

import (
	"context"
	"time"
)

// wire creates the domain services and registers the API routes.
func (n *Node) wire(ctx context.Context) error {
	n.staffRoutes()
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
