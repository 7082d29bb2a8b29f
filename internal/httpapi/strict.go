package httpapi

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"

	"github.com/yikatong/yikatong/internal/apperr"
)

// checkStrict refuses what encoding/json would accept silently and a
// caller would not mean:
//
//   - a key given twice in one object: the last value would win, so a body
//     showing `"amount_fen":1` to one reader could book
//     `"amount_fen":100000` further on;
//   - a key that names a field only when case is ignored (`AMOUNT_FEN`):
//     our names are case-sensitive, and a proxy or a signature check that
//     reads the exact name would see another request than we do;
//   - a body that is not a JSON object where an object is expected
//     (`null` would leave every field at its zero value, e.g. turning a
//     scenario off).
//
// Unknown fields are left to the decoder (DisallowUnknownFields), and
// malformed JSON to its syntax errors.
func checkStrict(data []byte, v any) error {
	err := walkBody(data, v)
	if err == errSyntax {
		return nil // the decoder reports it
	}
	return err
}

// errSyntax stops the walk at malformed JSON.
var errSyntax = errors.New("malformed JSON")

// maxDepth bounds the nesting the walk follows (encoding/json refuses
// deeper bodies with its own error).
const maxDepth = 10000

// walkBody checks data in one pass over its bytes, guided by v's type,
// comparing keys as raw bytes (a key with an escape or a non-ASCII byte is
// decoded as encoding/json decodes it, so that two spellings of one key
// count as a repeat); a path for an error message is rendered only when
// there is an error. (It replaced a walk over
// json.Decoder tokens, which cost about 6 µs of a scan's 240;
// strict_ref_test.go keeps that walk, and a fuzz target checks both agree
// on every well-formed body.)
func walkBody(data []byte, v any) error {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	w := walker{b: data}
	if t != nil && (t.Kind() == reflect.Struct || t.Kind() == reflect.Map) && !opaque(t) {
		w.ws()
		if w.i >= len(w.b) {
			return errSyntax
		}
		if w.b[w.i] != '{' {
			if !json.Valid(data) {
				return errSyntax
			}
			return apperr.Newf(apperr.ValidationFailed, "the body must be a JSON object", "请求体须为 JSON 对象")
		}
		w.i++
		return w.object(t, nil, 1)
	}
	return w.value(t, nil, 0)
}

// walker is a cursor over a body.
type walker struct {
	b []byte
	i int
}

// pathElem is one step of the path to a value: a key, or an index of a
// list. Rendered only for an error message.
type pathElem struct {
	up    *pathElem
	key   []byte
	index int
	isIdx bool
}

func (p *pathElem) String() string {
	if p == nil {
		return ""
	}
	up := p.up.String()
	if p.isIdx {
		return fmt.Sprintf("%s[%d]", up, p.index)
	}
	if up == "" {
		return string(p.key)
	}
	return up + "." + string(p.key)
}

// caseVariantErr refuses the member name, which differs from the field f
// only in case.
func caseVariantErr(name, f string) error {
	e := apperr.Newf(apperr.ValidationFailed, fmt.Sprintf("unknown field %q (field names are case-sensitive: %q)", name, f),
		fmt.Sprintf("未知字段 %q（字段名区分大小写，应为 %q）", name, f))
	e.Field = name
	return e
}

func (w *walker) ws() {
	for w.i < len(w.b) {
		switch w.b[w.i] {
		case ' ', '\t', '\n', '\r':
			w.i++
		default:
			return
		}
	}
}

// value reads one value of type t (nil: any).
func (w *walker) value(t reflect.Type, p *pathElem, depth int) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && opaque(t) {
		t = nil // its own decoding rules: only repeats are checked
	}
	w.ws()
	if w.i >= len(w.b) {
		return errSyntax
	}
	switch w.b[w.i] {
	case '{':
		if depth >= maxDepth {
			return errSyntax
		}
		w.i++
		return w.object(t, p, depth+1)
	case '[':
		if depth >= maxDepth {
			return errSyntax
		}
		w.i++
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		w.ws()
		if w.i < len(w.b) && w.b[w.i] == ']' {
			w.i++
			return nil
		}
		for k := 0; ; k++ {
			if err := w.value(elem, &pathElem{up: p, index: k, isIdx: true}, depth+1); err != nil {
				return err
			}
			if end, err := w.after(']'); end || err != nil {
				return err
			}
		}
	case '"':
		_, _, ok := w.str()
		if !ok {
			return errSyntax
		}
		return nil
	default: // a number or literal: its form is the decoder's to check
		j := w.i
		for j < len(w.b) {
			switch w.b[j] {
			case ',', ']', '}', ' ', '\t', '\n', '\r', ':', '"', '{', '[':
				goto end
			}
			j++
		}
	end:
		if j == w.i {
			return errSyntax
		}
		w.i = j
		return nil
	}
}

// str reads the string at w.i (its opening quote) and returns its raw
// bytes and whether it holds anything but plain ASCII characters (an
// escape, a byte ≥ 0x80, a control character).
func (w *walker) str() (raw []byte, plain, ok bool) {
	start := w.i
	plain = true
	for j := start + 1; j < len(w.b); j++ {
		switch c := w.b[j]; {
		case c == '"':
			w.i = j + 1
			return w.b[start : j+1], plain, true
		case c == '\\':
			plain = false
			j++ // the escaped byte
		case c < 0x20 || c >= 0x80:
			plain = false
		}
	}
	return nil, false, false
}

// keySet remembers an object's keys: a few in a list, many in a map (a
// body of thousands of keys must not cost a quadratic walk).
type keySet struct {
	few  [16][]byte
	n    int
	many map[string]struct{}
}

// add records k and reports whether it was there already.
func (s *keySet) add(k []byte) bool {
	if s.many != nil {
		if _, ok := s.many[string(k)]; ok {
			return true
		}
		s.many[string(k)] = struct{}{}
		return false
	}
	for _, x := range s.few[:s.n] {
		if bytes.Equal(x, k) {
			return true
		}
	}
	if s.n < len(s.few) {
		s.few[s.n] = k
		s.n++
		return false
	}
	s.many = make(map[string]struct{}, 2*len(s.few))
	for _, x := range s.few {
		s.many[string(x)] = struct{}{}
	}
	s.many[string(k)] = struct{}{}
	return false
}

// object reads the members of an object whose '{' was read.
func (w *walker) object(t reflect.Type, p *pathElem, depth int) error {
	var fields map[string]reflect.Type
	if t != nil && t.Kind() == reflect.Struct {
		fields = jsonFields(t)
	}
	w.ws()
	if w.i < len(w.b) && w.b[w.i] == '}' {
		w.i++
		return nil
	}
	var seen keySet
	for {
		w.ws()
		if w.i >= len(w.b) || w.b[w.i] != '"' {
			return errSyntax
		}
		raw, plain, ok := w.str()
		if !ok {
			return errSyntax
		}
		key := raw[1 : len(raw)-1]
		if !plain { // decoded as encoding/json decodes it
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return errSyntax
			}
			key = []byte(s)
		}
		if seen.add(key) {
			name := (&pathElem{up: p, key: key}).String()
			e := apperr.Newf(apperr.ValidationFailed, fmt.Sprintf("field %q is given twice", name), fmt.Sprintf("字段 %q 重复出现", name))
			e.Field = name
			return e
		}
		var ft reflect.Type
		switch {
		case fields != nil:
			var ok bool
			if ft, ok = fields[string(key)]; !ok {
				for f := range fields {
					if strings.EqualFold(f, string(key)) {
						return caseVariantErr((&pathElem{up: p, key: key}).String(), f)
					}
				}
			}
		case t != nil && t.Kind() == reflect.Map:
			ft = t.Elem()
		}
		w.ws()
		if w.i >= len(w.b) || w.b[w.i] != ':' {
			return errSyntax
		}
		w.i++
		if err := w.value(ft, &pathElem{up: p, key: key}, depth); err != nil {
			return err
		}
		if end, err := w.after('}'); end || err != nil {
			return err
		}
	}
}

// after reads what follows a member of a list or object: a comma (more
// follow), or its closing byte (end).
func (w *walker) after(closing byte) (end bool, err error) {
	w.ws()
	if w.i >= len(w.b) {
		return false, errSyntax
	}
	c := w.b[w.i]
	w.i++
	switch c {
	case closing:
		return true, nil
	case ',':
		return false, nil
	}
	return false, errSyntax
}

var (
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
)

// opaque: t decodes itself (time.Time, json.RawMessage, …).
func opaque(t reflect.Type) bool {
	p := reflect.PointerTo(t)
	return t.Implements(jsonUnmarshaler) || p.Implements(jsonUnmarshaler) ||
		t.Implements(textUnmarshaler) || p.Implements(textUnmarshaler)
}

var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// jsonFields maps the JSON names of struct t's fields (as encoding/json
// names them, embedded structs' fields promoted) to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	addFields(m, t, 0)
	fieldCache.Store(t, m)
	return m
}

func addFields(m map[string]reflect.Type, t reflect.Type, depth int) {
	if depth > 8 {
		return
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		if f.Anonymous && name == "" {
			et := ft
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				inner := map[string]reflect.Type{}
				addFields(inner, et, depth+1)
				for k, v := range inner {
					if _, ok := m[k]; !ok { // the outer field wins
						m[k] = v
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = ft
	}
}
