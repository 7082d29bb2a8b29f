package idnum

import (
	"testing"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
)

// FuzzParse checks that Parse never panics, that every failure is a
// catalogue error, and that every success round-trips: re-parsing Raw gives
// the same Number, Raw is normalised and its check character is right.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"11010519491231002X", "11010519491231002x", "911398199012310021", "KAZ110090123105",
		"", "1", "110105194912310021", "１１０１０５１９４９１２３１００２Ｘ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_ = Mask(s)
		n, err := Parse(s, now)
		if err != nil {
			e := apperr.As(err)
			switch e.Code {
			case apperr.BadLength, apperr.BadFormat, apperr.BadRegion, apperr.BadBirthDate, apperr.BadCheckDigit, apperr.BadNationality:
			default:
				t.Fatalf("Parse(%q): unexpected code %v", s, err)
			}
			if r := CheckResult(s, now); r.Valid || r.Error == nil || r.Error.Code != e.Code {
				t.Fatalf("CheckResult disagrees: %+v", r)
			}
			return
		}
		if !utf8.ValidString(n.Raw) || n.Raw != Normalize(n.Raw) {
			t.Fatalf("Raw not normalised: %q", n.Raw)
		}
		again, err := Parse(n.Raw, now)
		if err != nil || again != n {
			t.Fatalf("round trip of %q: %+v, %v (first %+v)", s, again, err, n)
		}
		if n.Sex != "M" && n.Sex != "F" {
			t.Fatalf("sex %q", n.Sex)
		}
		if n.BirthDate.Before(minBirth) || n.BirthDate.After(today(now)) {
			t.Fatalf("birth date %v out of range", n.BirthDate)
		}
		if len(n.Raw) == 18 && CheckChar(n.Raw[:17]) != n.Raw[17] {
			t.Fatalf("bad check char accepted: %q", n.Raw)
		}
		if r := CheckResult(s, now); !r.Valid || r.Kind != n.Kind {
			t.Fatalf("CheckResult disagrees: %+v", r)
		}
	})
}
