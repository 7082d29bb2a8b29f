package trust

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Canonical returns the JSON Canonicalization Scheme (RFC 8785, "JCS") form
// of the JSON object in data with its top-level member omit removed. This is
// exactly what a bundle's signature covers (omit = "signature").
//
// It is strict where JCS verifiers could otherwise disagree: duplicate
// member names, trailing data and numbers other than integers of magnitude
// below 2^53 are errors (a bundle has no numbers at all).
func Canonical(data []byte, omit string) ([]byte, error) {
	p := parser{data: data}
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.i != len(p.data) {
		return nil, errors.New("trailing data after the JSON value")
	}
	obj, ok := v.(jsonObject)
	if !ok {
		return nil, errors.New("not a JSON object")
	}
	if omit != "" {
		delete(obj, omit)
	}
	buf := bytes.NewBuffer(make([]byte, 0, len(data)))
	if err := writeCanonical(buf, obj); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type jsonObject map[string]any

const maxDepth = 32

// parser reads one JSON value (RFC 8259) into jsonObject, []any, string,
// json.Number, bool and nil. It is written out by hand because signed
// envelopes of a thousand clearing messages are canonicalised on every
// hop: encoding/json's token stream made that a quarter of a node's CPU.
// It is stricter than encoding/json where that matters for signatures:
// invalid UTF-8 and unpaired surrogate escapes are errors, not U+FFFD.
type parser struct {
	data []byte
	i    int
}

func (p *parser) space() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("JSON at byte %d: %s", p.i, fmt.Sprintf(format, args...))
}

func (p *parser) value(depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("JSON nested too deeply")
	}
	p.space()
	if p.i >= len(p.data) {
		return nil, p.errorf("unexpected end")
	}
	switch c := p.data[p.i]; {
	case c == '{':
		p.i++
		obj := jsonObject{}
		p.space()
		if p.i < len(p.data) && p.data[p.i] == '}' {
			p.i++
			return obj, nil
		}
		for {
			p.space()
			if p.i >= len(p.data) || p.data[p.i] != '"' {
				return nil, p.errorf("object key is not a string")
			}
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			if _, dup := obj[k]; dup {
				return nil, fmt.Errorf("duplicate member %q", k)
			}
			p.space()
			if p.i >= len(p.data) || p.data[p.i] != ':' {
				return nil, p.errorf("expected ':'")
			}
			p.i++
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			obj[k] = v
			p.space()
			if p.i >= len(p.data) {
				return nil, p.errorf("unexpected end in object")
			}
			if p.data[p.i] == '}' {
				p.i++
				return obj, nil
			}
			if p.data[p.i] != ',' {
				return nil, p.errorf("expected ',' or '}'")
			}
			p.i++
		}
	case c == '[':
		p.i++
		arr := []any{}
		p.space()
		if p.i < len(p.data) && p.data[p.i] == ']' {
			p.i++
			return arr, nil
		}
		for {
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
			p.space()
			if p.i >= len(p.data) {
				return nil, p.errorf("unexpected end in array")
			}
			if p.data[p.i] == ']' {
				p.i++
				return arr, nil
			}
			if p.data[p.i] != ',' {
				return nil, p.errorf("expected ',' or ']'")
			}
			p.i++
		}
	case c == '"':
		return p.str()
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	default:
		for _, lit := range []struct {
			text string
			v    any
		}{{"true", true}, {"false", false}, {"null", nil}} {
			if bytes.HasPrefix(p.data[p.i:], []byte(lit.text)) {
				p.i += len(lit.text)
				return lit.v, nil
			}
		}
		return nil, p.errorf("unexpected %q", c)
	}
}

// number reads a number per the JSON grammar (-? int frac? exp?).
func (p *parser) number() (json.Number, error) {
	start := p.i
	digits := func() int {
		n := 0
		for p.i < len(p.data) && p.data[p.i] >= '0' && p.data[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	if p.data[p.i] == '-' {
		p.i++
	}
	if p.i < len(p.data) && p.data[p.i] == '0' {
		p.i++
	} else if digits() == 0 {
		return "", p.errorf("bad number")
	}
	if p.i < len(p.data) && p.data[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return "", p.errorf("bad number")
		}
	}
	if p.i < len(p.data) && (p.data[p.i] == 'e' || p.data[p.i] == 'E') {
		p.i++
		if p.i < len(p.data) && (p.data[p.i] == '+' || p.data[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return "", p.errorf("bad number")
		}
	}
	return json.Number(p.data[start:p.i]), nil
}

// str reads a string starting at its opening quote.
func (p *parser) str() (string, error) {
	p.i++ // '"'
	start := p.i
	// Fast path: no escapes, valid UTF-8, no control characters.
	for p.i < len(p.data) {
		c := p.data[p.i]
		if c == '"' {
			s := p.data[start:p.i]
			p.i++
			if !utf8.Valid(s) {
				return "", p.errorf("invalid UTF-8 in a string")
			}
			return string(s), nil
		}
		if c == '\\' || c < 0x20 {
			break
		}
		p.i++
	}
	var b []byte
	b = append(b, p.data[start:p.i]...)
	for p.i < len(p.data) {
		c := p.data[p.i]
		switch {
		case c == '"':
			p.i++
			if !utf8.Valid(b) {
				return "", p.errorf("invalid UTF-8 in a string")
			}
			return string(b), nil
		case c < 0x20:
			return "", p.errorf("control character in a string")
		case c != '\\':
			b = append(b, c)
			p.i++
			continue
		}
		p.i++ // backslash
		if p.i >= len(p.data) {
			break
		}
		e := p.data[p.i]
		p.i++
		switch e {
		case '"', '\\', '/':
			b = append(b, e)
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return "", p.errorf("bad \\u escape")
			}
			if utf16.IsSurrogate(r) {
				if p.i+1 >= len(p.data) || p.data[p.i] != '\\' || p.data[p.i+1] != 'u' {
					return "", p.errorf("unpaired surrogate")
				}
				p.i += 2
				r2, ok := p.hex4()
				if r = utf16.DecodeRune(r, r2); !ok || r == utf8.RuneError {
					return "", p.errorf("unpaired surrogate")
				}
			}
			b = utf8.AppendRune(b, r)
		default:
			return "", p.errorf("bad escape")
		}
	}
	return "", p.errorf("unterminated string")
}

func (p *parser) hex4() (rune, bool) {
	if p.i+4 > len(p.data) {
		return 0, false
	}
	var r rune
	for _, c := range p.data[p.i : p.i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	p.i += 4
	return r, true
}

func writeCanonical(buf *bytes.Buffer, v any) error {
	switch t := v.(type) {
	case nil:
		buf.WriteString("null")
	case bool:
		buf.WriteString(strconv.FormatBool(t))
	case json.Number:
		n, err := strconv.ParseInt(string(t), 10, 64)
		if err != nil || n >= 1<<53 || n <= -(1<<53) {
			return fmt.Errorf("number %s: only integers below 2^53 are allowed", t)
		}
		buf.WriteString(strconv.FormatInt(n, 10))
	case string:
		writeString(buf, t)
	case []any:
		buf.WriteByte('[')
		for i, e := range t {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeCanonical(buf, e); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	case jsonObject:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		// JCS orders member names by their UTF-16 code units.
		sort.Slice(keys, func(i, j int) bool { return lessUTF16(keys[i], keys[j]) })
		buf.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(buf, k)
			buf.WriteByte(':')
			if err := writeCanonical(buf, t[k]); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	default:
		return fmt.Errorf("unexpected JSON value %T", v)
	}
	return nil
}

// lessUTF16 orders strings by their UTF-16 code units, as JCS does,
// without converting them: runes below U+10000 are one unit each, and a
// rune above is a surrogate pair whose first unit (0xD800–0xDBFF) sorts
// below U+E000–U+FFFF.
func lessUTF16(a, b string) bool {
	unit := func(r rune) rune {
		if r >= 0x10000 {
			return 0xD800 + (r-0x10000)>>10
		}
		return r
	}
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			if ua, ub := unit(ra), unit(rb); ua != ub {
				return ua < ub
			}
			return ra < rb
		}
		a, b = a[na:], b[nb:]
	}
	return a == "" && b != ""
}

// writeString writes s as ECMAScript JSON.stringify does (RFC 8785 3.2.2.2):
// only '"', '\\' and control characters are escaped; everything else is
// literal UTF-8.
func writeString(buf *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	buf.WriteByte('"')
	start := 0 // the run of bytes copied as they are
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue // literal (UTF-8 bytes included: s is valid UTF-8)
		}
		buf.WriteString(s[start:i])
		switch c {
		case '"':
			buf.WriteString(`\"`)
		case '\\':
			buf.WriteString(`\\`)
		case '\b':
			buf.WriteString(`\b`)
		case '\f':
			buf.WriteString(`\f`)
		case '\n':
			buf.WriteString(`\n`)
		case '\r':
			buf.WriteString(`\r`)
		case '\t':
			buf.WriteString(`\t`)
		default:
			buf.WriteString(`\u00`)
			buf.WriteByte(hex[c>>4])
			buf.WriteByte(hex[c&0xf])
		}
		start = i + 1
	}
	buf.WriteString(s[start:])
	buf.WriteByte('"')
}
