package auth

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Staff account administration: what a city's administrator does on the
// node's host with `yikatong staff …` (cmd/yikatong/staff.go). A real
// city's first staff users are made this way; so are disabling one,
// enabling them again and resetting a forgotten password.
//
// Each change and its audit line (actor: the administrator, LocalAdmin)
// are written in one transaction. Disabling a user and resetting a
// password mark the user's row first and revoke their tokens after it
// commits: LoginStaff re-reads the row after storing a new token, so a
// sign-in in flight either has its token revoked or sees the mark. This
// process's token cache forgets the user's tokens at once, other
// processes' caches within CacheTTL.

// The principal of an administrator acting on the node's host through
// the command line. No token carries it: it exists for the audit log.
const (
	KindAdmin Kind = "admin"
	RoleAdmin Role = "admin"
)

// LocalAdmin is the principal of an administrator on the node's host;
// who names them, e.g. their operating-system account "root@db1".
func LocalAdmin(who string) Principal {
	return Principal{Kind: KindAdmin, Subject: who, Role: RoleAdmin}
}

// Staff password policy.
const (
	MinStaffPassword = 8    // characters
	MaxStaffPassword = 1024 // bytes
)

// CheckStaffPassword reports whether password is acceptable for a staff
// user (validation_failed if not).
func CheckStaffPassword(password string) error {
	if !utf8.ValidString(password) || len(password) > MaxStaffPassword {
		return apperr.Invalid("password", "the password must be valid UTF-8 text of at most "+strconv.Itoa(MaxStaffPassword)+" bytes",
			"密码须为不超过"+strconv.Itoa(MaxStaffPassword)+"字节的有效 UTF-8 文本")
	}
	if utf8.RuneCountInString(strings.TrimSpace(password)) < MinStaffPassword {
		return apperr.Invalid("password", "password must have at least "+strconv.Itoa(MinStaffPassword)+" characters (spaces at either end not counted)",
			"密码至少"+strconv.Itoa(MinStaffPassword)+"个字符（首尾空格不计）")
	}
	if trivialPassword(password) {
		return apperr.Invalid("password", "the password is too easy to guess (one character repeated, a straight run such as 12345678 or abcdefgh, or a well-known one); choose another",
			"密码过于简单（同一字符重复、12345678 或 abcdefgh 这类连续序列，或常见密码），请换一个")
	}
	return nil
}

// commonPasswords are well-known passwords of the minimum length or more
// that the other checks let through (lower case, as compared).
var commonPasswords = []string{"password", "password1", "password123", "passw0rd", "qwertyui", "qwertyuiop", "iloveyou",
	"12341234", "12344321", "11223344", "123123123", "1q2w3e4r", "1qaz2wsx", "asdfghjk", "zxcvbnm123", "admin123", "admin@123", "woaini1314"}

// trivialPassword reports a password made of one character repeated, a
// straight run up or down (12345678, abcdefgh, 87654321), or one of
// commonPasswords.
func trivialPassword(password string) bool {
	p := strings.ToLower(strings.TrimSpace(password))
	if slices.Contains(commonPasswords, p) {
		return true
	}
	rs := []rune(p)
	same, up, down := true, true, true
	for i := 1; i < len(rs); i++ {
		same = same && rs[i] == rs[0]
		up = up && rs[i] == rs[i-1]+1
		down = down && rs[i] == rs[i-1]-1
	}
	return same || up || down
}

// passwordAlphabet has no characters that are easily mistaken for one
// another (0/o, 1/l/i) and no upper case: 31 characters.
const passwordAlphabet = "abcdefghjkmnpqrstuvwxyz23456789"

// GeneratedPasswordLen is the length of GeneratePassword's passwords
// (about 99 bits of entropy).
const GeneratedPasswordLen = 20

// GeneratePassword returns a random password of GeneratedPasswordLen
// characters from an unambiguous alphabet, each drawn uniformly.
func GeneratePassword() string {
	const limit = 256 - 256%len(passwordAlphabet) // no modulo bias
	out := make([]byte, 0, GeneratedPasswordLen)
	var b [32]byte
	for len(out) < GeneratedPasswordLen {
		rand.Read(b[:])
		for _, c := range b {
			if int(c) < limit && len(out) < GeneratedPasswordLen {
				out = append(out, passwordAlphabet[int(c)%len(passwordAlphabet)])
			}
		}
	}
	return string(out)
}

// checkUsername: 1-64 characters of valid UTF-8, none of them white
// space or control characters (sign-in trims the name it is given).
func checkUsername(username string) error {
	n := utf8.RuneCountInString(username)
	ok := utf8.ValidString(username) && n >= 1 && n <= 64
	for _, r := range username {
		if unicode.IsSpace(r) || unicode.IsControl(r) || !unicode.IsPrint(r) {
			ok = false
		}
	}
	if !ok {
		return apperr.Invalid("username", "username must be 1-64 characters without spaces or control characters",
			"用户名须为1-64个字符，不含空格或控制字符")
	}
	return nil
}

// checkDisplayName: at most 64 characters, no control characters.
func checkDisplayName(name string) error {
	ok := utf8.ValidString(name) && utf8.RuneCountInString(name) <= 64
	for _, r := range name {
		if unicode.IsControl(r) {
			ok = false
		}
	}
	if !ok {
		return apperr.Invalid("display_name", "the display name must be at most 64 characters without control characters",
			"显示名称不超过64个字符，且不含控制字符")
	}
	return nil
}

// AddStaff creates a staff user as CreateStaff does, and records in the
// audit log that actor did (create_staff), in one transaction.
func (s *Service) AddStaff(ctx context.Context, actor Principal, username, displayName string, role Role, password, providerID string) (StaffUser, error) {
	return s.createStaff(ctx, &actor, username, displayName, role, password, providerID)
}

// ListStaff returns every staff user, by user name (never a password
// hash).
func (s *Service) ListStaff(ctx context.Context) ([]StaffUser, error) {
	rows, err := s.db.R.QueryContext(ctx, `SELECT id, username, display_name, role, provider_id, disabled, created_at FROM staff_users ORDER BY username`)
	if err != nil {
		return nil, storeErr(err)
	}
	defer rows.Close()
	out := []StaffUser{}
	for rows.Next() {
		u, err := scanStaff(rows)
		if err != nil {
			return nil, storeErr(err)
		}
		out = append(out, u)
	}
	return out, storeErr(rows.Err())
}

func scanStaff(row interface{ Scan(...any) error }) (StaffUser, error) {
	var u StaffUser
	var role string
	var disabled int
	var created int64
	if err := row.Scan(&u.ID, &u.Username, &u.DisplayName, &role, &u.ProviderID, &disabled, &created); err != nil {
		return StaffUser{}, err
	}
	u.Role, u.Disabled, u.CreatedAt = Role(role), disabled != 0, time.UnixMilli(created).UTC()
	return u, nil
}

// errNoStaff answers a user name no staff user has.
func errNoStaff(username string) error {
	return apperr.Newf(apperr.NotFound, "there is no staff user named "+strconv.Quote(username)+" (yikatong staff list shows them)",
		"不存在用户名为 "+strconv.Quote(username)+" 的工作人员（yikatong staff list 可列出全部）")
}

// updateStaff runs change on the staff user named username and audits it
// as action, in one transaction; it returns the user as changed.
func (s *Service) updateStaff(ctx context.Context, actor Principal, username, action string, change func(tx *sql.Tx, u *StaffUser) (detail string, err error)) (StaffUser, error) {
	username = strings.TrimSpace(username)
	var u StaffUser
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		var err error
		u, err = scanStaff(tx.QueryRowContext(ctx, `SELECT id, username, display_name, role, provider_id, disabled, created_at FROM staff_users WHERE username = $1`, username))
		if errors.Is(err, sql.ErrNoRows) {
			return errNoStaff(username)
		}
		if err != nil {
			return err
		}
		detail, err := change(tx, &u)
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, actor, action, u.ID, "user="+strconv.Quote(u.Username)+detail)
	})
	if err != nil {
		return StaffUser{}, storeErr(err)
	}
	return u, nil
}

// clearSignInLock forgets the sign-in count and lock of a user name.
func clearSignInLock(ctx context.Context, tx *sql.Tx, username string) (cleared bool, err error) {
	res, err := tx.ExecContext(ctx, `DELETE FROM staff_signin_throttle WHERE name_hash = $1`, signinKey(username))
	if err != nil {
		return false, err
	}
	n, _ := res.RowsAffected()
	return n > 0, nil
}

// DisableStaff disables the staff user named username (disable_staff):
// they cannot sign in, and every token of theirs is revoked. Calling it
// again (after an error part way) finishes the job. If the revocation
// fails, the error comes with the user, who is disabled.
func (s *Service) DisableStaff(ctx context.Context, actor Principal, username string) (StaffUser, error) {
	u, err := s.updateStaff(ctx, actor, username, "disable_staff", func(tx *sql.Tx, u *StaffUser) (string, error) {
		was := u.Disabled
		u.Disabled = true
		_, err := tx.ExecContext(ctx, `UPDATE staff_users SET disabled = 1 WHERE id = $1`, u.ID)
		return " was_disabled=" + strconv.FormatBool(was), err
	})
	if err != nil {
		return StaffUser{}, err
	}
	// After the mark has committed (LoginStaff relies on that order).
	return u, s.RevokeSubject(ctx, KindStaff, u.ID)
}

// EnableStaff lets a disabled staff user sign in again (enable_staff) and
// clears a sign-in lock of their name. Tokens revoked when they were
// disabled stay revoked.
func (s *Service) EnableStaff(ctx context.Context, actor Principal, username string) (StaffUser, error) {
	return s.updateStaff(ctx, actor, username, "enable_staff", func(tx *sql.Tx, u *StaffUser) (string, error) {
		was := u.Disabled
		u.Disabled = false
		if _, err := tx.ExecContext(ctx, `UPDATE staff_users SET disabled = 0 WHERE id = $1`, u.ID); err != nil {
			return "", err
		}
		unlocked, err := clearSignInLock(ctx, tx, u.Username)
		return " was_disabled=" + strconv.FormatBool(was) + " sign_in_count_cleared=" + strconv.FormatBool(unlocked), err
	})
}

// SetStaffPassword gives the staff user named username a new password
// (reset_staff_password), clears a sign-in lock of their name and revokes
// every token of theirs. A disabled user stays disabled. If the
// revocation fails, the error comes with the user, whose password is
// changed (calling it again revokes the tokens).
func (s *Service) SetStaffPassword(ctx context.Context, actor Principal, username, password string) (StaffUser, error) {
	if err := CheckStaffPassword(password); err != nil {
		return StaffUser{}, err
	}
	hash := HashPassword(password, s.PasswordIterations)
	u, err := s.updateStaff(ctx, actor, username, "reset_staff_password", func(tx *sql.Tx, u *StaffUser) (string, error) {
		if _, err := tx.ExecContext(ctx, `UPDATE staff_users SET password_hash = $2 WHERE id = $1`, u.ID, hash); err != nil {
			return "", err
		}
		unlocked, err := clearSignInLock(ctx, tx, u.Username)
		return " sign_in_count_cleared=" + strconv.FormatBool(unlocked), err
	})
	if err != nil {
		return StaffUser{}, err
	}
	// After the new hash has committed (LoginStaff relies on that order).
	return u, s.RevokeSubject(ctx, KindStaff, u.ID)
}
