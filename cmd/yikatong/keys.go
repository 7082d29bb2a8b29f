package main

import (
	"context"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/keys"
	"github.com/yikatong/yikatong/internal/store"
)

// rotateKeys makes a new issuer key current for the node whose data
// directory is dataDir and whose database is db. alg is the new key's
// algorithm (ecode.AlgSM2 or ecode.AlgEdDSA; 0 means SM2). The old key keeps
// verifying for keys.RetireGrace; running node processes pick the new key up
// on their next keys.Manager.Refresh.
func rotateKeys(ctx context.Context, dataDir string, db *store.DB, alg ecode.Alg) (newKid string, err error) {
	m, err := keys.Open(ctx, dataDir, db, alg)
	if err != nil {
		return "", err
	}
	return m.Rotate(ctx)
}
