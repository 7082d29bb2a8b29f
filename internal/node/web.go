package node

import "context"

// wireWeb registers the web pages. (Owned by the web work; stub until then.)
func (n *Node) wireWeb(ctx context.Context) error { return nil }
