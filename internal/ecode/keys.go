package ecode

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/emmansun/gmsm/ecdh"
	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/smx509"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// Alg is a COSE algorithm identifier (RFC 9053 registry values, or our
// private-use value for SM2).
type Alg int64

const (
	// AlgSM2 is SM2 signature with SM3 (GM/T 0003.2, GM/T 0004) and the
	// default user id "1234567812345678"; the signature is the 64-byte r||s.
	// SM2 has no IANA COSE algorithm value, so yikatong uses this value from
	// the private-use range (integers below -65536, RFC 9053 section 10.2 /
	// IANA "COSE Algorithms"). It never changes.
	AlgSM2 Alg = -70001
	// AlgEdDSA is the IANA COSE value for EdDSA; yikatong uses it with Ed25519.
	AlgEdDSA Alg = -8
)

// String returns the JWK/bundle name: "SM2" or "EdDSA".
func (a Alg) String() string {
	switch a {
	case AlgSM2:
		return "SM2"
	case AlgEdDSA:
		return "EdDSA"
	}
	return fmt.Sprintf("Alg(%d)", int64(a))
}

// Curve returns the JWK "crv" name: "SM2" or "Ed25519".
func (a Alg) Curve() string {
	switch a {
	case AlgSM2:
		return "SM2"
	case AlgEdDSA:
		return "Ed25519"
	}
	return ""
}

// ParseAlg accepts "SM2", "EdDSA" or "Ed25519" (any case).
func ParseAlg(s string) (Alg, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "sm2", "sm2-sm3":
		return AlgSM2, nil
	case "eddsa", "ed25519":
		return AlgEdDSA, nil
	}
	return 0, fmt.Errorf("unknown signature algorithm %q (want SM2 or Ed25519)", s)
}

// sm2UID is the GM/T 0009 default user id used in ZA.
var sm2UID = []byte("1234567812345678")

// KidSize is the length of a key id: the first 8 bytes of SM3 over the
// uncompressed SM2 point (0x04||X||Y), or of SHA-256 over the 32-byte Ed25519
// public key.
const KidSize = 8

// SignatureSize is the length of every signature: SM2 r||s or Ed25519.
const SignatureSize = 64

// PublicKey is a verification key. Build it with ParsePublicKey,
// PublicKeyFromJWK or Signer.Public; the zero value verifies nothing.
type PublicKey struct {
	Alg Alg
	Kid []byte
	// NotAfter, when set, is when the key was retired: it verifies only
	// codes issued until then (Check), and leaves trust bundles after it.
	NotAfter time.Time

	raw []byte // 65-byte 0x04||X||Y (SM2) or 32-byte key (Ed25519)
	ed  ed25519.PublicKey
	sm  *ecdsa.PublicKey
	za  []byte // SM2 ZA for the default uid, precomputed
}

// Bytes returns the raw public key: the uncompressed SM2 point (65 bytes) or
// the Ed25519 key (32 bytes).
func (k PublicKey) Bytes() []byte { return bytes.Clone(k.raw) }

// KidString returns the key id in base64url without padding.
func (k PublicKey) KidString() string { return base64.RawURLEncoding.EncodeToString(k.Kid) }

// Valid reports whether k holds a usable key.
func (k PublicKey) Valid() bool { return k.ed != nil || k.sm != nil }

// ComputeKid returns the key id of a raw public key of alg.
func ComputeKid(alg Alg, raw []byte) []byte {
	switch alg {
	case AlgSM2:
		h := sm3.Sum(raw)
		return bytes.Clone(h[:KidSize])
	default:
		h := sha256.Sum256(raw)
		return bytes.Clone(h[:KidSize])
	}
}

// ParsePublicKey builds a PublicKey from its raw bytes and computes its kid.
func ParsePublicKey(alg Alg, raw []byte) (PublicKey, error) {
	switch alg {
	case AlgSM2:
		if _, err := ecdh.P256().NewPublicKey(raw); err != nil || len(raw) != 65 {
			return PublicKey{}, errors.New("not an uncompressed SM2 point on the curve")
		}
		pub := &ecdsa.PublicKey{Curve: sm2.P256(), X: new(big.Int).SetBytes(raw[1:33]), Y: new(big.Int).SetBytes(raw[33:])}
		za, err := sm2.CalculateZA(pub, sm2UID)
		if err != nil {
			return PublicKey{}, err
		}
		r := bytes.Clone(raw)
		return PublicKey{Alg: alg, Kid: ComputeKid(alg, r), raw: r, sm: pub, za: za}, nil
	case AlgEdDSA:
		if len(raw) != ed25519.PublicKeySize {
			return PublicKey{}, errors.New("an Ed25519 public key has 32 bytes")
		}
		r := bytes.Clone(raw)
		return PublicKey{Alg: alg, Kid: ComputeKid(alg, r), raw: r, ed: ed25519.PublicKey(r)}, nil
	}
	return PublicKey{}, fmt.Errorf("unsupported algorithm %v", alg)
}

// verify checks sig over msg. SM2 uses the precomputed ZA: e = SM3(ZA || msg).
func (k PublicKey) verify(msg, sig []byte) bool {
	if len(sig) != SignatureSize {
		return false
	}
	switch {
	case k.Alg == AlgEdDSA && k.ed != nil:
		return ed25519.Verify(k.ed, msg, sig)
	case k.Alg == AlgSM2 && k.sm != nil:
		h := sm3.New()
		h.Write(k.za)
		h.Write(msg)
		var digest [sm3.Size]byte
		h.Sum(digest[:0])
		der, ok := rsToDER(sig)
		if !ok {
			return false
		}
		return sm2.VerifyASN1(k.sm, digest[:], der)
	}
	return false
}

// Verify checks a raw signature (64 bytes) over msg with k: SM2/SM3 with
// the default user id, or Ed25519. It is the bare primitive under codes and
// trust bundles.
func (k PublicKey) Verify(msg, sig []byte) bool { return k.verify(msg, sig) }

// rsToDER turns r||s into the ASN.1 SEQUENCE gmsm verifies.
func rsToDER(sig []byte) ([]byte, bool) {
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1BigInt(new(big.Int).SetBytes(sig[:32]))
		b.AddASN1BigInt(new(big.Int).SetBytes(sig[32:]))
	})
	der, err := b.Bytes()
	return der, err == nil
}

// derToRS turns gmsm's ASN.1 signature into the fixed 64-byte r||s.
func derToRS(der []byte) ([]byte, error) {
	var inner cryptobyte.String
	in := cryptobyte.String(der)
	var r, s big.Int
	if !in.ReadASN1(&inner, asn1.SEQUENCE) || !in.Empty() ||
		!inner.ReadASN1Integer(&r) || !inner.ReadASN1Integer(&s) || !inner.Empty() {
		return nil, errors.New("sm2: unexpected signature encoding")
	}
	if r.Sign() <= 0 || s.Sign() <= 0 || r.BitLen() > 256 || s.BitLen() > 256 {
		return nil, errors.New("sm2: signature out of range")
	}
	out := make([]byte, SignatureSize)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

// JWK is a public key in JWK style (RFC 7517 member names), as carried in
// trust bundles: SM2 points as 32-byte x and y, Ed25519 as the 32-byte x,
// all base64url without padding.
type JWK struct {
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y,omitempty"`
}

// JWK returns k in JWK form.
func (k PublicKey) JWK() JWK {
	j := JWK{Kid: k.KidString(), Alg: k.Alg.String(), Crv: k.Alg.Curve()}
	enc := base64.RawURLEncoding
	switch k.Alg {
	case AlgSM2:
		if len(k.raw) == 65 {
			j.X, j.Y = enc.EncodeToString(k.raw[1:33]), enc.EncodeToString(k.raw[33:])
		}
	case AlgEdDSA:
		j.X = enc.EncodeToString(k.raw)
	}
	return j
}

// PublicKeyFromJWK parses a JWK and checks that its kid is the one computed
// from the key (a bundle cannot attach a key to someone else's kid).
func PublicKeyFromJWK(j JWK) (PublicKey, error) {
	enc := base64.RawURLEncoding
	x, err := enc.DecodeString(j.X)
	if err != nil {
		return PublicKey{}, errors.New("jwk: x is not base64url")
	}
	var k PublicKey
	switch {
	case j.Alg == "SM2" && j.Crv == "SM2":
		y, err := enc.DecodeString(j.Y)
		if err != nil || len(x) != 32 || len(y) != 32 {
			return PublicKey{}, errors.New("jwk: SM2 x and y must be 32 bytes of base64url")
		}
		raw := append(append([]byte{4}, x...), y...)
		if k, err = ParsePublicKey(AlgSM2, raw); err != nil {
			return PublicKey{}, fmt.Errorf("jwk: %w", err)
		}
	case j.Alg == "EdDSA" && j.Crv == "Ed25519":
		if j.Y != "" {
			return PublicKey{}, errors.New("jwk: Ed25519 has no y")
		}
		if k, err = ParsePublicKey(AlgEdDSA, x); err != nil {
			return PublicKey{}, fmt.Errorf("jwk: %w", err)
		}
	default:
		return PublicKey{}, fmt.Errorf("jwk: unsupported alg/crv %q/%q", j.Alg, j.Crv)
	}
	if j.Kid != "" && j.Kid != k.KidString() {
		return PublicKey{}, errors.New("jwk: kid does not match the key")
	}
	return k, nil
}

// Signer signs codes (and trust bundles) with one private key.
type Signer interface {
	Alg() Alg
	Kid() []byte
	// Sign returns the 64-byte signature of msg (SM2 r||s or Ed25519).
	Sign(msg []byte) ([]byte, error)
	Public() PublicKey
}

type sm2Signer struct {
	priv *sm2.PrivateKey
	pub  PublicKey
	opts *sm2.SM2SignerOption
}

func (s *sm2Signer) Alg() Alg          { return AlgSM2 }
func (s *sm2Signer) Kid() []byte       { return bytes.Clone(s.pub.Kid) }
func (s *sm2Signer) Public() PublicKey { return s.pub }
func (s *sm2Signer) Sign(msg []byte) ([]byte, error) {
	der, err := sm2.SignASN1(rand.Reader, s.priv, msg, s.opts)
	if err != nil {
		return nil, err
	}
	return derToRS(der)
}

// Decrypter is implemented by SM2 signers: Decrypt reads what
// PublicKey.EncryptTo encrypted to the signer's public key.
type Decrypter interface {
	Decrypt(ciphertext []byte) ([]byte, error)
}

// Decrypt implements Decrypter (SM2 public-key encryption, GB/T 32918.4).
func (s *sm2Signer) Decrypt(ciphertext []byte) ([]byte, error) {
	return sm2.Decrypt(s.priv, ciphertext)
}

// EncryptTo encrypts msg to k (SM2 public-key encryption, GB/T 32918.4,
// C1C3C2): only the holder of k's private key can read it. Only SM2 keys
// encrypt.
func (k PublicKey) EncryptTo(msg []byte) ([]byte, error) {
	if k.sm == nil {
		return nil, errors.New("ecode: only an SM2 key can encrypt")
	}
	return sm2.Encrypt(rand.Reader, k.sm, msg, nil)
}

type edSigner struct {
	priv ed25519.PrivateKey
	pub  PublicKey
}

func (s *edSigner) Alg() Alg          { return AlgEdDSA }
func (s *edSigner) Kid() []byte       { return bytes.Clone(s.pub.Kid) }
func (s *edSigner) Public() PublicKey { return s.pub }
func (s *edSigner) Sign(msg []byte) ([]byte, error) {
	return ed25519.Sign(s.priv, msg), nil
}

// NewSM2Signer wraps an SM2 private key.
func NewSM2Signer(priv *sm2.PrivateKey) (Signer, error) {
	if priv == nil || priv.X == nil || priv.Y == nil {
		return nil, errors.New("nil SM2 key")
	}
	raw := make([]byte, 65)
	raw[0] = 4
	priv.X.FillBytes(raw[1:33])
	priv.Y.FillBytes(raw[33:])
	pub, err := ParsePublicKey(AlgSM2, raw)
	if err != nil {
		return nil, err
	}
	return &sm2Signer{priv: priv, pub: pub, opts: sm2.NewSM2SignerOption(true, sm2UID)}, nil
}

// NewEd25519Signer wraps an Ed25519 private key.
func NewEd25519Signer(priv ed25519.PrivateKey) (Signer, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, errors.New("an Ed25519 private key has 64 bytes")
	}
	pub, err := ParsePublicKey(AlgEdDSA, priv.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	return &edSigner{priv: priv, pub: pub}, nil
}

// GenerateSM2 makes a new SM2 signer.
func GenerateSM2() (Signer, error) {
	priv, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return NewSM2Signer(priv)
}

// GenerateEd25519 makes a new Ed25519 signer.
func GenerateEd25519() (Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return NewEd25519Signer(priv)
}

// Generate makes a new signer of alg.
func Generate(alg Alg) (Signer, error) {
	switch alg {
	case AlgSM2:
		return GenerateSM2()
	case AlgEdDSA:
		return GenerateEd25519()
	}
	return nil, fmt.Errorf("unsupported algorithm %v", alg)
}

// MarshalPrivateKey returns the signer's private key as a PEM "PRIVATE KEY"
// block holding PKCS #8 (SM2 keys carry the SM2 curve OID 1.2.156.10197.1.301,
// readable by gmsm and GmSSL; Ed25519 keys are standard RFC 8410).
func MarshalPrivateKey(s Signer) ([]byte, error) {
	var key any
	switch t := s.(type) {
	case *sm2Signer:
		key = t.priv
	case *edSigner:
		key = t.priv
	default:
		return nil, errors.New("cannot export this signer's key")
	}
	der, err := smx509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey reads a key written by MarshalPrivateKey.
func ParsePrivateKey(pemBytes []byte) (Signer, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM PRIVATE KEY block")
	}
	key, err := smx509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	switch k := key.(type) {
	case *sm2.PrivateKey:
		return NewSM2Signer(k)
	case ed25519.PrivateKey:
		return NewEd25519Signer(k)
	}
	return nil, fmt.Errorf("unsupported private key type %T", key)
}
