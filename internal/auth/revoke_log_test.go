package auth_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestRevokeSubjectExceptKeepsOne: every other token of the subject stops
// working at once (cached look-ups included), the kept one and other
// subjects' tokens go on working.
func TestRevokeSubjectExceptKeepsOne(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) { revokeSubjectExcept(t, dsn) })
}

func revokeSubjectExcept(t *testing.T, dsn string) {
	ctx := context.Background()
	db := storetest.Open(t, dsn)
	s := auth.New(db, nil)
	s.CacheTTL = time.Hour // revocation must clear this process's cache
	issue := func(subject string) string {
		tok, _, err := s.IssueToken(ctx, auth.Principal{Kind: auth.KindResident, Subject: subject, Role: auth.RoleResident}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Authenticate(ctx, tok); err != nil { // now cached
			t.Fatal(err)
		}
		return tok
	}
	keep, drop, other := issue("4101000000000001"), issue("4101000000000001"), issue("4101000000000002")
	if err := s.RevokeSubjectExcept(ctx, auth.KindResident, "4101000000000001", keep); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, drop); apperr.CodeOf(err) != apperr.Unauthorized {
		t.Fatalf("other session of the subject still works: %v", err)
	}
	for _, tok := range []string{keep, other} {
		if _, err := s.Authenticate(ctx, tok); err != nil {
			t.Fatalf("kept or unrelated session revoked: %v", err)
		}
	}
}

// TestLogStringMasksCardNumbers: a resident's card number never reaches a
// log line whole; staff and terminal ids do.
func TestLogStringMasksCardNumbers(t *testing.T) {
	r := auth.Principal{Kind: auth.KindResident, Role: auth.RoleResident, Subject: "4101555456958035"}
	if got := r.LogString(); strings.Contains(got, r.Subject) || !strings.HasSuffix(got, "8035") || !strings.HasPrefix(got, "resident:") {
		t.Fatalf("resident: %q", got)
	}
	st := auth.Principal{Kind: auth.KindStaff, Role: auth.RoleHRAdmin, Subject: "usr_abc"}
	if got := st.LogString(); got != "hr_admin:usr_abc" {
		t.Fatalf("staff: %q", got)
	}
}

// TestRevokeRacesCacheFill: a look-up that read a token just before it
// was revoked does not put it into the cache after the revocation, which
// would let it work for CacheTTL more in this process.
func TestRevokeRacesCacheFill(t *testing.T) {
	ctx := context.Background()
	path := storetest.SQLite(t)
	db := storetest.Open(t, path)
	r, gate := storetest.GatedSQLite(t, path)
	s := auth.New(&store.DB{Dialect: db.Dialect, W: db.W, R: r}, nil)
	s.CacheTTL = time.Hour
	for _, revoke := range []func(tok string) error{
		func(tok string) error { return s.RevokeToken(ctx, tok) },
		func(string) error { return s.RevokeSubject(ctx, auth.KindResident, "4101000000000001") },
		func(string) error {
			return s.RevokeSubjectExcept(ctx, auth.KindResident, "4101000000000001", "yk_other")
		},
	} {
		tok, _, err := s.IssueToken(ctx, auth.Principal{Kind: auth.KindResident, Subject: "4101000000000001", Role: auth.RoleResident}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		gate.Arm()
		done := make(chan error, 1)
		go func() { _, err := s.Authenticate(ctx, tok); done <- err }()
		gate.Wait(t)
		if err := revoke(tok); err != nil { // the row was read unrevoked; now it is revoked
			t.Fatal(err)
		}
		gate.Release()
		<-done
		if _, err := s.Authenticate(ctx, tok); apperr.CodeOf(err) != apperr.Unauthorized {
			t.Fatalf("a revoked token works after the race: %v", err)
		}
	}
}
