package auth

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"strconv"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Staff sign-in lock-out. MaxStaffFails consecutive wrong passwords for a
// user name lock it for StaffLockout; each further lock in a row doubles
// the period, up to MaxStaffLockout. A right password resets both counts.
//
// The count is kept per user name as typed, whether or not such a user
// exists, in the database (staff_signin_throttle) so that every node
// process sharing it sees the same count, and an unknown name is answered
// and limited exactly like a known one: the answers tell nothing about
// which names exist. The key is the name's SHA-256, so no typed text is
// stored. Counts idle for a day are forgotten (PurgeExpired).
const (
	MaxStaffFails   = 5
	StaffLockout    = 15 * time.Minute
	MaxStaffLockout = 24 * time.Hour
)

func signinKey(username string) string {
	h := sha256.Sum256([]byte(username))
	return hex.EncodeToString(h[:])
}

// takeSignInSlot reserves one of the MaxStaffFails attempts for key before
// the slow password check, so concurrent guesses cannot exceed the limit.
// It returns the attempt's number and the locks in a row so far, or
// rate_limited if the name is locked (or its last attempts are in flight).
func (s *Service) takeSignInSlot(ctx context.Context, key string, now time.Time) (slot, lockouts int, err error) {
	err = s.db.W.QueryRowContext(ctx, `INSERT INTO staff_signin_throttle(name_hash, fails, locked_until, lockouts, updated_at) VALUES ($1, 1, 0, 0, $2)
		ON CONFLICT (name_hash) DO UPDATE SET fails = staff_signin_throttle.fails + 1, updated_at = $2
		WHERE staff_signin_throttle.fails < $3 AND staff_signin_throttle.locked_until <= $2
		RETURNING fails, lockouts`, key, now.UnixMilli(), MaxStaffFails).Scan(&slot, &lockouts)
	if errors.Is(err, sql.ErrNoRows) {
		var until int64
		if err := s.db.W.QueryRowContext(ctx, `SELECT locked_until FROM staff_signin_throttle WHERE name_hash = $1`, key).Scan(&until); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return 0, 0, storeErr(err)
		}
		en, zh := waitText(time.UnixMilli(until).Sub(now))
		return 0, 0, apperr.Newf(apperr.RateLimited,
			"too many wrong passwords for this user name: sign-in is locked; try again in "+en,
			"该用户名密码错误次数过多，登录已锁定，请"+zh+"后再试")
	}
	if err != nil {
		return 0, 0, storeErr(err)
	}
	return slot, lockouts, nil
}

// signInSucceeded clears key's counts.
func (s *Service) signInSucceeded(ctx context.Context, key string) error {
	_, err := s.db.W.ExecContext(ctx, `DELETE FROM staff_signin_throttle WHERE name_hash = $1`, key)
	return storeErr(err)
}

// signInFailed answers a wrong password (or unknown or disabled user) that
// used attempt slot, and locks the name at the last one. u is the user if
// the name exists (for the audit log only: the answer is the same).
func (s *Service) signInFailed(ctx context.Context, key, username string, u *StaffUser, slot, lockouts int, now time.Time) error {
	if slot < MaxStaffFails {
		left := strconv.Itoa(MaxStaffFails - slot)
		tries := " tries left"
		if slot == MaxStaffFails-1 {
			tries = " try left"
		}
		return apperr.Newf(apperr.Unauthorized, "wrong username or password; "+left+tries+" before sign-in is locked for a while",
			"用户名或密码错误，再错"+left+"次将暂时锁定登录")
	}
	lockouts++
	period := StaffLockout
	for i := 1; i < lockouts && period < MaxStaffLockout; i++ {
		period *= 2
	}
	period = min(period, MaxStaffLockout)
	until := now.Add(period)
	if _, err := s.db.W.ExecContext(ctx, `UPDATE staff_signin_throttle SET fails = 0, lockouts = $2, locked_until = $3, updated_at = $4 WHERE name_hash = $1`,
		key, lockouts, until.UnixMilli(), now.UnixMilli()); err != nil {
		return storeErr(err)
	}
	subject := ""
	if u != nil {
		subject = u.ID
	}
	if len(username) > 64 {
		username = username[:64]
	}
	// The lock holds whether or not the audit line could be written.
	s.Audit(ctx, Principal{Subject: "system"}, "staff_sign_in_locked", subject,
		"user="+strconv.Quote(username)+" until="+until.UTC().Format(time.RFC3339)+" lockouts="+strconv.Itoa(lockouts))
	en, zh := waitText(period)
	return apperr.Newf(apperr.RateLimited,
		"wrong password "+strconv.Itoa(MaxStaffFails)+" times in a row: sign-in for this user name is locked; try again in "+en,
		"连续"+strconv.Itoa(MaxStaffFails)+"次密码错误，该用户名已锁定登录，请"+zh+"后再试")
}

// waitText says d in whole minutes (or hours from two hours up), rounded up.
func waitText(d time.Duration) (en, zh string) {
	if d >= 2*time.Hour {
		h := strconv.Itoa(int((d + time.Hour - 1) / time.Hour))
		return h + " hours", h + "小时"
	}
	m := max(1, int((d+time.Minute-1)/time.Minute))
	if m == 1 {
		return "1 minute", "1分钟"
	}
	return strconv.Itoa(m) + " minutes", strconv.Itoa(m) + "分钟"
}
