package terminal_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

const staffPassword = "correct horse battery"

// providerWithStaff starts a node and onboards a provider with one staff
// user ("clerk"), and another provider with one ("other").
func providerWithStaff(t *testing.T) (*nodetest.Node, *terminal.Service, terminal.Provider) {
	t.Helper()
	n := nodetest.Start(t, nodetest.Options{})
	ctx := context.Background()
	svc := terminal.New(n.DB, n.Auth, nil, nil)
	p, err := svc.CreateProvider(ctx, "bus co", "transit", []string{"transit.bus"})
	if err != nil {
		t.Fatal(err)
	}
	o, err := svc.CreateProvider(ctx, "library", "library", []string{"transit.bus"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Auth.CreateStaff(ctx, "clerk", "clerk", auth.RoleProvider, staffPassword, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Auth.CreateStaff(ctx, "other", "other", auth.RoleProvider, staffPassword, o.ID); err != nil {
		t.Fatal(err)
	}
	return n, svc, p
}

// gatedAuth is a second auth service over n's database (another process,
// in effect) whose reads go through a gate.
func gatedAuth(t *testing.T, n *nodetest.Node) (*store.DB, *auth.Service, *storetest.Gate) {
	r, gate := storetest.GatedSQLite(t, filepath.Join(n.Dir, "yikatong.db"))
	db := &store.DB{Dialect: n.DB.Dialect, W: n.DB.W, R: r}
	a := auth.New(db, nil)
	a.CacheTTL = time.Hour // only revocation may clear it
	return db, a, gate
}

// TestDisableProviderRevokesStaffSessions: DisableProvider ends the
// sessions of the provider's staff at once (cached look-ups included);
// they cannot sign in while the provider is disabled; another provider's
// staff are not touched.
func TestDisableProviderRevokesStaffSessions(t *testing.T) {
	n, svc, p := providerWithStaff(t)
	ctx := context.Background()
	n.Auth.CacheTTL = time.Hour // revocation must clear this process's cache
	clerk, _, err := n.Auth.LoginStaff(ctx, "clerk", staffPassword, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := n.Auth.LoginStaff(ctx, "other", staffPassword, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range []string{clerk, other} {
		if _, err := n.Auth.Authenticate(ctx, tok); err != nil { // now cached
			t.Fatal(err)
		}
	}
	if _, err := svc.DisableProvider(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Auth.Authenticate(ctx, clerk); apperr.CodeOf(err) != apperr.Unauthorized {
		t.Fatalf("a disabled provider's staff session still works: %v", err)
	}
	if _, err := n.Auth.Authenticate(ctx, other); err != nil {
		t.Fatalf("another provider's staff session ended: %v", err)
	}
	if _, _, err := n.Auth.LoginStaff(ctx, "clerk", staffPassword, time.Hour); apperr.CodeOf(err) != apperr.Forbidden {
		t.Fatalf("sign-in of a disabled provider's staff: %v, want forbidden", err)
	}
	if _, _, err := n.Auth.LoginStaff(ctx, "other", staffPassword, time.Hour); err != nil {
		t.Fatalf("sign-in of another provider's staff: %v", err)
	}
	// Disabling again (a retry after a failure part way) is harmless.
	if _, err := svc.DisableProvider(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	// There is no way to enable a provider again yet; should one be made
	// (here: by hand), its staff sign in again, and old sessions stay ended.
	if _, err := n.DB.W.ExecContext(ctx, `UPDATE providers SET disabled = 0 WHERE id = $1`, p.ID); err != nil {
		t.Fatal(err)
	}
	again, _, err := n.Auth.LoginStaff(ctx, "clerk", staffPassword, time.Hour)
	if err != nil {
		t.Fatalf("sign-in after the provider was enabled again: %v", err)
	}
	if _, err := n.Auth.Authenticate(ctx, again); err != nil {
		t.Fatal(err)
	}
	if _, err := n.Auth.Authenticate(ctx, clerk); apperr.CodeOf(err) != apperr.Unauthorized {
		t.Fatalf("a session ended by the disable came back with the enable: %v", err)
	}
}

// TestDisableProviderRacesStaffSignIn: a sign-in that read the staff user
// and its provider (enabled) just before the provider was disabled and its
// staff's sessions revoked, and issues its token after that, must not hand
// out a working session.
func TestDisableProviderRacesStaffSignIn(t *testing.T) {
	n, svc, p := providerWithStaff(t)
	ctx := context.Background()
	_, gauth, gate := gatedAuth(t, n)

	gate.Arm()
	type result struct {
		tok string
		err error
	}
	done := make(chan result, 1)
	go func() {
		tok, _, err := gauth.LoginStaff(ctx, "clerk", staffPassword, time.Hour)
		done <- result{tok, err}
	}()
	gate.Wait(t)
	// The staff user has been read, its provider enabled; now the
	// provider is disabled (by another process: svc uses n.Auth).
	if _, err := svc.DisableProvider(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	gate.Release()
	res := <-done
	if res.err == nil {
		_, aerr := n.Auth.Authenticate(ctx, res.tok)
		t.Fatalf("a sign-in racing the disable got a session (it authenticates with %v)", aerr)
	}
	if apperr.CodeOf(res.err) != apperr.Forbidden {
		t.Fatalf("a sign-in racing the disable: %v, want forbidden", res.err)
	}
	var live int
	if err := n.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM auth_tokens WHERE kind = 'staff' AND provider_id = $1 AND revoked = 0`, p.ID).Scan(&live); err != nil {
		t.Fatal(err)
	}
	if live != 0 {
		t.Fatalf("%d unrevoked sessions of the disabled provider's staff", live)
	}
}

// TestDisableProviderRacesStaffCacheFill: a look-up that read a staff
// token of the provider just before the provider was disabled must not
// put it into the cache after the disable revoked it.
func TestDisableProviderRacesStaffCacheFill(t *testing.T) {
	n, _, p := providerWithStaff(t)
	ctx := context.Background()
	db, gauth, gate := gatedAuth(t, n)
	gsvc := terminal.New(db, gauth, nil, nil)
	tok, _, err := n.Auth.LoginStaff(ctx, "clerk", staffPassword, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	gate.Arm()
	done := make(chan error, 1)
	go func() { _, err := gauth.Authenticate(ctx, tok); done <- err }()
	gate.Wait(t)
	// The token has been read (unrevoked); now the provider is disabled.
	if _, err := gsvc.DisableProvider(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	gate.Release()
	if err := <-done; err != nil {
		t.Logf("the in-flight look-up: %v", err)
	}
	if _, err := gauth.Authenticate(ctx, tok); apperr.CodeOf(err) != apperr.Unauthorized {
		t.Fatalf("a disabled provider's staff session works after the race: %v", err)
	}
}

// TestDisableProviderRacesCreateTerminal: a terminal onboarded while its
// provider is being disabled — the provider read as enabled, its row
// stored after DisableProvider listed the provider's terminals — is
// disabled too and its credentials never handed out: no terminal of the
// provider stays enabled (one would come back if the provider were
// enabled again).
func TestDisableProviderRacesCreateTerminal(t *testing.T) {
	_, svc, p := providerWithStaff(t)
	ctx := context.Background()
	terminal.SetBeforeInsert(func() {
		terminal.SetBeforeInsert(nil)
		if _, err := svc.DisableProvider(ctx, p.ID); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(func() { terminal.SetBeforeInsert(nil) })
	_, cred, err := svc.CreateTerminal(ctx, p.ID, "gate 7", nil)
	if apperr.CodeOf(err) != apperr.Conflict || cred.Token != "" {
		t.Fatalf("a terminal created while its provider was disabled: %+v %v", cred, err)
	}
	ts, err := svc.Terminals(ctx, p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || !ts[0].Disabled {
		t.Fatalf("the provider's terminals after the race: %+v", ts)
	}
}
