package ecode

import (
	"bytes"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// What EncryptTo encrypts to an SM2 key only its signer reads; an Ed25519
// key refuses to encrypt.
func TestEncryptToSM2(t *testing.T) {
	a, _ := GenerateSM2()
	b, _ := GenerateSM2()
	ct, err := a.Public().EncryptTo([]byte("246810"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(ct, []byte("246810")) {
		t.Fatal("the plaintext is in the ciphertext")
	}
	pt, err := a.(Decrypter).Decrypt(ct)
	if err != nil || string(pt) != "246810" {
		t.Fatalf("decrypt: %q %v", pt, err)
	}
	if _, err := b.(Decrypter).Decrypt(ct); err == nil {
		t.Fatal("another key decrypted it")
	}
	ct[len(ct)-1] ^= 1
	if _, err := a.(Decrypter).Decrypt(ct); err == nil {
		t.Fatal("a changed ciphertext decrypted")
	}
	ed, _ := GenerateEd25519()
	if _, err := ed.Public().EncryptTo([]byte("x")); err == nil {
		t.Fatal("an Ed25519 key encrypted")
	}
}

// A retired key (NotAfter set) verifies the codes it signed until then,
// and no code claiming to be issued after.
func TestRetiredKeyVerifiesOnlyItsOldCodes(t *testing.T) {
	s, _ := GenerateSM2()
	t0 := time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC)
	before, err := Issue(s, Claims{Issuer: "CN-410100", Subject: "tok", IssuedAt: t0, Category: CategoryLocal})
	if err != nil {
		t.Fatal(err)
	}
	after, err := Issue(s, Claims{Issuer: "CN-410100", Subject: "tok", IssuedAt: t0.Add(2 * time.Minute), Category: CategoryLocal})
	if err != nil {
		t.Fatal(err)
	}
	k := s.Public()
	k.NotAfter = t0.Add(time.Minute)
	km := KeyMap{}
	km.Add("CN-410100", k)
	if _, _, err := Verify(before, km, t0.Add(30*time.Second)); err != nil {
		t.Fatalf("a code signed before the retirement: %v", err)
	}
	if _, _, err := Verify(after, km, t0.Add(2*time.Minute+time.Second)); apperr.CodeOf(err) != apperr.UnknownKey {
		t.Fatalf("a code issued after the retirement: %v", err)
	}
}

// A code valid for longer than any issuer gives is refused, even with a
// good signature (only a stolen key makes one).
func TestLongLivedCodeRefused(t *testing.T) {
	s, _ := GenerateSM2()
	t0 := time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC)
	long, err := Issue(s, Claims{Issuer: "CN-410100", Subject: "tok", IssuedAt: t0, ExpiresAt: t0.Add(24 * time.Hour), Category: CategoryLocal})
	if err != nil {
		t.Fatal(err)
	}
	km := KeyMap{}
	km.Add("CN-410100", s.Public())
	if _, _, err := Verify(long, km, t0.Add(time.Second)); apperr.CodeOf(err) != apperr.Malformed {
		t.Fatalf("a day-long code: %v", err)
	}
}
