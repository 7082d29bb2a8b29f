package auth_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

func TestStaffSignInLockout(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := storetest.Open(t, dsn)
		var clock atomic.Int64
		clock.Store(time.Date(2026, 11, 22, 8, 0, 0, 0, time.UTC).UnixNano())
		now := func() time.Time { return time.Unix(0, clock.Load()) }
		advance := func(d time.Duration) { clock.Add(int64(d)) }
		s := auth.New(db, now)
		s.PasswordIterations = 1000
		u, err := s.CreateStaff(ctx, "li", "李", auth.RoleFinance, "right password", "")
		if err != nil {
			t.Fatal(err)
		}
		login := func(user, pw string) error {
			_, _, err := s.LoginStaff(ctx, user, pw, time.Hour)
			return err
		}
		want := func(err error, code apperr.Code, what string) {
			t.Helper()
			if apperr.CodeOf(err) != code {
				t.Fatalf("%s: %v, want %s", what, err, code)
			}
			if code != "" {
				if en, zh := apperr.As(err).Text(); en == "" || zh == "" {
					t.Fatalf("%s: no text %q %q", what, en, zh)
				}
			}
		}

		// A right password within the limit resets the count.
		for i := 1; i < auth.MaxStaffFails; i++ {
			want(login("li", "wrong"), apperr.Unauthorized, "wrong password")
		}
		want(login(" li ", "right password"), "", "right password after 4 wrong")
		for i := 1; i < auth.MaxStaffFails; i++ {
			want(login("li", "wrong"), apperr.Unauthorized, "wrong password after reset")
		}
		// The fifth wrong one in a row locks; the right one is refused.
		want(login("li", "wrong"), apperr.RateLimited, "fifth wrong password")
		if e := apperr.As(login("li", "right password")); e.Code != apperr.RateLimited || e.Status != 429 {
			t.Fatalf("right password while locked: %v (%d)", e, e.Status)
		}
		advance(auth.StaffLockout - time.Second)
		want(login("li", "right password"), apperr.RateLimited, "right password a second before the end")
		advance(time.Second)
		want(login("li", "right password"), "", "right password after the lock")

		// Locks in a row grow: the second lasts twice as long.
		for i := 0; i < auth.MaxStaffFails; i++ {
			login("li", "wrong")
		}
		advance(auth.StaffLockout)
		for i := 1; i < auth.MaxStaffFails; i++ {
			want(login("li", "wrong"), apperr.Unauthorized, "wrong password after the first lock")
		}
		want(login("li", "wrong"), apperr.RateLimited, "second lock")
		advance(2*auth.StaffLockout - time.Second)
		want(login("li", "right password"), apperr.RateLimited, "inside the doubled period")
		advance(time.Second)
		want(login("li", "right password"), "", "after the doubled period")

		// An unknown name gets the same answers, lock included.
		for i := 1; i <= auth.MaxStaffFails+1; i++ {
			a, b := login("li", "wrong"), login("nobody", "wrong")
			ea, eb := apperr.As(a), apperr.As(b)
			if ea.Code != eb.Code || ea.Status != eb.Status || ea.Detail != eb.Detail || ea.DetailZh != eb.DetailZh {
				t.Fatalf("attempt %d: known %v, unknown %v", i, a, b)
			}
		}
		want(login("nobody", "wrong"), apperr.RateLimited, "unknown name")

		// Each lock is in the audit log, named by user id when there is one.
		log, err := s.AuditLog(ctx, "", 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		known, unknown := 0, 0
		for _, e := range log {
			if e.Action != "staff_sign_in_locked" {
				continue
			}
			if e.Subject == u.ID {
				known++
			} else if e.Subject == "" {
				unknown++
			}
		}
		if known != 4 || unknown != 1 {
			t.Fatalf("audited locks: %d of li, %d of an unknown name: %+v", known, unknown, log)
		}

		// Counts idle for the purge horizon are forgotten.
		advance(auth.MaxStaffLockout)
		for i := 1; i < auth.MaxStaffFails; i++ {
			login("wang", "wrong")
		}
		advance(25 * time.Hour)
		if err := s.PurgeExpired(ctx, now().Add(-24*time.Hour)); err != nil {
			t.Fatal(err)
		}
		var rows int
		db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM staff_signin_throttle`).Scan(&rows)
		if rows != 0 {
			t.Fatalf("%d sign-in counts left after the purge", rows)
		}
	})
}

// Concurrent guesses cannot get more than MaxStaffFails password checks.
func TestStaffSignInLockoutConcurrent(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := storetest.Open(t, dsn)
		s := auth.New(db, nil)
		s.PasswordIterations = 1000
		if _, err := s.CreateStaff(ctx, "zhao", "赵", auth.RoleOperator, "right password", ""); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var wrong, limited atomic.Int32
		for i := 0; i < 4*auth.MaxStaffFails; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, err := s.LoginStaff(ctx, "zhao", "wrong", time.Hour)
				switch apperr.CodeOf(err) {
				case apperr.Unauthorized:
					wrong.Add(1)
				case apperr.RateLimited:
					limited.Add(1)
				default:
					t.Errorf("concurrent wrong password: %v", err)
				}
			}()
		}
		wg.Wait()
		if wrong.Load() != auth.MaxStaffFails-1 || limited.Load() != 3*auth.MaxStaffFails+1 {
			t.Fatalf("%d unauthorized, %d limited", wrong.Load(), limited.Load())
		}
		if _, _, err := s.LoginStaff(ctx, "zhao", "right password", time.Hour); apperr.CodeOf(err) != apperr.RateLimited {
			t.Fatalf("right password after concurrent guesses: %v", err)
		}
	})
}
