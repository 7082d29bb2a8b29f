package auth_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

var admin = auth.LocalAdmin("root@host1")

// wantCode fails unless err has code, with texts in both languages.
func wantCode(t *testing.T, what string, err error, code apperr.Code) {
	t.Helper()
	if apperr.CodeOf(err) != code {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
	if en, zh := apperr.As(err).Text(); en == "" || zh == "" || en == zh {
		t.Fatalf("%s: the answer lacks a text in English or Chinese: %q %q", what, en, zh)
	}
}

// TestAddStaffRules: AddStaff refuses bad names, roles, passwords, a
// provider user without an existing provider and a provider for any other
// role, and a duplicate name, each clearly; what it creates is listed
// (never a hash) and audited with the administrator as actor.
func TestAddStaffRules(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := storetest.Open(t, dsn)
		s := auth.New(db, nil)
		s.PasswordIterations = 1000
		if _, err := db.W.ExecContext(ctx, `INSERT INTO providers(id, name, kind, scenarios, disabled, created_at) VALUES ('prv_bus','bus','transit','[]',0,0)`); err != nil {
			t.Fatal(err)
		}
		const pw = "correct horse"
		for _, c := range []struct {
			what                    string
			user, name              string
			role                    auth.Role
			password, provider, fld string
		}{
			{"empty name", " ", "", auth.RoleFinance, pw, "", "username"},
			{"space inside", "wang wei", "", auth.RoleFinance, pw, "", "username"},
			{"control character", "wang\x07", "", auth.RoleFinance, pw, "", "username"},
			{"65 characters", strings.Repeat("王", 65), "", auth.RoleFinance, pw, "", "username"},
			{"display name with a newline", "wang", "王\n伟", auth.RoleFinance, pw, "", "display_name"},
			{"unknown role", "wang", "", "admin", pw, "", "role"},
			{"short password", "wang", "", auth.RoleFinance, "short", "", "password"},
			{"7-character Chinese password", "wang", "", auth.RoleFinance, "一二三四五六七", "", "password"},
			{"provider user without a provider", "clerk", "", auth.RoleProvider, pw, "", "provider_id"},
			{"unknown provider", "clerk", "", auth.RoleProvider, pw, "prv_gone", "provider_id"},
			{"finance with a provider", "wang", "", auth.RoleFinance, pw, "prv_bus", "provider_id"},
		} {
			_, err := s.AddStaff(ctx, admin, c.user, c.name, c.role, c.password, c.provider)
			wantCode(t, c.what, err, apperr.ValidationFailed)
			if f := apperr.As(err).Field; f != c.fld {
				t.Fatalf("%s: field %q, want %q", c.what, f, c.fld)
			}
		}
		if err := apperr.As(func() error {
			_, err := s.AddStaff(ctx, admin, "clerk", "", auth.RoleProvider, pw, "prv_gone")
			return err
		}()); !strings.Contains(err.Detail, "prv_gone") {
			t.Fatalf("the unknown provider is not named: %v", err)
		}

		wang, err := s.AddStaff(ctx, admin, "  wang  ", "王伟", auth.RoleHRAdmin, pw, "")
		if err != nil {
			t.Fatal(err)
		}
		clerk, err := s.AddStaff(ctx, admin, "李小明", "", auth.RoleProvider, "八个汉字的密码呀", "prv_bus")
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.AddStaff(ctx, admin, "wang", "另一个", auth.RoleFinance, pw, "")
		wantCode(t, "duplicate", err, apperr.AlreadyExists)
		if en, zh := apperr.As(err).Text(); !strings.Contains(en, `"wang"`) || !strings.Contains(zh, "已存在") {
			t.Fatalf("duplicate: %q %q", en, zh)
		}

		list, err := s.ListStaff(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 2 || list[0].Username != "wang" || list[1].Username != "李小明" {
			t.Fatalf("list: %+v", list)
		}
		if u := list[0]; u.ID != wang.ID || u.DisplayName != "王伟" || u.Role != auth.RoleHRAdmin || u.Disabled || !u.CreatedAt.Equal(wang.CreatedAt) {
			t.Fatalf("listed %+v, created %+v", u, wang)
		}
		if u := list[1]; u.ProviderID != "prv_bus" || u.Role != auth.RoleProvider {
			t.Fatalf("listed %+v", u)
		}
		if _, _, err := s.LoginStaff(ctx, "李小明", "八个汉字的密码呀", time.Hour); err != nil {
			t.Fatal(err)
		}
		for _, u := range []auth.StaffUser{wang, clerk} {
			log, err := s.AuditLog(ctx, u.ID, 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(log) != 1 || log[0].Action != "create_staff" || log[0].Actor != "root@host1" || log[0].ActorRole != auth.RoleAdmin ||
				!strings.Contains(log[0].Detail, "role="+string(u.Role)) || strings.Contains(log[0].Detail, pw) {
				t.Fatalf("audit of %s: %+v", u.Username, log)
			}
		}
		// CreateStaff (the demo's) is held to the same rules.
		if _, err := s.CreateStaff(ctx, "op", "", auth.RoleOperator, pw, "prv_bus"); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Fatalf("CreateStaff of an operator with a provider: %v", err)
		}
	})
}

// TestDisableStaff: disabling a staff user ends every session of theirs
// at once in this process (cached look-ups included) and within CacheTTL
// in another; they cannot sign in while disabled (the answer of a wrong
// password); enabling lets them sign in again, the old sessions stay
// ended. Other staff are not touched. All of it is audited.
func TestDisableStaff(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := storetest.Open(t, dsn)
		s := auth.New(db, nil)
		s.PasswordIterations = 1000
		s.CacheTTL = time.Hour // revocation must clear this process's cache
		// Another node process on the same database, with its own clock.
		var clock atomic.Int64
		clock.Store(time.Now().UnixNano())
		other := auth.New(db, func() time.Time { return time.Unix(0, clock.Load()) })

		const pw = "correct horse"
		for _, u := range []string{"wang", "li"} {
			if _, err := s.AddStaff(ctx, admin, u, u, auth.RoleFinance, pw, ""); err != nil {
				t.Fatal(err)
			}
		}
		login := func(user string) string {
			t.Helper()
			tok, _, err := s.LoginStaff(ctx, user, pw, time.Hour)
			if err != nil {
				t.Fatalf("sign-in %s: %v", user, err)
			}
			for _, a := range []*auth.Service{s, other} {
				if _, err := a.Authenticate(ctx, tok); err != nil { // now cached
					t.Fatal(err)
				}
			}
			return tok
		}
		w1, w2, li := login("wang"), login("wang"), login("li")

		u, err := s.DisableStaff(ctx, admin, "wang")
		if err != nil || !u.Disabled || u.Username != "wang" {
			t.Fatalf("disable: %+v %v", u, err)
		}
		for _, tok := range []string{w1, w2} {
			if _, err := s.Authenticate(ctx, tok); apperr.CodeOf(err) != apperr.Unauthorized {
				t.Fatalf("a session of the disabled user still works: %v", err)
			}
		}
		if _, err := s.Authenticate(ctx, li); err != nil {
			t.Fatalf("another user's session ended: %v", err)
		}
		// The other process trusts its cache for CacheTTL, no longer.
		clock.Add(int64(other.CacheTTL + time.Millisecond))
		for _, tok := range []string{w1, w2} {
			if _, err := other.Authenticate(ctx, tok); apperr.CodeOf(err) != apperr.Unauthorized {
				t.Fatalf("a session of the disabled user still works in another process after CacheTTL: %v", err)
			}
		}
		_, _, err = s.LoginStaff(ctx, "wang", pw, time.Hour)
		wantCode(t, "sign-in of a disabled user", err, apperr.Unauthorized)
		var live int
		if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM auth_tokens WHERE subject = $1 AND revoked = 0`, u.ID).Scan(&live); err != nil || live != 0 {
			t.Fatalf("%d live tokens of the disabled user (%v)", live, err)
		}
		// Disabling again (a retry after a failure part way) is harmless.
		if _, err := s.DisableStaff(ctx, admin, "wang"); err != nil {
			t.Fatal(err)
		}
		_, err = s.DisableStaff(ctx, admin, "nobody")
		wantCode(t, "disable an unknown user", err, apperr.NotFound)
		_, err = s.EnableStaff(ctx, admin, "nobody")
		wantCode(t, "enable an unknown user", err, apperr.NotFound)

		if u, err := s.EnableStaff(ctx, admin, "wang"); err != nil || u.Disabled {
			t.Fatalf("enable: %+v %v", u, err)
		}
		again := login("wang")
		for _, tok := range []string{w1, w2} {
			if _, err := s.Authenticate(ctx, tok); apperr.CodeOf(err) != apperr.Unauthorized {
				t.Fatalf("a session ended by the disable came back with the enable: %v", err)
			}
		}
		if _, err := s.Authenticate(ctx, again); err != nil {
			t.Fatal(err)
		}

		log, err := s.AuditLog(ctx, u.ID, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		var actions []string
		for _, e := range log {
			if e.Actor != "root@host1" || e.ActorRole != auth.RoleAdmin || !strings.Contains(e.Detail, `user="wang"`) {
				t.Fatalf("audit entry %+v", e)
			}
			actions = append(actions, e.Action)
		}
		if got := strings.Join(actions, ","); got != "enable_staff,disable_staff,disable_staff,create_staff" {
			t.Fatalf("audit of wang, newest first: %s", got)
		}
	})
}

// TestSetStaffPassword: a reset password works and the old one does not;
// every session of the user ends at once; a sign-in lock of the name is
// cleared (by enabling, too); the policy holds; the password is not in
// the audit log.
func TestSetStaffPassword(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := storetest.Open(t, dsn)
		s := auth.New(db, nil)
		s.PasswordIterations = 1000
		s.CacheTTL = time.Hour
		const oldPW, newPW = "old password", "new password"
		if _, err := s.AddStaff(ctx, admin, "zhao", "赵", auth.RoleOperator, oldPW, ""); err != nil {
			t.Fatal(err)
		}
		tok, p, err := s.LoginStaff(ctx, "zhao", oldPW, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
		_, err = s.SetStaffPassword(ctx, admin, "zhao", "short")
		wantCode(t, "a short new password", err, apperr.ValidationFailed)
		_, err = s.SetStaffPassword(ctx, admin, "nobody", newPW)
		wantCode(t, "an unknown user", err, apperr.NotFound)
		if _, _, err := s.LoginStaff(ctx, "zhao", oldPW, time.Hour); err != nil {
			t.Fatalf("a refused reset changed the password: %v", err)
		}

		// Lock the name with wrong passwords.
		for i := 0; i < auth.MaxStaffFails; i++ {
			s.LoginStaff(ctx, "zhao", "wrong password", time.Hour)
		}
		if _, _, err := s.LoginStaff(ctx, "zhao", oldPW, time.Hour); apperr.CodeOf(err) != apperr.RateLimited {
			t.Fatalf("the name should be locked: %v", err)
		}
		if _, err := s.SetStaffPassword(ctx, admin, "zhao", newPW); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, tok); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("a session from before the reset still works: %v", err)
		}
		if _, _, err := s.LoginStaff(ctx, "zhao", oldPW, time.Hour); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("the old password after the reset: %v", err)
		}
		tok2, _, err := s.LoginStaff(ctx, "zhao", newPW, time.Hour)
		if err != nil {
			t.Fatalf("the new password: %v", err)
		}
		if _, err := s.Authenticate(ctx, tok2); err != nil {
			t.Fatal(err)
		}

		// Enabling clears a lock too (a disabled user's sign-ins count).
		if _, err := s.DisableStaff(ctx, admin, "zhao"); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < auth.MaxStaffFails; i++ {
			s.LoginStaff(ctx, "zhao", newPW, time.Hour)
		}
		if _, _, err := s.LoginStaff(ctx, "zhao", newPW, time.Hour); apperr.CodeOf(err) != apperr.RateLimited {
			t.Fatalf("the name should be locked: %v", err)
		}
		if _, err := s.EnableStaff(ctx, admin, "zhao"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.LoginStaff(ctx, "zhao", newPW, time.Hour); err != nil {
			t.Fatalf("sign-in after enable: %v", err)
		}

		log, err := s.AuditLog(ctx, p.Subject, 0, 20)
		if err != nil {
			t.Fatal(err)
		}
		var reset bool
		for _, e := range log {
			if strings.Contains(e.Detail, newPW) || strings.Contains(e.Detail, oldPW) {
				t.Fatalf("a password in the audit log: %+v", e)
			}
			if e.Action == "reset_staff_password" {
				reset = e.Actor == "root@host1" && strings.Contains(e.Detail, "sign_in_count_cleared=true")
			}
		}
		if !reset {
			t.Fatalf("no audit line of the reset: %+v", log)
		}
	})
}

// TestGeneratePassword: generated passwords meet the policy, use the
// unambiguous alphabet and do not repeat.
func TestGeneratePassword(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		pw := auth.GeneratePassword()
		if len(pw) != auth.GeneratedPasswordLen || len(pw) < 16 || auth.CheckStaffPassword(pw) != nil {
			t.Fatalf("password %q", pw)
		}
		if strings.ContainsAny(pw, "0o1liIO- ") {
			t.Fatalf("ambiguous character in %q", pw)
		}
		if seen[pw] {
			t.Fatalf("%q twice", pw)
		}
		seen[pw] = true
	}
}

// gatedStaff is an auth service over a SQLite database whose reads go
// through a gate (a second process, in effect), and one over the same
// file without (the administrator's).
func gatedStaff(t *testing.T) (db *store.DB, gated, plain *auth.Service, gate *storetest.Gate) {
	t.Helper()
	path := storetest.SQLite(t)
	db = storetest.Open(t, path)
	r, gate := storetest.GatedSQLite(t, path)
	gated = auth.New(&store.DB{Dialect: db.Dialect, W: db.W, R: r}, nil)
	gated.PasswordIterations, gated.CacheTTL = 1000, time.Hour
	plain = auth.New(db, nil)
	plain.PasswordIterations, plain.CacheTTL = 1000, time.Hour
	if _, err := plain.AddStaff(context.Background(), admin, "wang", "", auth.RoleFinance, "old password", ""); err != nil {
		t.Fatal(err)
	}
	return db, gated, plain, gate
}

// TestStaffChangeRacesSignIn: a sign-in that read the user (enabled, old
// password) just before they were disabled or their password was reset,
// and stores its token after the revocation, must not hand out a working
// session.
func TestStaffChangeRacesSignIn(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(ctx context.Context, a *auth.Service) error
	}{
		{"disable", func(ctx context.Context, a *auth.Service) error {
			_, err := a.DisableStaff(ctx, admin, "wang")
			return err
		}},
		{"password", func(ctx context.Context, a *auth.Service) error {
			_, err := a.SetStaffPassword(ctx, admin, "wang", "new password")
			return err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			db, gated, plain, gate := gatedStaff(t)
			gate.Arm()
			type result struct {
				tok string
				err error
			}
			done := make(chan result, 1)
			go func() {
				tok, _, err := gated.LoginStaff(ctx, "wang", "old password", time.Hour)
				done <- result{tok, err}
			}()
			gate.Wait(t) // the user has been read
			if err := c.change(ctx, plain); err != nil {
				t.Fatal(err)
			}
			gate.Release()
			res := <-done
			if res.err == nil {
				_, aerr := plain.Authenticate(ctx, res.tok)
				t.Fatalf("a sign-in racing the change got a session (it authenticates with %v)", aerr)
			}
			wantCode(t, "a sign-in racing the change", res.err, apperr.Unauthorized)
			var live int
			if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM auth_tokens WHERE kind = 'staff' AND revoked = 0`).Scan(&live); err != nil || live != 0 {
				t.Fatalf("%d unrevoked sessions after the race (%v)", live, err)
			}
		})
	}
}

// TestDisableStaffRacesCacheFill: a look-up that read a token of the user
// just before they were disabled does not put it into the cache after the
// disable revoked it.
func TestDisableStaffRacesCacheFill(t *testing.T) {
	ctx := context.Background()
	_, gated, plain, gate := gatedStaff(t)
	tok, _, err := plain.LoginStaff(ctx, "wang", "old password", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gate.Arm()
	done := make(chan error, 1)
	go func() { _, err := gated.Authenticate(ctx, tok); done <- err }()
	gate.Wait(t) // the token has been read, unrevoked
	if _, err := gated.DisableStaff(ctx, admin, "wang"); err != nil {
		t.Fatal(err)
	}
	gate.Release()
	if err := <-done; err != nil {
		t.Logf("the in-flight look-up: %v", err)
	}
	if _, err := gated.Authenticate(ctx, tok); apperr.CodeOf(err) != apperr.Unauthorized {
		t.Fatalf("a disabled user's session works after the race: %v", err)
	}
}

// TestWeakStaffPasswords: spaces do not count toward the length, and
// passwords anyone would try first are refused in both languages.
func TestWeakStaffPasswords(t *testing.T) {
	for _, pw := range []string{"        ", "  abc  de  ", "12345678", "87654321", "abcdefgh", "aaaaaaaaaa", "Password", "QWERTYUI", " 12341234 "} {
		err := auth.CheckStaffPassword(pw)
		if apperr.CodeOf(err) != apperr.ValidationFailed || apperr.As(err).MessageZh == "" {
			t.Errorf("%q: %v, want validation_failed", pw, err)
		}
	}
	for _, pw := range []string{"correct horse", "operator-pass", "12345679", "abcdefgi", "right password", "北京欢迎你一卡通好"} {
		if err := auth.CheckStaffPassword(pw); err != nil {
			t.Errorf("%q refused: %v", pw, err)
		}
	}
}
