package ecode

import (
	"bytes"
	"testing"
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
