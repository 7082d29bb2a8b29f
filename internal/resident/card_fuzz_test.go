package resident

import (
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
)

// FuzzCardNumber: whatever a terminal or a clerk types as a card number,
// the checks agree with each other, no single-digit typo of a valid
// number passes (the Luhn digit catches it), and the region is
// always the number's own prefix or nothing.
func FuzzCardNumber(f *testing.F) {
	for _, s := range []string{"4111111111111111", " 4111-1111-1111-1111 ", "3301000000000011", "0000000000000000", "１２３４", "4111111111111112", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n := NormalizeCardNumber(s)
		got, err := checkCardNumber(s)
		if ValidCardNumber(n) != (err == nil) {
			t.Fatalf("ValidCardNumber(%q) = %v but checkCardNumber says %v", n, ValidCardNumber(n), err)
		}
		if err != nil {
			if apperr.CodeOf(err) != apperr.ValidationFailed {
				t.Fatalf("error %v, want validation_failed", err)
			}
			if r := CardRegion(s); r != "" {
				t.Fatalf("CardRegion of an invalid number %q = %q", s, r)
			}
			return
		}
		if got != n || !strings.HasPrefix(n, CardRegion(s)) || len(CardRegion(s)) != RegionDigits {
			t.Fatalf("%q: normalised %q, region %q", s, got, CardRegion(s))
		}
		for i := 0; i < 16; i++ { // every single-digit typo is caught
			b := []byte(n)
			b[i] = '0' + (b[i]-'0'+1)%10
			if ValidCardNumber(string(b)) {
				t.Fatalf("the typo %s of %s passes the check digit", b, n)
			}
		}
	})
}
