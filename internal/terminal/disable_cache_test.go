package terminal_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// A scan whose terminal look-up read the row just before the terminal was
// disabled must not put the enabled row back into the cache after
// DisableTerminal dropped it: "at once in this process" would otherwise
// become "within CacheTTL".
func TestDisableRacesCacheFill(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{})
	ctx := context.Background()
	svc := terminal.New(n.DB, n.Auth, nil, nil)
	p, err := svc.CreateProvider(ctx, "bus co", "transit", []string{"transit.bus"})
	if err != nil {
		t.Fatal(err)
	}
	tm, _, err := svc.CreateTerminal(ctx, p.ID, "gate", nil)
	if err != nil {
		t.Fatal(err)
	}
	// A second service over the same database whose reads go through a
	// gate.
	r, gate := storetest.GatedSQLite(t, filepath.Join(n.Dir, "yikatong.db"))
	db := &store.DB{Dialect: n.DB.Dialect, W: n.DB.W, R: r}
	gsvc := terminal.New(db, n.Auth, nil, nil)
	pr := auth.Principal{Kind: auth.KindTerminal, Subject: tm.ID, Role: auth.RoleTerminal, ProviderID: p.ID}

	gate.Arm()
	done := make(chan error, 1)
	go func() { _, err := gsvc.Authorize(ctx, pr, "transit.bus"); done <- err }()
	gate.Wait(t)
	// The row has been read (enabled); now the terminal is disabled.
	if _, err := gsvc.DisableTerminal(ctx, tm.ID); err != nil {
		t.Fatal(err)
	}
	gate.Release()
	if err := <-done; err != nil {
		t.Logf("the in-flight scan: %v", err)
	}
	if _, err := gsvc.Authorize(ctx, pr, "transit.bus"); apperr.CodeOf(err) != apperr.TerminalDisabled {
		t.Fatalf("scan right after DisableTerminal returned: %v, want terminal_disabled", err)
	}
}
