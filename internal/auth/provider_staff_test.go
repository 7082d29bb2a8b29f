package auth_test

import (
	"context"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestProviderStaff: RevokeProviderStaff ends every session of the
// provider's staff at once (cached look-ups included) and no other; staff
// of a disabled (or unknown) provider cannot sign in, with forbidden for
// the right password and the usual answer for a wrong one; once the
// provider is enabled again they can, and the old sessions stay ended.
func TestProviderStaff(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := storetest.Open(t, dsn)
		s := auth.New(db, nil)
		s.PasswordIterations = 1000
		s.CacheTTL = time.Hour // revocation must clear this process's cache
		setDisabled := func(id string, disabled int) {
			t.Helper()
			if _, err := db.W.ExecContext(ctx, `UPDATE providers SET disabled = $2 WHERE id = $1`, id, disabled); err != nil {
				t.Fatal(err)
			}
		}
		for _, id := range []string{"prv_a", "prv_b"} {
			if _, err := db.W.ExecContext(ctx, `INSERT INTO providers(id, name, kind, scenarios, disabled, created_at) VALUES ($1,$1,'transit','[]',0,0)`, id); err != nil {
				t.Fatal(err)
			}
		}
		const pw = "correct horse"
		for _, u := range []struct {
			name     string
			role     auth.Role
			provider string
		}{{"a1", auth.RoleProvider, "prv_a"}, {"a2", auth.RoleProvider, "prv_a"}, {"b1", auth.RoleProvider, "prv_b"}, {"op", auth.RoleOperator, ""}, {"ghost", auth.RoleProvider, "prv_b"}} {
			if _, err := s.CreateStaff(ctx, u.name, u.name, u.role, pw, u.provider); err != nil {
				t.Fatal(err)
			}
		}
		// CreateStaff refuses an unknown provider; a row naming one (by
		// hand, or an older version) must not let its user in either.
		if _, err := db.W.ExecContext(ctx, `UPDATE staff_users SET provider_id = 'prv_gone' WHERE username = 'ghost'`); err != nil {
			t.Fatal(err)
		}
		login := func(user string) string {
			t.Helper()
			tok, _, err := s.LoginStaff(ctx, user, pw, time.Hour)
			if err != nil {
				t.Fatalf("sign-in %s: %v", user, err)
			}
			if _, err := s.Authenticate(ctx, tok); err != nil { // now cached
				t.Fatal(err)
			}
			return tok
		}
		a1, a1b, a2, b1, op := login("a1"), login("a1"), login("a2"), login("b1"), login("op")
		if _, _, err := s.LoginStaff(ctx, "ghost", pw, time.Hour); apperr.CodeOf(err) != apperr.Forbidden {
			t.Fatalf("sign-in of staff of an unknown provider: %v, want forbidden", err)
		}
		if err := s.RevokeProviderStaff(ctx, ""); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Fatalf("revoking the staff of provider \"\" (everyone without one): %v", err)
		}

		setDisabled("prv_a", 1)
		if err := s.RevokeProviderStaff(ctx, "prv_a"); err != nil {
			t.Fatal(err)
		}
		for _, tok := range []string{a1, a1b, a2} {
			if _, err := s.Authenticate(ctx, tok); apperr.CodeOf(err) != apperr.Unauthorized {
				t.Fatalf("a session of the disabled provider's staff still works: %v", err)
			}
		}
		for _, tok := range []string{b1, op} {
			if _, err := s.Authenticate(ctx, tok); err != nil {
				t.Fatalf("a session of other staff ended: %v", err)
			}
		}
		_, _, err := s.LoginStaff(ctx, "a1", pw, time.Hour)
		if apperr.CodeOf(err) != apperr.Forbidden {
			t.Fatalf("sign-in of the disabled provider's staff: %v, want forbidden", err)
		}
		if en, zh := apperr.As(err).Text(); en == "" || zh == "" || en == zh {
			t.Fatalf("the refusal lacks a text: %q %q", en, zh)
		}
		// A wrong password says nothing of the provider, and counts.
		for i := 0; i < auth.MaxStaffFails-1; i++ {
			if _, _, err := s.LoginStaff(ctx, "a2", "wrong horse", time.Hour); apperr.CodeOf(err) != apperr.Unauthorized {
				t.Fatalf("wrong password of the disabled provider's staff: %v", err)
			}
		}
		// The right password, refused, is not a wrong one: it does not
		// lock the name.
		for i := 0; i < auth.MaxStaffFails+1; i++ {
			if _, _, err := s.LoginStaff(ctx, "a1", pw, time.Hour); apperr.CodeOf(err) != apperr.Forbidden {
				t.Fatalf("sign-in %d of the disabled provider's staff: %v, want forbidden", i, err)
			}
		}
		var live int
		if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM auth_tokens WHERE provider_id = 'prv_a' AND revoked = 0`).Scan(&live); err != nil {
			t.Fatal(err)
		}
		if live != 0 {
			t.Fatalf("%d live tokens of the disabled provider's staff", live)
		}
		login("b1")

		setDisabled("prv_a", 0)
		again := login("a1")
		if _, err := s.Authenticate(ctx, again); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, a1); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("a session ended by the disable came back with the enable: %v", err)
		}
	})
}
