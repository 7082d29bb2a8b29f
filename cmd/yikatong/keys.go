package main

import (
	"context"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/keys"
	"github.com/yikatong/yikatong/internal/store"
)

// rotateKeys registers a new issuer key for the node whose data directory
// is dataDir and whose database is db, signing from now + announce (its
// activation time, returned). alg is the new key's algorithm (ecode.AlgSM2
// or ecode.AlgEdDSA; 0 means SM2). The key is in trust bundles at once; the
// old key signs until the activation time and keeps verifying for
// keys.RetireGrace after it. Running node processes load the new key on
// their next keys.Manager.Refresh and switch at the activation time;
// announce 0 switches at once (a compromised key).
func rotateKeys(ctx context.Context, dataDir string, db *store.DB, alg ecode.Alg, announce time.Duration) (newKid string, activeFrom time.Time, err error) {
	m, err := keys.Open(ctx, dataDir, db, alg)
	if err != nil {
		return "", time.Time{}, err
	}
	return m.RotateAnnounced(ctx, announce)
}
