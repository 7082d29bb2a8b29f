package node

import "context"

// openResidentAccounts opens the wallet and medical account of a resident.
func (n *Node) openResidentAccounts(ctx context.Context, residentID string) error { return nil }

// afterCardChange refreshes what depends on card statuses (the deny list).
func (n *Node) afterCardChange(ctx context.Context) {}
