package node

import "context"

// wireScans creates providers, terminals and the scan path and registers
// their routes. (Owned by the scans work; stub until then.)
func (n *Node) wireScans(ctx context.Context) error { return nil }
