// Package ecode is the yikatong e-code: the one-minute QR credential a
// resident shows at any terminal, verifiable offline.
//
// # Format
//
// A code is the text
//
//	YK1:<Base45( COSE_Sign1( CWT ) )>
//
// where:
//
//   - "YK1:" names the scheme and version. Any other "XXX:" prefix is
//     unsupported_scheme; anything else is malformed.
//   - Base45 is RFC 9285 (the QR code's alphanumeric set), decoded strictly.
//   - COSE_Sign1 is RFC 9052: we emit it with CBOR tag 18 and accept it
//     untagged. The protected header is the map {1 (alg): Alg, 4 (kid):
//     8-byte kid}; the unprotected header is the empty map (any map is
//     accepted and ignored); the payload is attached; the signature is 64
//     bytes. The signed bytes are the standard Sig_structure
//     ["Signature1", protected, empty bstr, payload], so any COSE library plus a
//     conforming SM2 or Ed25519 implementation can check a code.
//   - The payload is a CWT claims set (RFC 8392), deterministically encoded:
//     1 iss (city node id, e.g. "CN-410100"), 2 sub (opaque card token, never
//     an ID number), 4 exp, 6 iat (integer seconds, exp = iat + 60 s), 7 cti
//     (16 random bytes, the one-use nonce), and one private claim, key
//     ClaimHolder = -70002 (private-use range, below -65536), whose value is
//     the map {1: category, 2: [flags…]}: the holder category ("local",
//     "insured_nonlocal", "permanent_resident") and concession flags
//     ("senior_65", "student", …). Nothing else personal is in a code.
//
// # Algorithms
//
// AlgSM2 (-70001, private use; no IANA value exists) is SM2 with SM3
// (GM/T 0003.2 / GM/T 0004) and the default user id "1234567812345678";
// as COSE does for ECDSA, the signature is the fixed 64-byte r||s, not DER.
// AlgEdDSA (-8) is Ed25519. Key ids are the first 8 bytes of SM3 over the
// uncompressed SM2 point 0x04||X||Y, or of SHA-256 over the 32-byte Ed25519
// key.
//
// # Verification
//
// Verify decodes (malformed), finds the key by (iss, kid) in a KeySet
// (unknown_issuer, unknown_key), checks the signature (bad_signature) and
// then the time: expired when at >= exp; not_yet_valid when at < iat - 5 s
// (ClockSkew: a terminal's clock may lag the node's by a few seconds).
// Revocation (revoked) and bundle expiry (trust_expired) are checked by
// internal/trust on top. No input makes it panic; FuzzDecode and FuzzVerify
// keep it so.
//
// The hot path is lean: one Base45 pass, preset CBOR decoding modes, the
// Sig_structure built by hand in one allocation, and the SM2 ZA value
// precomputed per key, so decode + verify costs little more than the bare
// signature check (see docs/benchmarks.md).
package ecode

import (
	"crypto/rand"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Scheme is the prefix of every code, without the colon.
const Scheme = "YK1"

const prefix = Scheme + ":"

// ClaimHolder is the private CWT claim key holding category and flags.
const ClaimHolder = -70002

// CodeLifetime is how long a code is valid after issue.
const CodeLifetime = 60 * time.Second

// MaxCodeLifetime bounds exp − iat of a code any verifier accepts: issuers
// give CodeLifetime; a code valid for longer was not made by one (it
// would take a stolen key, and would outlive the key's retirement).
const MaxCodeLifetime = 10 * time.Minute

// ClockSkew is how far a code's iat may lie in the verifier's future before
// it is not_yet_valid.
const ClockSkew = 5 * time.Second

// MaxCodeLength bounds the input accepted by Decode (a YK1 code is ~300
// characters).
const MaxCodeLength = 2048

// Holder categories.
const (
	CategoryLocal             = "local"
	CategoryInsuredNonlocal   = "insured_nonlocal"
	CategoryPermanentResident = "permanent_resident"
)

// Concession flags in use (others may be added; see validToken).
const (
	FlagSenior65 = "senior_65"
	FlagSenior60 = "senior_60"
	// FlagSenior70 (with FlagSenior65) marks 70 and over, FlagChild6 six
	// and under: the other age limits of the seeded concessions (scenic
	// spots), so another city prices them without the birth date.
	FlagSenior70 = "senior_70"
	FlagChild6   = "child_6"
	FlagStudent  = "student"
	FlagDisabled = "disabled"
)

// Claims is what a code says.
type Claims struct {
	Issuer    string
	Subject   string
	IssuedAt  time.Time
	ExpiresAt time.Time
	CTI       []byte
	Category  string
	Flags     []string
}

// Header is the protected header of a code.
type Header struct {
	Alg Alg
	Kid []byte
}

// KeySet finds the key for an issuer and kid. It returns an *apperr.Error
// with code unknown_issuer or unknown_key when it has none.
type KeySet interface {
	Key(issuer string, kid []byte) (PublicKey, error)
}

// KeyMap is a simple KeySet: issuer → string(kid) → key.
type KeyMap map[string]map[string]PublicKey

// Add adds k under issuer.
func (m KeyMap) Add(issuer string, k PublicKey) {
	if m[issuer] == nil {
		m[issuer] = map[string]PublicKey{}
	}
	m[issuer][string(k.Kid)] = k
}

// Key implements KeySet.
func (m KeyMap) Key(issuer string, kid []byte) (PublicKey, error) {
	keys, ok := m[issuer]
	if !ok {
		return PublicKey{}, apperr.New(apperr.UnknownIssuer)
	}
	k, ok := keys[string(kid)]
	if !ok {
		return PublicKey{}, apperr.New(apperr.UnknownKey)
	}
	return k, nil
}

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden,
		MaxNestedLevels:  8,
		MaxArrayElements: 64,
		MaxMapPairs:      64,
		UTF8:             cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

type sign1 struct {
	_           struct{} `cbor:",toarray"`
	Protected   []byte
	Unprotected cbor.RawMessage
	Payload     []byte
	Signature   []byte
}

type protectedHeader struct {
	Alg  *int64          `cbor:"1,keyasint,omitempty"`
	Crit cbor.RawMessage `cbor:"2,keyasint,omitempty"`
	Kid  []byte          `cbor:"4,keyasint,omitempty"`
}

type holderClaim struct {
	Category string   `cbor:"1,keyasint"`
	Flags    []string `cbor:"2,keyasint,omitempty"`
}

type cwtClaims struct {
	Iss    string       `cbor:"1,keyasint,omitempty"`
	Sub    string       `cbor:"2,keyasint,omitempty"`
	Exp    int64        `cbor:"4,keyasint,omitempty"`
	Iat    int64        `cbor:"6,keyasint,omitempty"`
	Cti    []byte       `cbor:"7,keyasint,omitempty"`
	Holder *holderClaim `cbor:"-70002,keyasint,omitempty"`
}

func malformed(en, zh string) error { return apperr.Newf(apperr.Malformed, en, zh) }

// validToken: lower-case letters, digits and '_', 1-32 long (categories, flags).
func validToken(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// ValidCategory reports whether c is one of the three holder categories.
func ValidCategory(c string) bool {
	return c == CategoryLocal || c == CategoryInsuredNonlocal || c == CategoryPermanentResident
}

// Issue signs c as a code. Empty fields are filled: IssuedAt (now), ExpiresAt
// (IssuedAt + 60 s), CTI (16 random bytes). Times are whole seconds.
func Issue(s Signer, c Claims) (string, error) {
	code, _, err := IssueClaims(s, c)
	return code, err
}

// IssueClaims is Issue that also returns the claims as filled and encoded.
func IssueClaims(s Signer, c Claims) (string, Claims, error) {
	if s == nil {
		return "", Claims{}, apperr.Newf(apperr.Internal, "no signing key", "无签名密钥")
	}
	if c.IssuedAt.IsZero() {
		c.IssuedAt = time.Now()
	}
	c.IssuedAt = c.IssuedAt.Truncate(time.Second).UTC()
	if c.ExpiresAt.IsZero() {
		c.ExpiresAt = c.IssuedAt.Add(CodeLifetime)
	}
	c.ExpiresAt = c.ExpiresAt.Truncate(time.Second).UTC()
	if len(c.CTI) == 0 {
		c.CTI = make([]byte, 16)
		if _, err := rand.Read(c.CTI); err != nil {
			return "", Claims{}, apperr.Wrap(apperr.Internal, err)
		}
	}
	switch {
	case c.Issuer == "" || len(c.Issuer) > 64:
		return "", Claims{}, apperr.Invalid("issuer", "the issuer must be 1-64 characters", "发码方标识须为1至64个字符")
	case c.Subject == "" || len(c.Subject) > 128:
		return "", Claims{}, apperr.Invalid("subject", "the subject must be 1-128 characters", "主体标识须为1至128个字符")
	case !ValidCategory(c.Category):
		return "", Claims{}, apperr.Invalid("category", "unknown holder category", "未知的持卡人类别")
	case !c.ExpiresAt.After(c.IssuedAt):
		return "", Claims{}, apperr.Invalid("expires_at", "the code must expire after it is issued", "过期时间须晚于签发时间")
	case len(c.CTI) > 64:
		return "", Claims{}, apperr.Invalid("cti", "the nonce is too long", "随机数过长")
	case len(c.Flags) > 16:
		return "", Claims{}, apperr.Invalid("flags", "too many concession flags", "优待标记过多")
	}
	for _, f := range c.Flags {
		if !validToken(f) {
			return "", Claims{}, apperr.Invalid("flags", "a concession flag is not a lower-case token", "优待标记格式错误")
		}
	}
	payload, err := encMode.Marshal(cwtClaims{
		Iss: c.Issuer, Sub: c.Subject, Exp: c.ExpiresAt.Unix(), Iat: c.IssuedAt.Unix(), Cti: c.CTI,
		Holder: &holderClaim{Category: c.Category, Flags: c.Flags},
	})
	if err != nil {
		return "", Claims{}, apperr.Wrap(apperr.Internal, err)
	}
	alg := int64(s.Alg())
	protected, err := encMode.Marshal(protectedHeader{Alg: &alg, Kid: s.Kid()})
	if err != nil {
		return "", Claims{}, apperr.Wrap(apperr.Internal, err)
	}
	sig, err := s.Sign(sigStructure(protected, payload))
	if err != nil {
		return "", Claims{}, apperr.Wrap(apperr.Internal, err)
	}
	msg, err := encMode.Marshal(cbor.Tag{Number: 18, Content: sign1{
		Protected: protected, Unprotected: cbor.RawMessage{0xa0}, Payload: payload, Signature: sig,
	}})
	if err != nil {
		return "", Claims{}, apperr.Wrap(apperr.Internal, err)
	}
	return prefix + EncodeBase45(msg), c, nil
}

// appendHead appends a CBOR head of major type major and argument n.
func appendHead(b []byte, major byte, n int) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(b, m|byte(n))
	case n <= 0xff:
		return append(b, m|24, byte(n))
	case n <= 0xffff:
		return append(b, m|25, byte(n>>8), byte(n))
	default:
		return append(b, m|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
}

// sigStructure returns the RFC 9052 Sig_structure for COSE_Sign1 with an
// empty external_aad: ["Signature1", protected, h”, payload].
func sigStructure(protected, payload []byte) []byte {
	b := make([]byte, 0, 1+11+5+len(protected)+1+5+len(payload))
	b = append(b, 0x84, 0x6a)
	b = append(b, "Signature1"...)
	b = appendHead(b, 2, len(protected))
	b = append(b, protected...)
	b = append(b, 0x40)
	b = appendHead(b, 2, len(payload))
	return append(b, payload...)
}

// Decoded is a code parsed but not verified.
type Decoded struct {
	Header Header
	Claims Claims
	// ToBeSigned is the Sig_structure the signature must cover.
	ToBeSigned []byte
	Signature  []byte
}

// Decode parses a code without checking its signature or time. Errors are
// malformed or unsupported_scheme.
func Decode(code string) (*Decoded, error) {
	if !strings.HasPrefix(code, prefix) {
		if i := strings.IndexByte(code, ':'); i > 0 && i <= 8 && isSchemeName(code[:i]) {
			return nil, apperr.Newf(apperr.UnsupportedScheme, "only YK1 codes are supported", "仅支持YK1码制")
		}
		return nil, malformed("the code does not start with YK1:", "码不以YK1:开头")
	}
	if len(code) > MaxCodeLength {
		return nil, malformed("the code is too long", "码过长")
	}
	raw, err := DecodeBase45(code[len(prefix):])
	if err != nil {
		return nil, malformed("the code is not valid Base45", "码不是有效的Base45编码")
	}
	if len(raw) > 0 && raw[0] == 0xd2 { // tag 18, COSE_Sign1
		raw = raw[1:]
	}
	var m sign1
	if err := decMode.Unmarshal(raw, &m); err != nil {
		return nil, malformed("the code is not a COSE_Sign1 message", "码不是COSE_Sign1结构")
	}
	if len(m.Unprotected) == 0 || m.Unprotected[0]>>5 != 5 {
		return nil, malformed("the unprotected header is not a map", "非保护头不是映射")
	}
	if len(m.Protected) == 0 || m.Payload == nil || len(m.Signature) != SignatureSize {
		return nil, malformed("the code lacks its header, payload or signature", "码缺少头部、载荷或签名")
	}
	var ph protectedHeader
	if err := decMode.Unmarshal(m.Protected, &ph); err != nil {
		return nil, malformed("the protected header is not valid", "保护头无效")
	}
	if ph.Alg == nil || len(ph.Kid) != KidSize || ph.Crit != nil {
		return nil, malformed("the protected header needs alg and an 8-byte kid", "保护头须含算法和8字节密钥标识")
	}
	var cl cwtClaims
	if err := decMode.Unmarshal(m.Payload, &cl); err != nil {
		return nil, malformed("the claims are not valid", "声明无效")
	}
	switch {
	case cl.Iss == "" || len(cl.Iss) > 64, cl.Sub == "" || len(cl.Sub) > 128,
		cl.Iat <= 0, cl.Exp <= cl.Iat, len(cl.Cti) == 0 || len(cl.Cti) > 64,
		cl.Holder == nil, !validToken(cl.Holder.Category), len(cl.Holder.Flags) > 16:
		return nil, malformed("the code lacks required claims", "码缺少必需的声明")
	}
	for _, f := range cl.Holder.Flags {
		if !validToken(f) {
			return nil, malformed("a concession flag is not valid", "优待标记无效")
		}
	}
	return &Decoded{
		Header: Header{Alg: Alg(*ph.Alg), Kid: ph.Kid},
		Claims: Claims{
			Issuer: cl.Iss, Subject: cl.Sub,
			IssuedAt: time.Unix(cl.Iat, 0).UTC(), ExpiresAt: time.Unix(cl.Exp, 0).UTC(),
			CTI: cl.Cti, Category: cl.Holder.Category, Flags: cl.Holder.Flags,
		},
		ToBeSigned: sigStructure(m.Protected, m.Payload),
		Signature:  m.Signature,
	}, nil
}

func isSchemeName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// Verify checks a code against ks as of at and returns its claims and
// header. Errors (all *apperr.Error): malformed, unsupported_scheme,
// unknown_issuer, unknown_key, bad_signature, expired, not_yet_valid.
// On error the returned values are zero.
func Verify(code string, ks KeySet, at time.Time) (Claims, Header, error) {
	d, err := Decode(code)
	if err != nil {
		return Claims{}, Header{}, err
	}
	if err := d.Check(ks, at); err != nil {
		return Claims{}, Header{}, err
	}
	return d.Claims, d.Header, nil
}

// Check verifies a decoded code's key, signature and time window.
func (d *Decoded) Check(ks KeySet, at time.Time) error {
	if ks == nil {
		return apperr.New(apperr.UnknownIssuer)
	}
	key, err := ks.Key(d.Claims.Issuer, d.Header.Kid)
	if err != nil {
		if c := apperr.CodeOf(err); c == apperr.UnknownIssuer || c == apperr.UnknownKey {
			return err
		}
		return apperr.Wrap(apperr.UnknownKey, err)
	}
	if key.Alg != d.Header.Alg {
		// The kid names a key of another algorithm: the header was altered
		// or the code forged; either way the signature cannot be valid.
		return apperr.Newf(apperr.BadSignature, "the code's algorithm does not match its key", "码的算法与密钥不符")
	}
	if !key.verify(d.ToBeSigned, d.Signature) {
		return apperr.New(apperr.BadSignature)
	}
	if d.Claims.ExpiresAt.Sub(d.Claims.IssuedAt) > MaxCodeLifetime {
		return malformed("the code is valid for longer than any issuer gives", "码的有效期超出发码规则")
	}
	if !key.NotAfter.IsZero() && d.Claims.IssuedAt.After(key.NotAfter) {
		// A retired key verifies only the codes it signed before it was
		// retired (a key retired because it leaked must not mint new ones).
		return apperr.Newf(apperr.UnknownKey, "the code was issued after its key was retired", "该码签发于其密钥停用之后")
	}
	if !at.Before(d.Claims.ExpiresAt) {
		return apperr.New(apperr.Expired)
	}
	if at.Before(d.Claims.IssuedAt.Add(-ClockSkew)) {
		return apperr.New(apperr.NotYetValid)
	}
	return nil
}
