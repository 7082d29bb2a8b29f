package scan

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/store"
)

// Identity is what a verified code or card says about its holder.
type Identity struct {
	// Scheme is "YK1", "card" or "TC1".
	Scheme string
	// Issuer is the city (YK1, card) or the code issuer (TC1).
	Issuer string
	// Token is the card token (YK1 subject); CardNumber the physical card
	// number (card, or TC1 after its binding is resolved).
	Token      string
	CardNumber string
	// CTI is the code's one-use nonce, "" for a physical card. It is what
	// other cities see (federation message ids derive from it); the scans
	// table stores it under replayKey's time-ordered form.
	CTI string
	// IssuedAt is the code's issue time (YK1, TC1); zero for a card.
	IssuedAt time.Time
	// Category and Flags as the code claims them (YK1 only).
	Category string
	Flags    []string
}

// Verifier verifies the codes of one scheme. Errors are *apperr.Error
// (malformed, unknown_key, bad_signature, expired, …); they become the
// reason of a declined scan.
type Verifier interface {
	Verify(ctx context.Context, code string, at time.Time) (Identity, error)
}

// Registry maps a code's prefix ("YK1" in "YK1:…") to its verifier (多码融合:
// one terminal, any recognised code). A bare 16-digit Luhn number is a
// physical card. It is safe for concurrent use once built.
type Registry struct {
	mu sync.RWMutex
	m  map[string]Verifier
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{m: map[string]Verifier{}} }

// Register adds (or replaces) the verifier of scheme (without the colon).
func (r *Registry) Register(scheme string, v Verifier) {
	r.mu.Lock()
	r.m[scheme] = v
	r.mu.Unlock()
}

// Schemes lists the registered schemes.
func (r *Registry) Schemes() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := []string{}
	for k := range r.m {
		out = append(out, k)
	}
	return out
}

// Verify dispatches code on its prefix: unsupported_scheme for an unknown
// prefix, malformed for text without one.
func (r *Registry) Verify(ctx context.Context, code string, at time.Time) (Identity, error) {
	code = strings.TrimSpace(code)
	if n := resident.NormalizeCardNumber(code); len(n) == 16 && resident.ValidCardNumber(n) {
		return Identity{Scheme: SchemeCard, CardNumber: n}, nil
	}
	i := strings.IndexByte(code, ':')
	if i <= 0 || i > 8 {
		return Identity{}, apperr.Newf(apperr.Malformed, "the code has no scheme prefix", "码缺少码制前缀")
	}
	r.mu.RLock()
	v, ok := r.m[code[:i]]
	r.mu.RUnlock()
	if !ok {
		return Identity{}, apperr.Newf(apperr.UnsupportedScheme, "codes of scheme "+strconv.Quote(code[:min(i, 8)])+" are not accepted here", "不支持该码制")
	}
	return v.Verify(ctx, code, at)
}

// Scheme names.
const (
	SchemeYK1  = "YK1"
	SchemeCard = "card"
	SchemeTC1  = "TC1"
)

// ---- YK1 ----

// KeySource lists the issuer keys a YK1 verifier trusts (this city's, and
// peers' where federation adds them).
type KeySource func(ctx context.Context) (map[string][]ecode.PublicKey, error)

// YK1 verifies e-codes against keys from a KeySource, cached for a few
// seconds and refreshed at once (at most once a second) when a code names a
// key it does not know, so a rotation is picked up without a restart.
type YK1 struct {
	src KeySource

	mu      sync.Mutex
	keys    ecode.KeyMap
	fetched time.Time
}

// NewYK1 returns a YK1 verifier over src.
func NewYK1(src KeySource) *YK1 { return &YK1{src: src} }

func (y *YK1) keySet(ctx context.Context, force bool) (ecode.KeyMap, error) {
	y.mu.Lock()
	defer y.mu.Unlock()
	age := time.Since(y.fetched)
	if y.keys != nil && (age < 10*time.Second && !force || force && age < time.Second) {
		return y.keys, nil
	}
	m, err := y.src(ctx)
	if err != nil {
		if y.keys != nil {
			return y.keys, nil
		}
		return nil, apperr.Wrap(apperr.Unavailable, err)
	}
	km := ecode.KeyMap{}
	for iss, ks := range m {
		for _, k := range ks {
			km.Add(iss, k)
		}
	}
	y.keys, y.fetched = km, time.Now()
	return km, nil
}

// Verify implements Verifier.
func (y *YK1) Verify(ctx context.Context, code string, at time.Time) (Identity, error) {
	d, err := ecode.Decode(code)
	if err != nil {
		return Identity{}, err
	}
	ks, err := y.keySet(ctx, false)
	if err != nil {
		return Identity{}, err
	}
	err = d.Check(ks, at)
	if c := apperr.CodeOf(err); c == apperr.UnknownKey || c == apperr.UnknownIssuer {
		if ks2, err2 := y.keySet(ctx, true); err2 == nil {
			err = d.Check(ks2, at)
		}
	}
	if err != nil {
		return Identity{}, err
	}
	cl := d.Claims
	return Identity{Scheme: SchemeYK1, Issuer: cl.Issuer, Token: cl.Subject, CTI: SchemeYK1 + ":" + cl.Issuer + ":" + hex.EncodeToString(cl.CTI),
		IssuedAt: cl.IssuedAt, Category: cl.Category, Flags: cl.Flags}, nil
}

// ---- TC1: a city transit company's own code ----

// TC1 is a small second code scheme, as a city transit company would run
// it: the company signs its own riders' codes with its own key (SM2 or
// Ed25519), registered with the node; its transit account ids are bound to
// residents' cards in code_bindings, so a TC1 code resolves to the same
// resident account as the resident's own card or e-code.
//
// Format: "TC1:" ISSUER "." ACCOUNT "." IAT "." NONCE "." SIG, where IAT is
// Unix seconds (decimal), NONCE 16 hex digits, SIG base64url of the 64-byte
// signature over "TC1\x00" ISSUER "\x00" ACCOUNT "\x00" IAT "\x00" NONCE.
// A code is valid for TC1Lifetime after IAT (ClockSkew before it).
type TC1 struct {
	db *store.DB

	mu      sync.Mutex
	issuers map[string]ecode.PublicKey
	fetched time.Time
}

// TC1Lifetime is how long a TC1 code is valid.
const TC1Lifetime = 60 * time.Second

// NewTC1 returns the TC1 verifier over the node's database.
func NewTC1(db *store.DB) *TC1 { return &TC1{db: db} }

func tc1Message(issuer, account, iat, nonce string) []byte {
	return []byte("TC1\x00" + issuer + "\x00" + account + "\x00" + iat + "\x00" + nonce)
}

// IssueTC1 makes a TC1 code (the transit company's side; used by tests,
// the terminal simulator and the load generator).
func IssueTC1(s ecode.Signer, issuer, account string, at time.Time) (string, error) {
	var nb [8]byte
	rand.Read(nb[:])
	nonce := hex.EncodeToString(nb[:])
	iat := strconv.FormatInt(at.Unix(), 10)
	sig, err := s.Sign(tc1Message(issuer, account, iat, nonce))
	if err != nil {
		return "", apperr.Wrap(apperr.Internal, err)
	}
	return "TC1:" + issuer + "." + account + "." + iat + "." + nonce + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

func validPart(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// RegisterIssuer registers (or replaces) a TC1 issuer's public key.
func (t *TC1) RegisterIssuer(ctx context.Context, issuer string, k ecode.PublicKey) error {
	if !validPart(issuer, 32) {
		return apperr.Invalid("issuer", "the issuer id must be 1-32 letters, digits, - or _", "发码方标识须为1至32个字母、数字、-或_")
	}
	if !k.Valid() {
		return apperr.Invalid("public_key", "not a valid public key", "公钥无效")
	}
	var q string
	if t.db.Dialect == store.Postgres {
		q = `INSERT INTO code_issuers(scheme, issuer, alg, public_key, created_at) VALUES ('TC1',$1,$2,$3,$4)
			ON CONFLICT (scheme, issuer) DO UPDATE SET alg = EXCLUDED.alg, public_key = EXCLUDED.public_key`
	} else {
		q = `INSERT INTO code_issuers(scheme, issuer, alg, public_key, created_at) VALUES ('TC1',$1,$2,$3,$4)
			ON CONFLICT (scheme, issuer) DO UPDATE SET alg = excluded.alg, public_key = excluded.public_key`
	}
	if _, err := t.db.W.ExecContext(ctx, q, issuer, k.Alg.String(), k.Bytes(), time.Now().UnixMilli()); err != nil {
		return apperr.Wrap(apperr.Unavailable, err)
	}
	t.mu.Lock()
	t.issuers = nil
	t.mu.Unlock()
	return nil
}

// Bind binds a TC1 transit account of issuer to a card number.
func (t *TC1) Bind(ctx context.Context, issuer, account, cardNumber string) error {
	if !validPart(issuer, 32) || !validPart(account, 64) {
		return apperr.Invalid("account", "issuer and account must be letters, digits, - or _", "发码方与账户须为字母、数字、-或_")
	}
	n := resident.NormalizeCardNumber(cardNumber)
	if !resident.ValidCardNumber(n) {
		return apperr.Invalid("card_number", "not a valid card number", "卡号无效")
	}
	// A binding nothing can use is a mistake at the counter: the issuer
	// must be registered and the card must exist.
	if _, err := t.issuer(ctx, issuer); err != nil {
		return err
	}
	var one int
	switch err := t.db.R.QueryRowContext(ctx, `SELECT 1 FROM cards WHERE number = $1`, n).Scan(&one); {
	case errors.Is(err, sql.ErrNoRows):
		return apperr.Newf(apperr.NotFound, "no card with this number", "没有此卡号的卡")
	case err != nil:
		return apperr.Wrap(apperr.Unavailable, err)
	}
	_, err := t.db.W.ExecContext(ctx, `INSERT INTO code_bindings(scheme, issuer, account, card_number, created_at) VALUES ('TC1',$1,$2,$3,$4)`,
		issuer, account, n, time.Now().UnixMilli())
	if store.IsUniqueViolation(err) {
		return apperr.Newf(apperr.AlreadyExists, "this transit account is already bound", "该交通账户已绑定")
	}
	if err != nil {
		return apperr.Wrap(apperr.Unavailable, err)
	}
	return nil
}

func (t *TC1) issuer(ctx context.Context, id string) (ecode.PublicKey, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.issuers == nil || time.Since(t.fetched) > 5*time.Second {
		rows, err := t.db.R.QueryContext(ctx, `SELECT issuer, alg, public_key FROM code_issuers WHERE scheme = 'TC1'`)
		if err != nil {
			return ecode.PublicKey{}, apperr.Wrap(apperr.Unavailable, err)
		}
		m := map[string]ecode.PublicKey{}
		for rows.Next() {
			var iss, alg string
			var raw []byte
			if err := rows.Scan(&iss, &alg, &raw); err != nil {
				rows.Close()
				return ecode.PublicKey{}, apperr.Wrap(apperr.Unavailable, err)
			}
			a, err := ecode.ParseAlg(alg)
			if err != nil {
				continue
			}
			if k, err := ecode.ParsePublicKey(a, raw); err == nil {
				m[iss] = k
			}
		}
		rows.Close()
		t.issuers, t.fetched = m, time.Now()
	}
	k, ok := t.issuers[id]
	if !ok {
		return ecode.PublicKey{}, apperr.Newf(apperr.UnknownIssuer, "the TC1 issuer is not registered with this node", "该交通码发码方未在本节点登记")
	}
	return k, nil
}

// Verify implements Verifier.
func (t *TC1) Verify(ctx context.Context, code string, at time.Time) (Identity, error) {
	body, ok := strings.CutPrefix(code, "TC1:")
	if !ok || len(body) > 512 {
		return Identity{}, apperr.Newf(apperr.Malformed, "not a TC1 code", "不是有效的交通码")
	}
	parts := strings.Split(body, ".")
	if len(parts) != 5 || !validPart(parts[0], 32) || !validPart(parts[1], 64) || len(parts[3]) != 16 {
		return Identity{}, apperr.Newf(apperr.Malformed, "a TC1 code has five dot-separated parts", "交通码格式错误")
	}
	iat, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || iat <= 0 || strconv.FormatInt(iat, 10) != parts[2] {
		return Identity{}, apperr.Newf(apperr.Malformed, "the TC1 issue time is not valid", "交通码签发时间无效")
	}
	if _, err := hex.DecodeString(parts[3]); err != nil {
		return Identity{}, apperr.Newf(apperr.Malformed, "the TC1 nonce is not hex", "交通码随机数无效")
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[4])
	if err != nil || len(sig) != ecode.SignatureSize {
		return Identity{}, apperr.Newf(apperr.Malformed, "the TC1 signature is not valid base64url", "交通码签名编码错误")
	}
	k, err := t.issuer(ctx, parts[0])
	if err != nil {
		return Identity{}, err
	}
	if !k.Verify(tc1Message(parts[0], parts[1], parts[2], parts[3]), sig) {
		return Identity{}, apperr.New(apperr.BadSignature)
	}
	issued := time.Unix(iat, 0)
	if !at.Before(issued.Add(TC1Lifetime)) {
		return Identity{}, apperr.New(apperr.Expired)
	}
	if at.Before(issued.Add(-ecode.ClockSkew)) {
		return Identity{}, apperr.New(apperr.NotYetValid)
	}
	var card string
	err = t.db.QueryRow(ctx, `SELECT card_number FROM code_bindings WHERE scheme = 'TC1' AND issuer = $1 AND account = $2`, parts[0], parts[1]).Scan(&card)
	if err != nil {
		if store.IsRetryable(err) {
			return Identity{}, apperr.Wrap(apperr.Unavailable, err)
		}
		return Identity{}, apperr.Newf(apperr.UnknownHolder, "this transit account is not bound to a card of this city", "该交通账户未绑定本市卡")
	}
	var nb [8]byte
	hex.Decode(nb[:], []byte(parts[3]))
	return Identity{Scheme: SchemeTC1, Issuer: parts[0], CardNumber: card, IssuedAt: issued,
		CTI: "TC1:" + parts[0] + ":" + parts[2] + ":" + strconv.FormatUint(binary.BigEndian.Uint64(nb[:]), 16)}, nil
}
