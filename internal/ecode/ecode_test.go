package ecode

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/emmansun/gmsm/sm2"
	"github.com/fxamacker/cbor/v2"
	cose "github.com/veraison/go-cose"

	"github.com/yikatong/yikatong/internal/apperr"
)

var t0 = time.Date(2024, 3, 1, 8, 0, 0, 0, time.UTC)

func testClaims() Claims {
	return Claims{Issuer: "CN-410100", Subject: "tok_3f9a2c", IssuedAt: t0, Category: CategoryLocal, Flags: []string{FlagSenior65, FlagStudent}}
}

func signers(t testing.TB) map[string]Signer {
	t.Helper()
	s1, err := GenerateSM2()
	if err != nil {
		t.Fatal(err)
	}
	s2, err := GenerateEd25519()
	if err != nil {
		t.Fatal(err)
	}
	return map[string]Signer{"SM2": s1, "Ed25519": s2}
}

func keySet(issuer string, ss ...Signer) KeyMap {
	m := KeyMap{}
	for _, s := range ss {
		m.Add(issuer, s.Public())
	}
	return m
}

func wantCode(t *testing.T, err error, code apperr.Code) {
	t.Helper()
	if got := apperr.CodeOf(err); got != code {
		t.Fatalf("want %s, got %v", code, err)
	}
}

func TestBase45RFCVectors(t *testing.T) {
	for in, want := range map[string]string{"AB": "BB8", "Hello!!": "%69 VD92EX0", "base-45": "UJCLQE7W581", "ietf!": "QED8WEX0", "": ""} {
		if got := EncodeBase45([]byte(in)); got != want {
			t.Errorf("encode %q = %q, want %q", in, got, want)
		}
		got, err := DecodeBase45(want)
		if err != nil || string(got) != in {
			t.Errorf("decode %q = %q, %v", want, got, err)
		}
	}
	for _, bad := range []string{"GGW", "A", "ABCD", "bb8", "BB8=", ":::", "GGW0"} {
		if _, err := DecodeBase45(bad); err == nil {
			t.Errorf("decode %q accepted", bad)
		}
	}
	// ":::" is 44+44*45+44*2025 > 65535; "Z:" is a final pair > 255.
	if _, err := DecodeBase45("Z:"); err == nil {
		t.Error("final pair > 255 accepted")
	}
	// every 2-byte value round-trips
	for n := 0; n <= 0xffff; n += 7 {
		b := []byte{byte(n >> 8), byte(n)}
		d, err := DecodeBase45(EncodeBase45(b))
		if err != nil || !bytes.Equal(d, b) {
			t.Fatalf("round trip %x: %x %v", b, d, err)
		}
	}
}

func TestRoundTripBothAlgs(t *testing.T) {
	for name, s := range signers(t) {
		t.Run(name, func(t *testing.T) {
			code, filled, err := IssueClaims(s, testClaims())
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(code, "YK1:") {
				t.Fatalf("code %q", code)
			}
			for _, r := range code[4:] {
				if !strings.ContainsRune(base45Alphabet, r) {
					t.Fatalf("character %q outside the QR alphanumeric set", r)
				}
			}
			if len(code) > 400 {
				t.Errorf("code is %d characters, want a compact QR", len(code))
			}
			c, h, err := Verify(code, keySet("CN-410100", s), t0.Add(30*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			if h.Alg != s.Alg() || !bytes.Equal(h.Kid, s.Kid()) {
				t.Fatalf("header %+v", h)
			}
			if c.Issuer != "CN-410100" || c.Subject != "tok_3f9a2c" || c.Category != CategoryLocal ||
				strings.Join(c.Flags, ",") != "senior_65,student" || !c.IssuedAt.Equal(t0) ||
				!c.ExpiresAt.Equal(t0.Add(60*time.Second)) || len(c.CTI) != 16 || !bytes.Equal(c.CTI, filled.CTI) {
				t.Fatalf("claims %+v", c)
			}
			// two codes for the same holder differ (fresh cti)
			code2, _ := Issue(s, testClaims())
			if code2 == code {
				t.Fatal("two codes are identical")
			}
		})
	}
}

func TestKidDerivation(t *testing.T) {
	for _, s := range signers(t) {
		pub := s.Public()
		if len(pub.Kid) != KidSize || !bytes.Equal(pub.Kid, ComputeKid(pub.Alg, pub.Bytes())) {
			t.Fatalf("kid %x", pub.Kid)
		}
		j := pub.JWK()
		back, err := PublicKeyFromJWK(j)
		if err != nil || !bytes.Equal(back.Bytes(), pub.Bytes()) || !bytes.Equal(back.Kid, pub.Kid) {
			t.Fatalf("jwk round trip: %v", err)
		}
		j.Kid = "AAAAAAAAAAA"
		if _, err := PublicKeyFromJWK(j); err == nil {
			t.Fatal("jwk with a foreign kid accepted")
		}
	}
}

func TestPrivateKeyPEMRoundTrip(t *testing.T) {
	for _, s := range signers(t) {
		p, err := MarshalPrivateKey(s)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParsePrivateKey(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(back.Kid(), s.Kid()) || back.Alg() != s.Alg() {
			t.Fatal("key changed in PEM round trip")
		}
		code, _ := Issue(back, testClaims())
		if _, _, err := Verify(code, keySet("CN-410100", s), t0); err != nil {
			t.Fatal(err)
		}
	}
}

func TestEveryErrorCode(t *testing.T) {
	ss := signers(t)
	sm, ed := ss["SM2"], ss["Ed25519"]
	ks := keySet("CN-410100", sm, ed)
	code, _ := Issue(sm, testClaims())
	other, _ := GenerateSM2()
	foreign, _ := Issue(other, testClaims())
	otherCity := testClaims()
	otherCity.Issuer = "CN-310000"
	fromElsewhere, _ := Issue(sm, otherCity)

	cases := []struct {
		name string
		code string
		at   time.Time
		want apperr.Code
	}{
		{"valid", code, t0, ""},
		{"valid at skew edge", code, t0.Add(-ClockSkew), ""},
		{"empty", "", t0, apperr.Malformed},
		{"no prefix", "hello world", t0, apperr.Malformed},
		{"other scheme", "HC1:6BFOXN%TS3DH0YOJ58S", t0, apperr.UnsupportedScheme},
		{"future version", "YK2:" + code[4:], t0, apperr.UnsupportedScheme},
		{"bad base45", "YK1:abc", t0, apperr.Malformed},
		{"not cbor", "YK1:" + EncodeBase45([]byte("hello")), t0, apperr.Malformed},
		{"truncated", code[:len(code)-3], t0, apperr.Malformed},
		{"too long", "YK1:" + strings.Repeat("0", MaxCodeLength), t0, apperr.Malformed},
		{"unknown issuer", fromElsewhere, t0, apperr.UnknownIssuer},
		{"unknown key", foreign, t0, apperr.UnknownKey},
		{"expired at exp", code, t0.Add(CodeLifetime), apperr.Expired},
		{"expired later", code, t0.Add(time.Hour), apperr.Expired},
		{"not yet valid", code, t0.Add(-ClockSkew - time.Second), apperr.NotYetValid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Verify(tc.code, ks, tc.at)
			wantCode(t, err, tc.want)
		})
	}
	t.Run("bad signature", func(t *testing.T) {
		d, _ := Decode(code)
		raw, _ := DecodeBase45(code[4:])
		i := bytes.Index(raw, d.Signature)
		raw[i+5] ^= 0x01
		_, _, err := Verify("YK1:"+EncodeBase45(raw), ks, t0)
		wantCode(t, err, apperr.BadSignature)
	})
	t.Run("substituted claims", func(t *testing.T) {
		// a validly encoded payload with another subject under the old signature
		raw, _ := DecodeBase45(code[4:])
		tampered := bytes.Replace(raw, []byte("tok_3f9a2c"), []byte("tok_000000"), 1)
		_, _, err := Verify("YK1:"+EncodeBase45(tampered), ks, t0)
		wantCode(t, err, apperr.BadSignature)
	})
	t.Run("algorithm swapped in header", func(t *testing.T) {
		// an Ed25519 key registered under the SM2 key's kid cannot make
		// an SM2 code verify
		m := KeyMap{}
		pk := ed.Public()
		pk.Kid = sm.Kid()
		m.Add("CN-410100", pk)
		_, _, err := Verify(code, m, t0)
		wantCode(t, err, apperr.BadSignature)
	})
	t.Run("nil keyset", func(t *testing.T) {
		_, _, err := Verify(code, nil, t0)
		wantCode(t, err, apperr.UnknownIssuer)
	})
}

func TestIssueValidates(t *testing.T) {
	s := signers(t)["SM2"]
	for name, mut := range map[string]func(*Claims){
		"no issuer":    func(c *Claims) { c.Issuer = "" },
		"no subject":   func(c *Claims) { c.Subject = "" },
		"bad category": func(c *Claims) { c.Category = "tourist" },
		"bad flag":     func(c *Claims) { c.Flags = []string{"Senior 65"} },
		"exp <= iat":   func(c *Claims) { c.ExpiresAt = c.IssuedAt },
	} {
		c := testClaims()
		mut(&c)
		if _, err := Issue(s, c); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Flipping any single bit of the binary message, or substituting any
// character of the text, never yields an accepted code: the result is
// malformed, bad_signature, or (for the kid/issuer bytes) unknown key/issuer.
func TestBitFlipsNeverAccepted(t *testing.T) {
	for name, s := range signers(t) {
		t.Run(name, func(t *testing.T) {
			ks := keySet("CN-410100", s)
			code, _ := Issue(s, testClaims())
			raw, _ := DecodeBase45(code[4:])
			allowed := map[apperr.Code]bool{apperr.Malformed: true, apperr.BadSignature: true, apperr.UnknownKey: true, apperr.UnknownIssuer: true}
			seen := map[apperr.Code]int{}
			for i := 0; i < len(raw)*8; i++ {
				b := bytes.Clone(raw)
				b[i/8] ^= 1 << (i % 8)
				_, _, err := Verify("YK1:"+EncodeBase45(b), ks, t0)
				c := apperr.CodeOf(err)
				if err == nil || !allowed[c] {
					// flipping the tag byte 0xd2 to 0xd3 etc. is malformed;
					// nothing may be accepted.
					t.Fatalf("bit %d: got %v", i, err)
				}
				seen[c]++
			}
			if seen[apperr.BadSignature] == 0 || seen[apperr.Malformed] == 0 {
				t.Fatalf("flips gave %v", seen)
			}
			for i := 4; i < len(code); i++ {
				for _, r := range []byte{'0', 'Z', ':', 'a'} {
					if code[i] == r {
						continue
					}
					mut := code[:i] + string(r) + code[i+1:]
					_, _, err := Verify(mut, ks, t0)
					if err == nil || !allowed[apperr.CodeOf(err)] {
						t.Fatalf("char %d -> %q: got %v", i, r, err)
					}
				}
			}
		})
	}
}

func TestUntaggedAccepted(t *testing.T) {
	s := signers(t)["Ed25519"]
	code, _ := Issue(s, testClaims())
	raw, _ := DecodeBase45(code[4:])
	if raw[0] != 0xd2 {
		t.Fatalf("first byte %x, want tag 18", raw[0])
	}
	if _, _, err := Verify("YK1:"+EncodeBase45(raw[1:]), keySet("CN-410100", s), t0); err != nil {
		t.Fatal(err)
	}
	// another tag is malformed
	raw[0] = 0xd1
	_, _, err := Verify("YK1:"+EncodeBase45(raw), keySet("CN-410100", s), t0)
	wantCode(t, err, apperr.Malformed)
}

func TestMissingClaimsMalformed(t *testing.T) {
	s := signers(t)["Ed25519"]
	ks := keySet("CN-410100", s)
	alg := int64(AlgEdDSA)
	prot, _ := encMode.Marshal(protectedHeader{Alg: &alg, Kid: s.Kid()})
	full := func() map[int64]any {
		return map[int64]any{1: "CN-410100", 2: "tok", 4: t0.Unix() + 60, 6: t0.Unix(), 7: []byte("0123456789abcdef"),
			ClaimHolder: map[int64]any{1: "local"}}
	}
	for _, drop := range []int64{1, 2, 4, 6, 7, ClaimHolder} {
		m := full()
		delete(m, drop)
		payload, _ := encMode.Marshal(m)
		sig, _ := s.Sign(sigStructure(prot, payload))
		msg, _ := encMode.Marshal(sign1{Protected: prot, Unprotected: cbor.RawMessage{0xa0}, Payload: payload, Signature: sig})
		_, _, err := Verify("YK1:"+EncodeBase45(msg), ks, t0)
		wantCode(t, err, apperr.Malformed)
	}
	// the complete set, signed the same way, verifies: the drops above are the cause
	payload, _ := encMode.Marshal(full())
	sig, _ := s.Sign(sigStructure(prot, payload))
	msg, _ := encMode.Marshal(sign1{Protected: prot, Unprotected: cbor.RawMessage{0xa0}, Payload: payload, Signature: sig})
	if _, _, err := Verify("YK1:"+EncodeBase45(msg), ks, t0); err != nil {
		t.Fatal(err)
	}
	// float times, duplicate keys and crit headers are malformed
	m := full()
	m[6] = float64(t0.Unix())
	payload, _ = encMode.Marshal(m)
	msg, _ = encMode.Marshal(sign1{Protected: prot, Unprotected: cbor.RawMessage{0xa0}, Payload: payload, Signature: sig})
	_, _, err := Verify("YK1:"+EncodeBase45(msg), ks, t0)
	wantCode(t, err, apperr.Malformed)
	dupProt := append([]byte{0xa3}, prot[1:]...)
	dupProt = append(dupProt, 0x01, 0x27) // second alg key
	msg, _ = encMode.Marshal(sign1{Protected: dupProt, Unprotected: cbor.RawMessage{0xa0}, Payload: payload, Signature: sig})
	_, _, err = Verify("YK1:"+EncodeBase45(msg), ks, t0)
	wantCode(t, err, apperr.Malformed)
}

// gmsmCOSEVerifier is an SM2 verifier for go-cose written only from gmsm's
// own API (r||s converted to ASN.1, SM3 with the default uid), independent of
// our verification path.
type gmsmCOSEVerifier struct{ pub *ecdsa.PublicKey }

func (v gmsmCOSEVerifier) Algorithm() cose.Algorithm { return cose.Algorithm(AlgSM2) }
func (v gmsmCOSEVerifier) Verify(content, sig []byte) error {
	if len(sig) != 64 {
		return cose.ErrVerification
	}
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !sm2.VerifyWithSM2(v.pub, nil, content, r, s) {
		return cose.ErrVerification
	}
	return nil
}

func TestIndependentCOSECheck(t *testing.T) {
	ss := signers(t)
	t.Run("SM2 with go-cose and gmsm", func(t *testing.T) {
		s := ss["SM2"]
		code, _ := Issue(s, testClaims())
		raw, _ := DecodeBase45(code[4:])
		var msg cose.Sign1Message
		if err := msg.UnmarshalCBOR(raw); err != nil {
			t.Fatal(err)
		}
		pb := s.Public().Bytes()
		pub := &ecdsa.PublicKey{Curve: sm2.P256(), X: new(big.Int).SetBytes(pb[1:33]), Y: new(big.Int).SetBytes(pb[33:])}
		if err := msg.Verify(nil, gmsmCOSEVerifier{pub}); err != nil {
			t.Fatalf("go-cose + gmsm rejects our SM2 code: %v", err)
		}
		kid, _ := msg.Headers.Protected[cose.HeaderLabelKeyID].([]byte)
		if !bytes.Equal(kid, s.Kid()) {
			t.Fatalf("kid %x", kid)
		}
		// and the independent verifier is not a rubber stamp
		msg.Payload[len(msg.Payload)-1] ^= 1
		if err := msg.Verify(nil, gmsmCOSEVerifier{pub}); err == nil {
			t.Fatal("tampered payload accepted by the independent verifier")
		}
	})
	t.Run("Ed25519 with go-cose stock verifier", func(t *testing.T) {
		s := ss["Ed25519"]
		code, _ := Issue(s, testClaims())
		raw, _ := DecodeBase45(code[4:])
		var msg cose.Sign1Message
		if err := msg.UnmarshalCBOR(raw); err != nil {
			t.Fatal(err)
		}
		v, err := cose.NewVerifier(cose.AlgorithmEdDSA, ed25519.PublicKey(s.Public().Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		if err := msg.Verify(nil, v); err != nil {
			t.Fatalf("go-cose rejects our Ed25519 code: %v", err)
		}
	})
	t.Run("go-cose signed code verifies with us", func(t *testing.T) {
		s := ss["Ed25519"]
		d, _ := Decode(mustIssue(t, s))
		payload, _ := encMode.Marshal(cwtClaims{Iss: d.Claims.Issuer, Sub: d.Claims.Subject, Exp: d.Claims.ExpiresAt.Unix(), Iat: d.Claims.IssuedAt.Unix(), Cti: d.Claims.CTI, Holder: &holderClaim{Category: "student_x"}})
		// sign with go-cose's stock Ed25519 signer
		priv := s.(*edSigner).priv
		gs, err := cose.NewSigner(cose.AlgorithmEdDSA, priv)
		if err != nil {
			t.Fatal(err)
		}
		hdr := cose.Headers{Protected: cose.ProtectedHeader{cose.HeaderLabelAlgorithm: cose.AlgorithmEdDSA, cose.HeaderLabelKeyID: s.Kid()}}
		raw, err := cose.Sign1(rand.Reader, gs, hdr, payload, nil)
		if err != nil {
			t.Fatal(err)
		}
		c, _, err := Verify("YK1:"+EncodeBase45(raw), keySet("CN-410100", s), t0)
		if err != nil {
			t.Fatal(err)
		}
		if c.Category != "student_x" {
			t.Fatalf("claims %+v", c)
		}
	})
}

func mustIssue(t *testing.T, s Signer) string {
	t.Helper()
	code, err := Issue(s, testClaims())
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func TestKeyMapErrors(t *testing.T) {
	m := KeyMap{}
	_, err := m.Key("CN-1", []byte("12345678"))
	if !errors.Is(err, apperr.New(apperr.UnknownIssuer)) {
		t.Fatal(err)
	}
	s := signers(t)["SM2"]
	m.Add("CN-1", s.Public())
	_, err = m.Key("CN-1", []byte("12345678"))
	wantCode(t, err, apperr.UnknownKey)
	if k, err := m.Key("CN-1", s.Kid()); err != nil || !k.Valid() {
		t.Fatal(err)
	}
}
