package ecode

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// Test keys are fixed (testdata/keys) so the seed corpus of valid codes in
// testdata/fuzz keeps verifying. They sign nothing outside tests.
func fixedSigners(t testing.TB) (Signer, Signer) {
	t.Helper()
	load := func(name string) Signer {
		b, err := os.ReadFile(filepath.Join("testdata", "keys", name))
		if err != nil {
			t.Fatal(err)
		}
		s, err := ParsePrivateKey(b)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	return load("sm2.pem"), load("ed25519.pem")
}

// fuzzAt is the instant the fuzz targets verify at: inside the seed codes' minute.
var fuzzAt = t0.Add(20 * time.Second)

var allowedVerifyErrors = map[apperr.Code]bool{
	apperr.Malformed: true, apperr.UnsupportedScheme: true, apperr.UnknownIssuer: true,
	apperr.UnknownKey: true, apperr.BadSignature: true, apperr.Expired: true, apperr.NotYetValid: true,
}

func FuzzDecode(f *testing.F) {
	sm, ed := fixedSigners(f)
	for _, s := range []Signer{sm, ed} {
		code, _ := Issue(s, testClaims())
		f.Add(code)
		f.Add(code[:len(code)/2])
	}
	f.Add("YK1:")
	f.Add("HC1:NCFOXN")
	f.Fuzz(func(t *testing.T, code string) {
		d, err := Decode(code)
		if err != nil {
			if c := apperr.CodeOf(err); c != apperr.Malformed && c != apperr.UnsupportedScheme {
				t.Fatalf("Decode error code %s", c)
			}
			return
		}
		if d.Claims.Issuer == "" || d.Claims.Subject == "" || len(d.Header.Kid) != KidSize ||
			len(d.Signature) != SignatureSize || !d.Claims.ExpiresAt.After(d.Claims.IssuedAt) {
			t.Fatalf("Decode accepted incomplete code: %+v", d)
		}
	})
}

func FuzzVerify(f *testing.F) {
	sm, ed := fixedSigners(f)
	ks := keySet("CN-410100", sm, ed)
	for _, s := range []Signer{sm, ed} {
		code, _ := Issue(s, testClaims())
		f.Add(code)
	}
	f.Fuzz(func(t *testing.T, code string) {
		c, h, err := Verify(code, ks, fuzzAt)
		if err != nil {
			if !allowedVerifyErrors[apperr.CodeOf(err)] {
				t.Fatalf("Verify error %v", err)
			}
			return
		}
		// Anything accepted was signed by one of our two keys for our city
		// and is inside its minute.
		if c.Issuer != "CN-410100" || (h.Alg != AlgSM2 && h.Alg != AlgEdDSA) ||
			fuzzAt.Before(c.IssuedAt.Add(-ClockSkew)) || !fuzzAt.Before(c.ExpiresAt) {
			t.Fatalf("accepted %+v %+v", c, h)
		}
	})
}

// TestWriteFuzzCorpus regenerates testdata/fuzz when YIKATONG_WRITE_CORPUS=1:
// valid codes of both algorithms, truncated ones and single bit flips.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("YIKATONG_WRITE_CORPUS") == "" {
		t.Skip("set YIKATONG_WRITE_CORPUS=1 to regenerate the seed corpus")
	}
	sm, ed := fixedSigners(t)
	var seeds []string
	for _, s := range []Signer{sm, ed} {
		code, err := Issue(s, testClaims())
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, code, code[:len(code)-1], code[:len(code)-2], code[:len(code)/2], code[:10])
		raw, _ := DecodeBase45(code[4:])
		for _, bit := range []int{0, 9, 40, 100, len(raw)*8 - 1} {
			b := append([]byte(nil), raw...)
			b[bit/8] ^= 1 << (bit % 8)
			seeds = append(seeds, "YK1:"+EncodeBase45(b))
		}
		seeds = append(seeds, "YK1:"+EncodeBase45(raw[1:])) // untagged
	}
	seeds = append(seeds, "", "YK1:", "YK2:ABC", "YK1:GGW", "YK1:A")
	for _, target := range []string{"FuzzDecode", "FuzzVerify"} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, s := range seeds {
			body := "go test fuzz v1\nstring(" + strconv.Quote(s) + ")\n"
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%02d", i)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The stored seed corpus still holds valid codes (keys and format unchanged).
func TestSeedCorpusHasValidCodes(t *testing.T) {
	sm, ed := fixedSigners(t)
	ks := keySet("CN-410100", sm, ed)
	files, _ := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzVerify", "*"))
	if len(files) == 0 {
		t.Fatal("no seed corpus")
	}
	valid := map[Alg]int{}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		var s string
		if _, err := fmt.Sscanf(string(b), "go test fuzz v1\nstring(%q)\n", &s); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, h, err := Verify(s, ks, fuzzAt); err == nil {
			valid[h.Alg]++
		}
	}
	if valid[AlgSM2] == 0 || valid[AlgEdDSA] == 0 {
		t.Fatalf("valid seeds by alg: %v", valid)
	}
}
