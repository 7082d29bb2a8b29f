package ecode

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"math/big"
	"testing"
	"time"

	"github.com/emmansun/gmsm/sm2"
)

// BenchmarkIssue measures issuing one code (claims, CBOR, signature, Base45).
func BenchmarkIssue(b *testing.B) {
	sm, ed := fixedSigners(b)
	for _, s := range []Signer{sm, ed} {
		b.Run(s.Alg().Curve(), func(b *testing.B) {
			c := testClaims()
			for b.Loop() {
				if _, err := Issue(s, c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifyCode measures decoding and verifying one code, as a
// terminal does: Base45, CBOR, key look-up, Sig_structure, signature, time.
func BenchmarkVerifyCode(b *testing.B) {
	sm, ed := fixedSigners(b)
	ks := keySet("CN-410100", sm, ed)
	for _, s := range []Signer{sm, ed} {
		b.Run(s.Alg().Curve(), func(b *testing.B) {
			code, _ := Issue(s, testClaims())
			for b.Loop() {
				if _, _, err := Verify(code, ks, fuzzAt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRawVerify measures the bare signature primitive on a message the
// size of a code's Sig_structure, called the way a plain user of each
// library would: gmsm's VerifyWithSM2 (computes ZA, SM3, verifies r,s) and
// crypto/ed25519.Verify.
func BenchmarkRawVerify(b *testing.B) {
	sm, ed := fixedSigners(b)
	for _, s := range []Signer{sm, ed} {
		code, _ := Issue(s, testClaims())
		d, _ := Decode(code)
		msg := make([]byte, len(d.ToBeSigned))
		rand.Read(msg)
		sig, _ := s.Sign(msg)
		pb := s.Public().Bytes()
		b.Run(s.Alg().Curve(), func(b *testing.B) {
			switch s.Alg() {
			case AlgSM2:
				pub := &ecdsa.PublicKey{Curve: sm2.P256(), X: new(big.Int).SetBytes(pb[1:33]), Y: new(big.Int).SetBytes(pb[33:])}
				r, ss := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
				for b.Loop() {
					if !sm2.VerifyWithSM2(pub, nil, msg, r, ss) {
						b.Fatal("bad")
					}
				}
			case AlgEdDSA:
				for b.Loop() {
					if !ed25519.Verify(ed25519.PublicKey(pb), msg, sig) {
						b.Fatal("bad")
					}
				}
			}
		})
	}
}

// BenchmarkVerifyOverhead alternates VerifyCode and RawVerify in small
// batches and reports their ratio ("code/raw"), which stays meaningful on a
// busy machine where separate benchmarks drift apart.
func BenchmarkVerifyOverhead(b *testing.B) {
	sm, ed := fixedSigners(b)
	ks := keySet("CN-410100", sm, ed)
	for _, s := range []Signer{sm, ed} {
		code, _ := Issue(s, testClaims())
		d, _ := Decode(code)
		msg := make([]byte, len(d.ToBeSigned))
		rand.Read(msg)
		sig, _ := s.Sign(msg)
		pb := s.Public().Bytes()
		var raw func() bool
		switch s.Alg() {
		case AlgSM2:
			pub := &ecdsa.PublicKey{Curve: sm2.P256(), X: new(big.Int).SetBytes(pb[1:33]), Y: new(big.Int).SetBytes(pb[33:])}
			r, ss := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
			raw = func() bool { return sm2.VerifyWithSM2(pub, nil, msg, r, ss) }
		case AlgEdDSA:
			raw = func() bool { return ed25519.Verify(ed25519.PublicKey(pb), msg, sig) }
		}
		b.Run(s.Alg().Curve(), func(b *testing.B) {
			const batch = 50
			var tCode, tRaw time.Duration
			n := 0
			for b.Loop() {
				start := time.Now()
				for i := 0; i < batch; i++ {
					if _, _, err := Verify(code, ks, fuzzAt); err != nil {
						b.Fatal(err)
					}
				}
				mid := time.Now()
				for i := 0; i < batch; i++ {
					if !raw() {
						b.Fatal("raw verify failed")
					}
				}
				tCode += mid.Sub(start)
				tRaw += time.Since(mid)
				n += batch
			}
			b.ReportMetric(float64(tCode.Nanoseconds())/float64(n), "code-ns/op")
			b.ReportMetric(float64(tRaw.Nanoseconds())/float64(n), "raw-ns/op")
			b.ReportMetric(float64(tCode)/float64(tRaw), "code/raw")
		})
	}
}

// BenchmarkDecode is the parsing share of VerifyCode: Base45, CBOR, claims,
// Sig_structure (no signature check).
func BenchmarkDecode(b *testing.B) {
	sm, _ := fixedSigners(b)
	code, _ := Issue(sm, testClaims())
	for b.Loop() {
		if _, err := Decode(code); err != nil {
			b.Fatal(err)
		}
	}
}
