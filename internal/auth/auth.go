// Package auth knows who is calling: staff users (hr_admin, finance,
// operator, provider) with hashed passwords, and opaque bearer tokens for
// staff, residents and terminals. It also keeps the audit log of staff
// reads of personal data and of sensitive actions.
//
// Tokens are 32 random bytes (base64url, prefixed "yk_"); only their SHA-256
// is stored, so a database dump does not hand out sessions. Passwords are
// hashed with PBKDF2-HMAC-SM3 and a per-user salt; the iteration count is kept
// with the hash so it can be raised later.
//
// MaxStaffFails wrong passwords in a row lock a staff user name for a while
// (lockout.go); unknown names are counted alike, so they cannot be probed.
//
// Token look-ups are cached in memory for a short time (CacheTTL) because
// every terminal scan authenticates; revoking a token clears it from this
// process's cache at once and from other processes' caches within CacheTTL.
//
// A staff user with a provider (provider_id) signs in only while that
// provider is enabled; disabling it revokes its staff's tokens
// (RevokeProviderStaff), and old tokens stay revoked if it is enabled again.
//
// An administrator on the node's host creates staff users, disables and
// enables them and resets passwords (staff_admin.go, `yikatong staff`),
// audited; disabling a user or resetting their password revokes their
// tokens likewise.
package auth

import (
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emmansun/gmsm/sm3"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
)

// Role is what a principal may do (DESIGN.md "Roles").
type Role string

const (
	RoleHRAdmin  Role = "hr_admin"
	RoleFinance  Role = "finance"
	RoleOperator Role = "operator"
	RoleProvider Role = "provider"
	RoleTerminal Role = "terminal"
	RoleResident Role = "resident"
	RolePeer     Role = "peer"
)

// StaffRoles are the roles a staff user may have.
var StaffRoles = []Role{RoleHRAdmin, RoleFinance, RoleOperator, RoleProvider}

// Kind is the kind of principal a token belongs to.
type Kind string

const (
	KindStaff    Kind = "staff"
	KindResident Kind = "resident"
	KindTerminal Kind = "terminal"
)

// Principal is an authenticated caller.
type Principal struct {
	Kind Kind
	// Subject is the staff user id, the resident's card number or the terminal id.
	Subject string
	Role    Role
	// ProviderID is set for provider staff and terminals.
	ProviderID string
	ExpiresAt  time.Time
}

// Has reports whether p has one of roles.
func (p Principal) Has(roles ...Role) bool {
	for _, r := range roles {
		if p.Role == r {
			return true
		}
	}
	return false
}

// String names the principal as role:subject, for records kept in the
// database (a card's history names its actor). It is not for logs: a
// resident's subject is their card number; use LogString there.
func (p Principal) String() string { return string(p.Role) + ":" + p.Subject }

// LogString is a log-safe description: String, except that a resident's
// card number is masked to its last four digits (a card number names a
// person; logs are read by people who may not see who did what).
func (p Principal) LogString() string {
	if p.Kind != KindResident && p.Role != RoleResident {
		return p.String()
	}
	sub := p.Subject
	if len(sub) > 4 {
		sub = strings.Repeat("*", len(sub)-4) + sub[len(sub)-4:]
	} else {
		sub = strings.Repeat("*", len(sub))
	}
	return string(p.Role) + ":" + sub
}

// StaffUser is a staff account.
type StaffUser struct {
	ID          string    `json:"id"`
	Username    string    `json:"username"`
	DisplayName string    `json:"display_name"`
	Role        Role      `json:"role"`
	ProviderID  string    `json:"provider_id,omitempty"`
	Disabled    bool      `json:"disabled"`
	CreatedAt   time.Time `json:"created_at"`
}

// Service manages staff users, tokens and the audit log.
type Service struct {
	db  *store.DB
	now func() time.Time

	// PasswordIterations for new password hashes.
	PasswordIterations int
	// CacheTTL bounds how long a token look-up is trusted without the database.
	CacheTTL time.Duration

	mu    sync.Mutex
	cache map[string]cached
	// gen counts revocations: a look-up that read a token before one does
	// not put it into the cache after it (it may have read it unrevoked).
	gen uint64
}

type cached struct {
	p     Principal
	until time.Time
}

// New returns a Service.
func New(db *store.DB, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{db: db, now: now, PasswordIterations: 100_000, CacheTTL: 2 * time.Second, cache: map[string]cached{}}
}

// RandomID returns a random identifier with prefix, e.g. "usr_…".
func RandomID(prefix string) string {
	var b [12]byte
	rand.Read(b[:])
	return prefix + "_" + strings.ToLower(base32NoPad(b[:]))
}

func base32NoPad(b []byte) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	var sb strings.Builder
	var acc uint64
	bits := 0
	for _, c := range b {
		acc = acc<<8 | uint64(c)
		bits += 8
		for bits >= 5 {
			bits -= 5
			sb.WriteByte(alphabet[(acc>>uint(bits))&31])
		}
	}
	if bits > 0 {
		sb.WriteByte(alphabet[(acc<<uint(5-bits))&31])
	}
	return sb.String()
}

// HashPassword returns "pbkdf2-sm3$ITER$SALT$HASH" (hex).
func HashPassword(password string, iterations int) string {
	salt := make([]byte, 16)
	rand.Read(salt)
	key, _ := pbkdf2.Key(sm3.New, password, salt, iterations, 32)
	return "pbkdf2-sm3$" + strconv.Itoa(iterations) + "$" + hex.EncodeToString(salt) + "$" + hex.EncodeToString(key)
}

// CheckPassword reports whether password matches hash, in constant time.
func CheckPassword(hash, password string) bool {
	parts := strings.Split(hash, "$")
	if len(parts) != 4 || parts[0] != "pbkdf2-sm3" {
		return false
	}
	iter, err := strconv.Atoi(parts[1])
	if err != nil || iter < 1 || iter > 10_000_000 {
		return false
	}
	salt, err1 := hex.DecodeString(parts[2])
	want, err2 := hex.DecodeString(parts[3])
	if err1 != nil || err2 != nil {
		return false
	}
	got, err := pbkdf2.Key(sm3.New, password, salt, iter, len(want))
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(got, want) == 1
}

// CreateStaff creates a staff user. Usernames are unique (already_exists).
// A provider user's provider must exist; other roles have none. It is not
// audited: an administrator's command goes through AddStaff.
func (s *Service) CreateStaff(ctx context.Context, username, displayName string, role Role, password, providerID string) (StaffUser, error) {
	return s.createStaff(ctx, nil, username, displayName, role, password, providerID)
}

// createStaff creates a staff user and, if actor is not nil, records the
// creation in the audit log in the same transaction.
func (s *Service) createStaff(ctx context.Context, actor *Principal, username, displayName string, role Role, password, providerID string) (StaffUser, error) {
	username, displayName = strings.TrimSpace(username), strings.TrimSpace(displayName)
	if err := checkUsername(username); err != nil {
		return StaffUser{}, err
	}
	if err := checkDisplayName(displayName); err != nil {
		return StaffUser{}, err
	}
	if !validStaffRole(role) {
		return StaffUser{}, apperr.Invalid("role", "role must be hr_admin, finance, operator or provider", "角色须为 hr_admin、finance、operator 或 provider")
	}
	if role == RoleProvider && providerID == "" {
		return StaffUser{}, apperr.Invalid("provider_id", "provider staff need a provider", "服务商用户须指定服务商")
	}
	if role != RoleProvider && providerID != "" {
		return StaffUser{}, apperr.Invalid("provider_id", "only provider staff belong to a provider; leave the provider out for role "+string(role), "只有服务商用户（provider）才属于服务商，角色 "+string(role)+" 不能指定服务商")
	}
	if err := CheckStaffPassword(password); err != nil {
		return StaffUser{}, err
	}
	u := StaffUser{ID: RandomID("usr"), Username: username, DisplayName: displayName, Role: role, ProviderID: providerID, CreatedAt: s.now().UTC().Truncate(time.Millisecond)}
	hash := HashPassword(password, s.PasswordIterations)
	err := s.db.Tx(ctx, func(tx *sql.Tx) error {
		if providerID != "" {
			// Providers are never deleted, so one found here stays.
			var one int
			err := tx.QueryRowContext(ctx, `SELECT 1 FROM providers WHERE id = $1`, providerID).Scan(&one)
			if errors.Is(err, sql.ErrNoRows) {
				return apperr.Invalid("provider_id", "there is no provider "+strconv.Quote(providerID)+" (the operator lists them: GET /v1/providers)",
					"不存在服务商 "+strconv.Quote(providerID)+"（运营方可查看服务商列表：GET /v1/providers）")
			}
			if err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO staff_users(id, username, display_name, role, password_hash, provider_id, disabled, created_at) VALUES ($1,$2,$3,$4,$5,$6,0,$7)`,
			u.ID, u.Username, u.DisplayName, string(u.Role), hash, u.ProviderID, u.CreatedAt.UnixMilli()); err != nil {
			return err
		}
		if actor == nil {
			return nil
		}
		detail := "user=" + strconv.Quote(u.Username) + " role=" + string(u.Role)
		if u.ProviderID != "" {
			detail += " provider=" + u.ProviderID
		}
		return s.audit(ctx, tx, *actor, "create_staff", u.ID, detail)
	})
	if store.IsUniqueViolation(err) {
		return StaffUser{}, apperr.Newf(apperr.AlreadyExists, "a staff user named "+strconv.Quote(username)+" already exists", "用户名 "+strconv.Quote(username)+" 已存在")
	}
	if err != nil {
		return StaffUser{}, storeErr(err)
	}
	return u, nil
}

func validStaffRole(r Role) bool {
	for _, x := range StaffRoles {
		if r == x {
			return true
		}
	}
	return false
}

// StaffByUsername returns a staff user.
func (s *Service) StaffByUsername(ctx context.Context, username string) (StaffUser, string, error) {
	u, hash, _, err := s.staffForSignIn(ctx, username)
	return u, hash, err
}

// staffForSignIn returns a staff user, their password hash and whether
// their provider (if they have one) is disabled, in one read. A provider
// id that names no provider counts as disabled.
func (s *Service) staffForSignIn(ctx context.Context, username string) (u StaffUser, hash string, providerOff bool, err error) {
	var role string
	var disabled, pdisabled int
	var created int64
	err = s.db.R.QueryRowContext(ctx, `SELECT s.id, s.username, s.display_name, s.role, s.password_hash, s.provider_id, s.disabled, s.created_at,
		CASE WHEN s.provider_id = '' THEN 0 ELSE COALESCE(p.disabled, 1) END
		FROM staff_users s LEFT JOIN providers p ON p.id = s.provider_id WHERE s.username = $1`, username).
		Scan(&u.ID, &u.Username, &u.DisplayName, &role, &hash, &u.ProviderID, &disabled, &created, &pdisabled)
	if errors.Is(err, sql.ErrNoRows) {
		return StaffUser{}, "", false, apperr.New(apperr.NotFound)
	}
	if err != nil {
		return StaffUser{}, "", false, storeErr(err)
	}
	u.Role, u.Disabled, u.CreatedAt = Role(role), disabled != 0, time.UnixMilli(created).UTC()
	return u, hash, pdisabled != 0, nil
}

// errProviderDisabled answers the sign-in (right password) of a staff
// user whose provider is disabled.
func errProviderDisabled() error {
	return apperr.Newf(apperr.Forbidden,
		"the service provider of this staff user has been disabled, and its staff cannot sign in; ask the operator",
		"该用户所属的服务商已停用，其工作人员无法登录，请联系运营方")
}

// LoginStaff checks a password and returns a new staff token. Wrong
// passwords are unauthorized; MaxStaffFails of them in a row lock the user
// name for a while (rate_limited, audited). An unknown user name is answered
// and counted the same way, so names cannot be probed. The right password
// of a staff user whose provider is disabled is forbidden (said plainly:
// only someone who knows the password learns it); that of a disabled user
// is answered like a wrong one.
func (s *Service) LoginStaff(ctx context.Context, username, password string, ttl time.Duration) (token string, p Principal, err error) {
	username = strings.TrimSpace(username)
	key, now := signinKey(username), s.now()
	slot, lockouts, err := s.takeSignInSlot(ctx, key, now)
	if err != nil {
		return "", Principal{}, err
	}
	u, hash, providerOff, err := s.staffForSignIn(ctx, username)
	if err != nil {
		if apperr.CodeOf(err) == apperr.NotFound {
			// Spend the same time as a real check so usernames cannot be probed.
			CheckPassword("pbkdf2-sm3$"+strconv.Itoa(s.PasswordIterations)+"$00$00", password)
			return "", Principal{}, s.signInFailed(ctx, key, username, nil, slot, lockouts, now)
		}
		return "", Principal{}, err
	}
	if !CheckPassword(hash, password) || u.Disabled {
		return "", Principal{}, s.signInFailed(ctx, key, username, &u, slot, lockouts, now)
	}
	if err := s.signInSucceeded(ctx, key); err != nil {
		return "", Principal{}, err
	}
	if providerOff {
		return "", Principal{}, errProviderDisabled()
	}
	p = Principal{Kind: KindStaff, Subject: u.ID, Role: u.Role, ProviderID: u.ProviderID}
	token, p, err = s.IssueToken(ctx, p, ttl)
	if err != nil {
		return "", Principal{}, err
	}
	// Between the read above and the token's insert the user may have
	// been disabled (DisableStaff), their password changed
	// (SetStaffPassword) or their provider disabled (RevokeProviderStaff),
	// and their tokens revoked. Each marks the row before it revokes, so
	// either its revocation saw this token or this read sees the mark.
	u2, hash2, off, err := s.staffForSignIn(ctx, username)
	if err == nil && u2.ID == u.ID && !u2.Disabled && hash2 == hash && !off {
		return token, p, nil
	}
	// The token was never handed out; revoke it all the same.
	s.RevokeToken(context.WithoutCancel(ctx), token)
	switch {
	case err != nil:
		return "", Principal{}, err
	case off:
		return "", Principal{}, errProviderDisabled()
	default:
		return "", Principal{}, apperr.Newf(apperr.Unauthorized,
			"this staff user was disabled or their password changed while signing in; sign in again",
			"登录期间该用户已被停用或密码已更改，请重新登录")
	}
}

// IssueToken creates a bearer token for p valid for ttl.
func (s *Service) IssueToken(ctx context.Context, p Principal, ttl time.Duration) (string, Principal, error) {
	var b [32]byte
	rand.Read(b[:])
	token := "yk_" + base64.RawURLEncoding.EncodeToString(b[:])
	now := s.now().UTC()
	p.ExpiresAt = now.Add(ttl).Truncate(time.Millisecond)
	_, err := s.db.W.ExecContext(ctx, `INSERT INTO auth_tokens(hash, kind, subject, role, provider_id, created_at, expires_at, revoked) VALUES ($1,$2,$3,$4,$5,$6,$7,0)`,
		tokenHash(token), string(p.Kind), p.Subject, string(p.Role), p.ProviderID, now.UnixMilli(), p.ExpiresAt.UnixMilli())
	if err != nil {
		return "", Principal{}, storeErr(err)
	}
	return token, p, nil
}

func tokenHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// Authenticate resolves a bearer token. Unknown, expired or revoked tokens
// are unauthorized.
func (s *Service) Authenticate(ctx context.Context, token string) (Principal, error) {
	if !strings.HasPrefix(token, "yk_") || len(token) > 100 {
		return Principal{}, apperr.New(apperr.Unauthorized)
	}
	h := tokenHash(token)
	now := s.now()
	s.mu.Lock()
	c, ok := s.cache[h]
	gen := s.gen
	s.mu.Unlock()
	if ok && now.Before(c.until) {
		if now.After(c.p.ExpiresAt) {
			return Principal{}, apperr.Newf(apperr.Unauthorized, "the session has expired; sign in again", "会话已过期，请重新登录")
		}
		return c.p, nil
	}
	var p Principal
	var kind, role string
	var exp int64
	var revoked int
	err := s.db.QueryRow(ctx, `SELECT kind, subject, role, provider_id, expires_at, revoked FROM auth_tokens WHERE hash = $1`, h).
		Scan(&kind, &p.Subject, &role, &p.ProviderID, &exp, &revoked)
	if errors.Is(err, sql.ErrNoRows) {
		return Principal{}, apperr.New(apperr.Unauthorized)
	}
	if err != nil {
		return Principal{}, storeErr(err)
	}
	p.Kind, p.Role, p.ExpiresAt = Kind(kind), Role(role), time.UnixMilli(exp).UTC()
	if revoked != 0 {
		return Principal{}, apperr.New(apperr.Unauthorized)
	}
	if now.After(p.ExpiresAt) {
		return Principal{}, apperr.Newf(apperr.Unauthorized, "the session has expired; sign in again", "会话已过期，请重新登录")
	}
	s.mu.Lock()
	if s.gen == gen {
		if len(s.cache) > 100_000 {
			s.cache = map[string]cached{}
		}
		s.cache[h] = cached{p: p, until: now.Add(s.CacheTTL)}
	}
	s.mu.Unlock()
	return p, nil
}

// RevokeToken revokes one token.
func (s *Service) RevokeToken(ctx context.Context, token string) error {
	h := tokenHash(token)
	if _, err := s.db.W.ExecContext(ctx, `UPDATE auth_tokens SET revoked = 1 WHERE hash = $1`, h); err != nil {
		return storeErr(err)
	}
	s.mu.Lock()
	s.gen++
	delete(s.cache, h)
	s.mu.Unlock()
	return nil
}

// RevokeSubject revokes every token of a subject (a lost card's resident
// sessions, a disabled terminal, a disabled staff user).
func (s *Service) RevokeSubject(ctx context.Context, kind Kind, subject string) error {
	if _, err := s.db.W.ExecContext(ctx, `UPDATE auth_tokens SET revoked = 1 WHERE kind = $1 AND subject = $2 AND revoked = 0`, string(kind), subject); err != nil {
		return storeErr(err)
	}
	s.mu.Lock()
	s.gen++
	for h, c := range s.cache {
		if c.p.Kind == kind && c.p.Subject == subject {
			delete(s.cache, h)
		}
	}
	s.mu.Unlock()
	return nil
}

// RevokeProviderStaff revokes every staff token of provider id: those
// issued to its staff (tokens carry the provider) and any other of a
// staff user whose provider it is. Call it after marking the provider
// disabled (LoginStaff relies on that order). Terminal tokens are not
// touched: disabling each terminal revokes its own.
func (s *Service) RevokeProviderStaff(ctx context.Context, providerID string) error {
	if providerID == "" {
		// provider_id '' is every staff user without a provider.
		return apperr.Invalid("provider_id", "name a provider", "须指定服务商")
	}
	rows, err := s.db.W.QueryContext(ctx, `UPDATE auth_tokens SET revoked = 1
		WHERE kind = $1 AND revoked = 0 AND (provider_id = $2 OR subject IN (SELECT id FROM staff_users WHERE provider_id = $2))
		RETURNING hash`, string(KindStaff), providerID)
	if err != nil {
		return storeErr(err)
	}
	defer rows.Close()
	var hashes []string
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			return storeErr(err)
		}
		hashes = append(hashes, h)
	}
	err = rows.Err()
	s.mu.Lock()
	s.gen++
	for _, h := range hashes {
		delete(s.cache, h)
	}
	for h, c := range s.cache {
		if c.p.Kind == KindStaff && c.p.ProviderID == providerID {
			delete(s.cache, h)
		}
	}
	s.mu.Unlock()
	return storeErr(err)
}

// RevokeSubjectExcept revokes every token of a subject but keep (a
// resident who changes the PIN ends the card's other sessions, which may
// be someone else's who learnt the old PIN, and keeps the one in use).
func (s *Service) RevokeSubjectExcept(ctx context.Context, kind Kind, subject, keep string) error {
	kh := tokenHash(keep)
	if _, err := s.db.W.ExecContext(ctx, `UPDATE auth_tokens SET revoked = 1 WHERE kind = $1 AND subject = $2 AND revoked = 0 AND hash <> $3`, string(kind), subject, kh); err != nil {
		return storeErr(err)
	}
	s.mu.Lock()
	s.gen++
	for h, c := range s.cache {
		if c.p.Kind == kind && c.p.Subject == subject && h != kh {
			delete(s.cache, h)
		}
	}
	s.mu.Unlock()
	return nil
}

// PurgeExpired deletes tokens that expired before the given time, and
// staff sign-in counts untouched and unlocked since then.
func (s *Service) PurgeExpired(ctx context.Context, before time.Time) error {
	if _, err := s.db.W.ExecContext(ctx, `DELETE FROM auth_tokens WHERE expires_at < $1`, before.UnixMilli()); err != nil {
		return storeErr(err)
	}
	_, err := s.db.W.ExecContext(ctx, `DELETE FROM staff_signin_throttle WHERE updated_at < $1 AND locked_until < $1`, before.UnixMilli())
	return storeErr(err)
}

func storeErr(err error) error {
	if err == nil {
		return nil
	}
	var ae *apperr.Error
	if errors.As(err, &ae) {
		return err
	}
	if store.IsRetryable(err) {
		return apperr.Wrap(apperr.Unavailable, err)
	}
	return apperr.Wrap(apperr.Internal, fmt.Errorf("auth store: %w", err))
}
