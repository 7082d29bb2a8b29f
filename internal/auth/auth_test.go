package auth_test

import (
	"context"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func TestStaffLoginTokensAndRevocation(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := storetest.Open(t, dsn)
		var clock atomic.Int64
		clock.Store(time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC).UnixNano())
		now := func() time.Time { return time.Unix(0, clock.Load()) }
		s := auth.New(db, now)
		s.PasswordIterations = 1000
		s.CacheTTL = 0

		if _, err := s.CreateStaff(ctx, "wang", "王", auth.RoleHRAdmin, "short", ""); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Fatalf("short password: %v", err)
		}
		if _, err := s.CreateStaff(ctx, "wang", "王", "boss", "long enough", ""); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Fatalf("bad role: %v", err)
		}
		u, err := s.CreateStaff(ctx, "wang", "王", auth.RoleHRAdmin, "correct horse", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.CreateStaff(ctx, "wang", "王2", auth.RoleFinance, "correct horse", ""); apperr.CodeOf(err) != apperr.AlreadyExists {
			t.Fatalf("duplicate: %v", err)
		}
		if _, _, err := s.LoginStaff(ctx, "wang", "wrong horse", time.Hour); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("wrong password: %v", err)
		}
		if _, _, err := s.LoginStaff(ctx, "nobody", "correct horse", time.Hour); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("unknown user: %v", err)
		}
		tok, p, err := s.LoginStaff(ctx, "wang", "correct horse", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if p.Role != auth.RoleHRAdmin || p.Subject != u.ID || !strings.HasPrefix(tok, "yk_") {
			t.Fatalf("principal %+v token %q", p, tok)
		}
		got, err := s.Authenticate(ctx, tok)
		if err != nil || got.Subject != u.ID || got.Role != auth.RoleHRAdmin {
			t.Fatalf("authenticate: %+v %v", got, err)
		}
		// The stored form is a hash, never the token.
		var n int
		db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM auth_tokens WHERE hash = $1`, tok).Scan(&n)
		if n != 0 {
			t.Fatal("token stored in clear")
		}
		for _, bad := range []string{"", "yk_", "nope", tok + "x", strings.Repeat("yk_a", 40)} {
			if _, err := s.Authenticate(ctx, bad); apperr.CodeOf(err) != apperr.Unauthorized {
				t.Fatalf("token %q: %v", bad, err)
			}
		}
		// Expiry.
		clock.Add(int64(61 * time.Minute))
		if _, err := s.Authenticate(ctx, tok); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("expired token accepted: %v", err)
		}
		// Revocation of a subject's tokens.
		tok2, _, err := s.IssueToken(ctx, auth.Principal{Kind: auth.KindTerminal, Subject: "T1", Role: auth.RoleTerminal, ProviderID: "P1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := s.Authenticate(ctx, tok2); err != nil || p.ProviderID != "P1" {
			t.Fatalf("terminal token: %+v %v", p, err)
		}
		if err := s.RevokeSubject(ctx, auth.KindTerminal, "T1"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, tok2); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("revoked token accepted: %v", err)
		}
		// Audit log.
		if err := s.Audit(ctx, p, "reveal_id_number", "res_1", "counter 3"); err != nil {
			t.Fatal(err)
		}
		log, err := s.AuditLog(ctx, "res_1", 0, 10)
		if err != nil || len(log) != 1 || log[0].Action != "reveal_id_number" || log[0].Actor != u.ID {
			t.Fatalf("audit log %+v %v", log, err)
		}
	})
}

func TestPasswordHash(t *testing.T) {
	h := auth.HashPassword("secret-123", 1000)
	if !auth.CheckPassword(h, "secret-123") || auth.CheckPassword(h, "secret-124") {
		t.Fatal("password check wrong")
	}
	if auth.HashPassword("secret-123", 1000) == h {
		t.Fatal("hash not salted")
	}
	for _, bad := range []string{"", "x$y", "pbkdf2-sm3$0$00$00", "pbkdf2-sm3$99999999999$00$00", "pbkdf2-sm3$10$zz$00"} {
		if auth.CheckPassword(bad, "secret-123") {
			t.Fatalf("malformed hash %q accepted", bad)
		}
	}
}
