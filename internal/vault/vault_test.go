package vault

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func open(t *testing.T, dir string) *Vault {
	t.Helper()
	v, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRoundTrip(t *testing.T) {
	v := open(t, t.TempDir())
	for _, pt := range [][]byte{nil, {}, []byte("张三"), bytes.Repeat([]byte{0xA5}, 10000)} {
		ct := v.Seal(pt, "res_1")
		if len(ct) != len(pt)+Overhead {
			t.Fatalf("sealed length %d for %d bytes", len(ct), len(pt))
		}
		got, err := v.Unseal(ct, "res_1")
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Unseal = %q, %v; want %q", got, err, pt)
		}
	}
	// Fresh nonce each time: same plaintext seals differently.
	a, b := v.Seal([]byte("x"), "a"), v.Seal([]byte("x"), "a")
	if bytes.Equal(a, b) {
		t.Fatal("two seals of the same value are identical")
	}
	if bytes.Contains(v.Seal([]byte("11010519491231002X"), "r"), []byte("11010519491231002X")) {
		t.Fatal("plaintext visible in sealed value")
	}
}

func TestTamperDetection(t *testing.T) {
	v := open(t, t.TempDir())
	ct := v.Seal([]byte("11010519491231002X"), "res_1")
	for i := range ct {
		for bit := 0; bit < 8; bit++ {
			bad := append([]byte(nil), ct...)
			bad[i] ^= 1 << bit
			if _, err := v.Unseal(bad, "res_1"); err != ErrOpen {
				t.Fatalf("flipped bit %d of byte %d: err %v", bit, i, err)
			}
		}
	}
	if _, err := v.Unseal(ct, "res_2"); err != ErrOpen {
		t.Fatalf("wrong aad: %v", err)
	}
	if _, err := v.Unseal(ct, ""); err != ErrOpen {
		t.Fatalf("empty aad: %v", err)
	}
	for _, n := range []int{0, 1, Overhead - 1, len(ct) - 1} {
		if _, err := v.Unseal(ct[:n], "res_1"); err != ErrOpen {
			t.Fatalf("truncated to %d: %v", n, err)
		}
	}
	other := open(t, t.TempDir())
	if _, err := other.Unseal(ct, "res_1"); err != ErrOpen {
		t.Fatalf("other key: %v", err)
	}
}

func TestKeyFileAndReload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	v1 := open(t, dir)
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() != 32 {
		t.Fatalf("key file mode %v size %d", st.Mode().Perm(), st.Size())
	}
	dst, _ := os.Stat(dir)
	if dst.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", dst.Mode().Perm())
	}
	ct := v1.Seal([]byte("secret"), "aad")
	v2 := open(t, dir)
	if pt, err := v2.Unseal(ct, "aad"); err != nil || string(pt) != "secret" {
		t.Fatalf("reloaded vault: %q %v", pt, err)
	}
	if v1.LookupHash("id_number", "x") != v2.LookupHash("id_number", "x") || !bytes.Equal(v1.Pepper(), v2.Pepper()) {
		t.Fatal("reloaded vault derives other subkeys")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("leftover files: %v", entries)
	}

	// Refuses a key readable by others, and a key of the wrong size.
	os.Chmod(filepath.Join(dir, KeyFile), 0o644)
	if _, err := Open(dir); err == nil {
		t.Fatal("opened a world-readable key")
	}
	os.Chmod(filepath.Join(dir, KeyFile), 0o600)
	os.WriteFile(filepath.Join(dir, KeyFile), []byte("short"), 0o600)
	if _, err := Open(dir); err == nil {
		t.Fatal("opened a short key")
	}
}

func TestConcurrentCreateAgrees(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	hashes := make([]string, 16)
	for i := range hashes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := Open(dir)
			if err != nil {
				t.Error(err)
				return
			}
			hashes[i] = v.LookupHash("k", "v")
		}()
	}
	wg.Wait()
	for _, h := range hashes[1:] {
		if h != hashes[0] {
			t.Fatal("concurrent Opens created different keys")
		}
	}
}

func TestSubkeysSeparate(t *testing.T) {
	v := open(t, t.TempDir())
	if v.LookupHash("id_number", "a") == v.LookupHash("card", "a") {
		t.Fatal("look-up hash ignores kind")
	}
	if v.LookupHash("a", "bc") == v.LookupHash("ab", "c") {
		t.Fatal("kind/value boundary is ambiguous")
	}
	if len(v.LookupHash("k", "v")) != 64 || len(v.Pepper()) != 32 {
		t.Fatal("sizes")
	}
	p := v.Pepper()
	p[0] ^= 0xff
	if bytes.Equal(p, v.Pepper()) {
		t.Fatal("Pepper returns internal slice")
	}
	if bytes.Equal(v.Pepper(), v.lookupKey) {
		t.Fatal("pepper equals look-up key")
	}
	if _, err := New(make([]byte, 31)); err == nil {
		t.Fatal("New accepted a short key")
	}
}
