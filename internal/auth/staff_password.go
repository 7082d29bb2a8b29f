package auth

import (
	"context"
	"database/sql"
	"errors"
	"strconv"

	"github.com/yikatong/yikatong/internal/apperr"
)

// ChangeOwnPassword lets signed-in staff user p replace their password
// (change_own_password): the one handed over by an administrator, say,
// at the first sign-in. The current password is asked for, and a wrong
// one (forbidden: the session itself is fine) counts toward the name's
// sign-in lock like a wrong sign-in: a session left open on a counter
// must not let anyone take the account over, nor guess the password
// freely. Every other session of the user ends; the one presented (keep)
// goes on. A disabled user, or one whose provider is disabled, is refused
// as at sign-in.
func (s *Service) ChangeOwnPassword(ctx context.Context, p Principal, keep, current, next string) error {
	if p.Kind != KindStaff {
		return errStaffOnly()
	}
	if err := CheckStaffPassword(next); err != nil {
		return err
	}
	var username string
	err := s.db.R.QueryRowContext(ctx, `SELECT username FROM staff_users WHERE id = $1`, p.Subject).Scan(&username)
	if errors.Is(err, sql.ErrNoRows) {
		return errStaffOnly()
	}
	if err != nil {
		return storeErr(err)
	}
	key, now := signinKey(username), s.now()
	slot, lockouts, err := s.takeSignInSlot(ctx, key, now)
	if err != nil {
		return err
	}
	u, hash, providerOff, err := s.staffForSignIn(ctx, username)
	if err != nil {
		return err
	}
	if u.ID != p.Subject || !CheckPassword(hash, current) || u.Disabled {
		err := s.signInFailed(ctx, key, username, &u, slot, lockouts, now)
		if apperr.CodeOf(err) == apperr.Unauthorized {
			// Said as what it is, and not as 401: the session is fine.
			left := strconv.Itoa(MaxStaffFails - slot)
			return apperr.Newf(apperr.Forbidden, "the current password is wrong (tries left before sign-in is locked for a while: "+left+")",
				"当前密码错误，再错"+left+"次将暂时锁定登录")
		}
		return err
	}
	if err := s.signInSucceeded(ctx, key); err != nil {
		return err
	}
	if providerOff {
		return errProviderDisabled()
	}
	if current == next {
		return errSamePassword()
	}
	newHash := HashPassword(next, s.PasswordIterations)
	err = s.db.Tx(ctx, func(tx *sql.Tx) error {
		// Only over the hash just checked: a reset or another change
		// since then wins, and this one is refused.
		res, err := tx.ExecContext(ctx, `UPDATE staff_users SET password_hash = $3 WHERE id = $1 AND password_hash = $2 AND disabled = 0`, u.ID, hash, newHash)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return errChangedMeanwhile()
		}
		return s.audit(ctx, tx, p, "change_own_password", u.ID, "user="+strconv.Quote(u.Username))
	})
	if err != nil {
		return storeErr(err)
	}
	// After the new hash has committed (LoginStaff relies on that order).
	return s.RevokeSubjectExcept(ctx, KindStaff, u.ID, keep)
}

func errStaffOnly() error {
	return apperr.Newf(apperr.Forbidden, "only a signed-in staff user may change their password here",
		"只有已登录的工作人员可以在此修改自己的密码")
}

func errSamePassword() error {
	return apperr.Invalid("new_password", "the new password is the current one; choose another",
		"新密码与当前密码相同，请换一个")
}

func errChangedMeanwhile() error {
	return apperr.Newf(apperr.Conflict, "the password was changed or the user disabled meanwhile; sign in again",
		"密码已被他人修改或该用户已被停用，请重新登录")
}
