package trust

import (
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

// FuzzParse feeds arbitrary bytes to the bundle parser a terminal runs on
// whatever it downloaded: it must never panic, must refuse anything whose
// signature does not check against the pinned key, and anything it accepts
// must verify codes without panicking.
func FuzzParse(f *testing.F) {
	fx := newFixture(&testing.T{}, []Revocation{{Subject: "s1", CardHash: CardHash("4111111111111111"), At: t0}}, nil)
	f.Add(fx.json)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"issuer":"CN-410100","keys":[],"signature":{"alg":"SM2","kid":"x","value":"y"}}`))
	f.Add([]byte(`{"issuer":"CN-410100","issuer":"CN-310000"}`))
	f.Add(fx.json[:len(fx.json)/2])
	nk := fx.node.Public()
	good := code(&testing.T{}, fx.sm, "CN-410100", "sub", t0)
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Parse(data, &nk)
		if err != nil {
			if c := apperr.CodeOf(err); c == apperr.Internal || c == "" {
				t.Fatalf("parse error without a stable code: %v", err)
			}
			return
		}
		// Accepted: it was signed by the node key, so it must be a real bundle.
		if b.Issuer == "" {
			t.Fatal("accepted a bundle without an issuer")
		}
		b.VerifyCode(good, t0.Add(time.Second))
		b.VerifyCode("YK1:"+string(data), t0)
		b.CardRevoked("4111111111111111", t0)
	})
}
