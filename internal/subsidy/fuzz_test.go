package subsidy

import (
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/yikatong/yikatong/internal/apperr"
)

// FuzzReadList checks the payout list reader: it never panics; a list it
// refuses whole is refused with validation_failed in both languages; every
// line it would pay has a positive amount, a reference of 1-64 bytes
// without an ID number, a person shown masked; refused lines carry a
// reason; line numbers never go back; and neither CRLF line ends nor a
// byte order mark change what it reads.
func FuzzReadList(f *testing.F) {
	for _, s := range []string{
		"id_number_or_card_number,amount_fen,reference\n110105194912310029,3000,A1\n8800000002,2000,A2\n",
		"\ufeff证件号码或卡号,金额（分）,业务编号\r\n8800000001,150,H1\r\n\r\n",
		"证件号码,金额（元）,业务编号\n8800000001,150,Y1\n",
		"amount_fen,id,reference\n150,8800000001,Y4\n",
		"8800000001,150.00,补贴金额2024\n8800000002,100,Y4\n",
		"8800000002,-5,A5\n8800000002,abc,A6\nonly,two\n,,\n   \n",
		`x"y,100,A-6` + "\n\"a\nb\",1,\"r\"\"q\"\n",
		"8800000001,100,2024-11010519491231002x\n8800000001,9223372036854775807,big\n8800000001,9223372036854775808,over\n",
		"8800000001,+100, A1 \n8800000001,0100,\"A1\"\n",
		"\xd6\xa4\xbc\xfe,\xbd\xf0\xb6\xee\xa3\xa8\xd4\xaa\xa3\xa9,ref\r\n8800000001,150,G1\r\n",
		"\xff\xfe8\x008\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		lines, err := readList(strings.NewReader(in))
		if err != nil {
			if e := apperr.As(err); e.Code != apperr.ValidationFailed || e.Detail == "" || e.DetailZh == "" {
				t.Fatalf("refused with %+v", e)
			}
		}
		if len(lines) > MaxLines {
			t.Fatalf("%d lines", len(lines))
		}
		prev := 0
		for _, l := range lines {
			if l.Line < 1 || l.Line < prev {
				t.Fatalf("line %d after %d", l.Line, prev)
			}
			prev = l.Line
			if !utf8.ValidString(l.Who) || !utf8.ValidString(l.Reference) {
				t.Fatalf("not UTF-8: %+v", l)
			}
			if utf8.RuneCountInString(l.Person) != utf8.RuneCountInString(l.Who) {
				t.Fatalf("person %q for %q", l.Person, l.Who)
			}
			if n := utf8.RuneCountInString(l.Who); n > 7 && strings.Contains(l.Person, l.Who) {
				t.Fatalf("person unmasked: %q", l.Person)
			}
			switch l.Status {
			case "":
				if l.AmountFen <= 0 || l.Reference == "" || len(l.Reference) > 64 || l.Reference != strings.TrimSpace(l.Reference) ||
					l.Who == "" || l.Person != Mask(l.Who) || hasIDNumber(l.Reference) || l.Reason != "" {
					t.Fatalf("line to pay: %+v", l)
				}
			case Refused:
				if l.Reason == "" || l.Transfer != "" {
					t.Fatalf("refused line: %+v", l)
				}
				if l.Reason == ReasonIDInReference && hasIDNumber(l.Reference) {
					t.Fatalf("ID number shown: %+v", l)
				}
			default:
				t.Fatalf("status %q", l.Status)
			}
		}
		if strings.HasPrefix(in, "\ufeff") {
			return
		}
		same := func(what, other string) {
			l2, err2 := readList(strings.NewReader(other))
			if (err == nil) != (err2 == nil) || (err != nil && apperr.As(err).Detail != apperr.As(err2).Detail) {
				t.Fatalf("%s: %v, then %v", what, err, err2)
			}
			if err == nil && !reflect.DeepEqual(lines, l2) {
				t.Fatalf("%s:\n%+v\n%+v", what, lines, l2)
			}
		}
		same("byte order mark", "\ufeff"+in)
		if !strings.Contains(in, "\r") {
			same("CRLF", strings.ReplaceAll(in, "\n", "\r\n"))
		}
	})
}
