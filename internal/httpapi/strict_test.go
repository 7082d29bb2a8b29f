package httpapi

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
)

type inner struct {
	Note string `json:"note"`
}

type embedded struct {
	Channel string `json:"channel"`
}

type topup struct {
	embedded
	Card   string            `json:"card_number"`
	Amount int64             `json:"amount_fen"`
	Meta   map[string]string `json:"meta,omitempty"`
	Lines  []inner           `json:"lines,omitempty"`
	At     time.Time         `json:"at,omitzero"`
	On     *bool             `json:"on,omitempty"`
	Raw    json.RawMessage   `json:"raw,omitempty"`
}

func decode(body string) (topup, error) {
	var v topup
	r := httptest.NewRequest("POST", "/", strings.NewReader(body))
	return v, DecodeJSON(r, &v)
}

func TestDecodeJSONStrict(t *testing.T) {
	ok := []string{
		`{"card_number":"1","amount_fen":100}`,
		`{"channel":"bank","card_number":"1"}`,
		`{"meta":{"a":"1","A":"2"},"lines":[{"note":"x"},{"note":"y"}]}`,
		`{"at":"2026-01-01T00:00:00Z","on":false,"raw":{"x":1,"y":[1,2]}}`,
		` {"amount_fen":1} `,
	}
	for _, b := range ok {
		if _, err := decode(b); err != nil {
			t.Errorf("%s: %v", b, err)
		}
	}
	bad := []struct{ body, want string }{
		{`{"amount_fen":1,"amount_fen":100000}`, `"amount_fen" is given twice`},
		{`{"meta":{"a":"1","a":"2"}}`, `"meta.a" is given twice`},
		{`{"lines":[{"note":"x","note":"y"}]}`, `"lines[0].note" is given twice`},
		{`{"raw":{"x":1,"x":2}}`, `"raw.x" is given twice`},
		{`{"AMOUNT_FEN":100}`, `case-sensitive: "amount_fen"`},
		{`{"Card_Number":"1"}`, `case-sensitive: "card_number"`},
		{`{"lines":[{"Note":"x"}]}`, `case-sensitive: "note"`},
		{`{"Channel":"bank"}`, `case-sensitive: "channel"`},
		{`null`, "must be a JSON object"},
		{`[{"amount_fen":1}]`, "must be a JSON object"},
		{`"x"`, "must be a JSON object"},
		{``, "empty"},
		{`{"amount_fen":"1"}`, `"amount_fen" must be a whole number`},
		{`{"lines":{"note":"x"}}`, `"lines" must be a list`},
		{`{"lines":[1]}`, `must be an object`},
		{`{"nope":1}`, `unknown field "nope"`},
		{`{"amount_fen":1}{}`, "exactly one JSON object"},
		{`{"amount_fen":`, "truncated"},
	}
	for _, c := range bad {
		_, err := decode(c.body)
		if apperr.CodeOf(err) != apperr.ValidationFailed || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want validation_failed with %q", c.body, err, c.want)
			continue
		}
		if e := apperr.As(err); e.MessageZh == "" {
			t.Errorf("%s: no Chinese message", c.body)
		}
		if strings.Contains(err.Error(), "httpapi.") || strings.Contains(err.Error(), "topup") {
			t.Errorf("%s: the message names a Go type: %v", c.body, err)
		}
	}
}

// A deeply nested body is refused with a clear error, not walked down to
// the bottom of the stack.
func TestDecodeJSONDeep(t *testing.T) {
	for _, body := range []string{
		`{"raw":` + strings.Repeat("[", 200_000) + strings.Repeat("]", 200_000) + `}`,
		`{"meta":` + strings.Repeat(`{"a":`, 50_000) + "1" + strings.Repeat("}", 50_000) + `}`,
	} {
		if _, err := decode(body); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Errorf("%d bytes nested: %v, want validation_failed", len(body), err)
		}
	}
}

// What DecodeJSON accepts, encoding/json accepts too, to the same value;
// no input makes it panic.
func FuzzDecodeJSON(f *testing.F) {
	for _, s := range []string{`{"card_number":"1","amount_fen":100}`, `{"meta":{"a":"1"},"lines":[{"note":"x"}]}`,
		`{"a":1,"a":2}`, `null`, `[1,{"x":[]}]`, `{"raw":{"x":{"y":[{"z":1}]}}}`, `{"AMOUNT_FEN":1}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		v, err := decode(body)
		if err != nil {
			return
		}
		var lax topup
		if err := json.Unmarshal([]byte(body), &lax); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", body, err)
		}
		a, _ := json.Marshal(v)
		b, _ := json.Marshal(lax)
		if string(a) != string(b) {
			t.Fatalf("%q decoded as %s, encoding/json gives %s", body, a, b)
		}
	})
}

// FuzzStrictMatchesReference: on every well-formed body, the byte walk
// finds what the reference walk over json.Decoder tokens finds (the same
// repeat, case variant or non-object body, with the same message), for
// structs, maps and lists; on any body it neither panics nor hangs.
func FuzzStrictMatchesReference(f *testing.F) {
	for _, s := range []string{`{"card_number":"1","amount_fen":100}`, `{"meta":{"a":"1","a":"2"},"lines":[{"note":"x"}]}`,
		`{"a":1,"a":2}`, `null`, `[1,{"x":[]}]`, `{"raw":{"x":{"y":[{"z":1}]}}}`, `{"AMOUNT_FEN":1}`,
		`{"a\u0062":1,"ab":2}`, `{"\ud800":1,"\ufffd":2}`, `[{"note":"x","note":"y"}]`, `{"lines":[{},{"Note":1}]}`,
		`{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":0,"k11":1,"k12":2,"k13":3,"k14":4,"k15":5,"k16":6,"k3":7}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, v := range []any{&topup{}, &map[string]any{}, &[]topup{}, &map[string]inner{}, new(any)} {
			got := walkBody([]byte(body), v)
			if !json.Valid([]byte(body)) {
				continue
			}
			want := refWalkBody([]byte(body), v)
			if (got == nil) != (want == nil) || got != nil && got.Error() != want.Error() {
				t.Fatalf("%q into %T: %v, the reference walk says %v", body, v, got, want)
			}
			if got != nil {
				if g, w := apperr.As(got), apperr.As(want); g != nil && w != nil && g.Field != w.Field {
					t.Fatalf("%q into %T: field %q, the reference walk says %q", body, v, g.Field, w.Field)
				}
			}
		}
	})
}

// BenchmarkStrictWalk times the strict check of a scan's body, the byte
// walk against the token walk it replaced.
func BenchmarkStrictWalk(b *testing.B) {
	body := []byte(`{"idempotency_key":"lib-000123-000456","scenario":"library.loan","code":"YK1:` + strings.Repeat("6BFOXN*TS0BI$ZDFRH", 14) + `","amount_fen":0,"meta":{"desk":"3"}}`)
	type scanReq struct {
		Key      string            `json:"idempotency_key"`
		Scenario string            `json:"scenario"`
		Code     string            `json:"code"`
		Amount   int64             `json:"amount_fen"`
		Meta     map[string]string `json:"meta"`
	}
	for _, c := range []struct {
		name string
		walk func([]byte, any) error
	}{{"bytes", walkBody}, {"tokens", refWalkBody}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := c.walk(body, &scanReq{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// An optional body left out, or blank, leaves the defaults; one sent is
// held to DecodeJSON's rules.
func TestDecodeOptionalJSON(t *testing.T) {
	for _, body := range []string{"", " \r\n\t"} {
		v := topup{Amount: 7}
		if err := DecodeOptionalJSON(httptest.NewRequest("POST", "/", strings.NewReader(body)), &v); err != nil || v.Amount != 7 {
			t.Fatalf("body %q: %+v %v", body, v, err)
		}
	}
	var v topup
	if err := DecodeOptionalJSON(httptest.NewRequest("POST", "/", strings.NewReader(`{"amount_fen":5}`)), &v); err != nil || v.Amount != 5 {
		t.Fatalf("a body: %+v %v", v, err)
	}
	for _, body := range []string{"{", `{"x":1}`, `{} {}`} {
		if err := DecodeOptionalJSON(httptest.NewRequest("POST", "/", strings.NewReader(body)), &v); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Fatalf("body %q: %v", body, err)
		}
	}
}
