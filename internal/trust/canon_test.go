package trust

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"testing"
	"unicode/utf16"
	"unicode/utf8"
)

// refCanonical is the earlier Canonical, built on encoding/json's token
// stream: the reference the hand-written parser is fuzzed against.
func refCanonical(data []byte, omit string) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := refValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data after the JSON value")
	}
	obj, ok := v.(jsonObject)
	if !ok {
		return nil, errors.New("not a JSON object")
	}
	if omit != "" {
		delete(obj, omit)
	}
	var buf bytes.Buffer
	if err := writeCanonical(&buf, obj); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func refValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("JSON nested too deeply")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := jsonObject{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, errors.New("object key is not a string")
				}
				if _, dup := obj[k]; dup {
					return nil, fmt.Errorf("duplicate member %q", k)
				}
				v, err := refValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				obj[k] = v
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return obj, nil
		case '[':
			arr := []any{}
			for dec.More() {
				v, err := refValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return arr, nil
		}
		return nil, fmt.Errorf("unexpected %v", t)
	default:
		return tok, nil
	}
}

// FuzzCanonical: the hand-written parser canonicalises exactly as the
// encoding/json reference does. It may refuse more — invalid UTF-8 and
// unpaired surrogate escapes, which encoding/json turns into U+FFFD — but
// never accepts what the reference refuses, and its output is a fixed
// point (canonical JSON canonicalises to itself).
func FuzzCanonical(f *testing.F) {
	for _, s := range []string{
		`{"b":1,"a":{"d":[true,null,"x"],"c":"é\u0001\n\"\\<"},"sig":{}}`, `{ "€":"", "\r":"", "1":"" }`,
		`{"peers": [ ], "x" : -5}`, `{"a":1,"a":2}`, `{"a":1.5}`, `{"a":-0}`, `{"a":1e3}`, `[1]`, `{"a":1} {}`,
		`{"a":"\ud83d\ude00\u00e9\/"}`, `{"a":"\ud83d"}`, "{\"a\":\"\xff\"}", `{"a":[[[[]]]]}`, `{"a":tru}`, `{}`, ` {"a" : "b" } `,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Canonical(data, "sig")
		want, rerr := refCanonical(data, "sig")
		switch {
		case err == nil && rerr != nil:
			t.Fatalf("accepted %q, which the reference refuses (%v)", data, rerr)
		case err == nil && !bytes.Equal(got, want):
			t.Fatalf("%q: canonical %q, reference %q", data, got, want)
		case err != nil && rerr == nil && utf8.Valid(data) && !bytes.Contains(data, []byte(`\u`)):
			t.Fatalf("refused %q (%v), which the reference accepts", data, err)
		}
		if err == nil {
			again, err := Canonical(got, "")
			if err != nil || !bytes.Equal(again, got) {
				t.Fatalf("canonical form %q is not a fixed point: %q %v", got, again, err)
			}
		}
	})
}

// envelope1000 is a peer envelope of 1,000 clearing messages, as the
// outbox sends them.
func envelope1000() []byte {
	type msg struct {
		ID, Mode, Sub, Scenario string
		AmountFen               int64
	}
	ms := make([]msg, 1000)
	for i := range ms {
		ms[i] = msg{ID: fmt.Sprintf("CN-310000.%032x", i), Mode: "guaranteed", Sub: "tok_abcdefghijklmnopqrstuv", Scenario: "transit.bus", AmountFen: 200}
	}
	data, _ := json.Marshal(map[string]any{"from": "CN-310000", "to": "CN-330100", "kind": "messages", "body": map[string]any{"messages": ms}})
	return data
}

func BenchmarkCanonical(b *testing.B) { benchCanonical(b, Canonical) }

// BenchmarkCanonicalReference: the encoding/json version, to compare.
func BenchmarkCanonicalReference(b *testing.B) { benchCanonical(b, refCanonical) }

func benchCanonical(b *testing.B, canon func([]byte, string) ([]byte, error)) {
	data := envelope1000()
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := canon(data, "signature"); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzLessUTF16: the allocation-free order equals comparing the UTF-16
// encodings.
func FuzzLessUTF16(f *testing.F) {
	f.Add("｡", "😀")
	f.Add("a", "ab")
	f.Add("\ue000", "\U00010000")
	f.Fuzz(func(t *testing.T, a, b string) {
		if !utf8.ValidString(a) || !utf8.ValidString(b) {
			return
		}
		ua, ub := utf16.Encode([]rune(a)), utf16.Encode([]rune(b))
		want := len(ua) < len(ub)
		for i := 0; i < len(ua) && i < len(ub); i++ {
			if ua[i] != ub[i] {
				want = ua[i] < ub[i]
				break
			}
		}
		if got := lessUTF16(a, b); got != want {
			t.Fatalf("lessUTF16(%q, %q) = %v, want %v", a, b, got, want)
		}
	})
}
