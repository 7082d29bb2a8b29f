package keys

import (
	"bytes"
	"testing"

	"github.com/yikatong/yikatong/internal/ecode"
)

// FuzzParseKeyFile: whatever a key file holds (truncated, another PEM
// block, garbage) gives a key or an error, never a panic, and the error
// never quotes the file's contents.
func FuzzParseKeyFile(f *testing.F) {
	for _, alg := range []ecode.Alg{ecode.AlgSM2, ecode.AlgEdDSA} {
		s, err := ecode.Generate(alg)
		if err != nil {
			f.Fatal(err)
		}
		b, err := ecode.MarshalPrivateKey(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
		f.Add(bytes.Replace(b, []byte("PRIVATE KEY"), []byte("PUBLIC KEY"), -1))
	}
	f.Add([]byte{})
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseKeyFile("issuer-x.key", b)
		if err != nil {
			if s != nil {
				t.Fatal("a signer and an error")
			}
			if len(b) >= 16 && bytes.Contains([]byte(err.Error()), b) {
				t.Fatalf("error quotes the key file: %v", err)
			}
			return
		}
		if s.Public().KidString() == "" {
			t.Fatal("a parsed key without a kid")
		}
	})
}

// FuzzParseRegistryKey: an issuer_keys row with any algorithm name and key
// bytes gives a key whose kid is the row's, or an error, never a panic.
func FuzzParseRegistryKey(f *testing.F) {
	for _, alg := range []ecode.Alg{ecode.AlgSM2, ecode.AlgEdDSA} {
		s, err := ecode.Generate(alg)
		if err != nil {
			f.Fatal(err)
		}
		p := s.Public()
		f.Add(p.KidString(), alg.String(), p.Bytes())
		f.Add(p.KidString(), alg.String(), p.Bytes()[:len(p.Bytes())-1])
	}
	f.Add("", "", []byte{})
	f.Add("x", "SM2", append([]byte{4}, make([]byte, 64)...))
	f.Fuzz(func(t *testing.T, kid, alg string, pub []byte) {
		k, err := parseRegistryKey(kid, alg, pub)
		if err == nil && k.KidString() != kid {
			t.Fatalf("kid %q parsed as %q", kid, k.KidString())
		}
	})
}
