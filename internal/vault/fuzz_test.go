package vault

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzUnseal: any stored bytes (a truncated, corrupted or foreign blob) and
// any associated data give either the sealed plaintext or ErrOpen, never a
// panic; a value opens only with the exact aad it was sealed with.
func FuzzUnseal(f *testing.F) {
	v, err := New(bytes.Repeat([]byte{7}, keySize))
	if err != nil {
		f.Fatal(err)
	}
	good := v.Seal([]byte("11010519491231002X"), "res_1")
	f.Add(good, "res_1")
	f.Add(good[:Overhead], "res_1")
	f.Add(good[:Overhead-1], "res_1")
	f.Add([]byte{}, "")
	f.Add([]byte{version1}, "x")
	f.Add(append([]byte{0x02}, good[1:]...), "res_1")
	f.Add(v.Seal(nil, ""), "")
	f.Fuzz(func(t *testing.T, sealed []byte, aad string) {
		pt, err := v.Unseal(sealed, aad)
		if err != nil {
			if !errors.Is(err, ErrOpen) || pt != nil {
				t.Fatalf("Unseal error %v with plaintext %q", err, pt)
			}
			return
		}
		// Only an authentic value opens; resealing it round-trips.
		if len(sealed) != len(pt)+Overhead {
			t.Fatalf("opened %d bytes into %d", len(sealed), len(pt))
		}
		if aad != "" {
			if _, err := v.Unseal(sealed, aad+"x"); err == nil {
				t.Fatal("opened with other associated data")
			}
		}
		again, err := v.Unseal(v.Seal(pt, aad), aad)
		if err != nil || !bytes.Equal(again, pt) {
			t.Fatalf("reseal round trip: %q %v", again, err)
		}
	})
}
