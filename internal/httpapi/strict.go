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

func walkBody(data []byte, v any) error {
	t := reflect.TypeOf(v)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if t != nil && (t.Kind() == reflect.Struct || t.Kind() == reflect.Map) && !opaque(t) {
		tok, err := dec.Token()
		if err != nil {
			return errSyntax
		}
		if d, ok := tok.(json.Delim); !ok || d != '{' {
			return apperr.Newf(apperr.ValidationFailed, "the body must be a JSON object", "请求体须为 JSON 对象")
		}
		return walkObject(dec, t, "")
	}
	return walkValue(dec, t, "")
}

// walkValue reads one value of type t (nil: any) from dec.
func walkValue(dec *json.Decoder, t reflect.Type, path string) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && opaque(t) {
		t = nil // its own decoding rules: only duplicates are checked
	}
	tok, err := dec.Token()
	if err != nil {
		return errSyntax
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	switch d {
	case '{':
		return walkObject(dec, t, path)
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := walkValue(dec, elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		if _, err := dec.Token(); err != nil {
			return errSyntax
		}
	}
	return nil
}

// walkObject reads the members of an object whose '{' was read.
func walkObject(dec *json.Decoder, t reflect.Type, path string) error {
	var fields map[string]reflect.Type
	if t != nil && t.Kind() == reflect.Struct {
		fields = jsonFields(t)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return errSyntax
		}
		key, ok := tok.(string)
		if !ok {
			return errSyntax
		}
		name := key
		if path != "" {
			name = path + "." + key
		}
		if seen[key] {
			e := apperr.Newf(apperr.ValidationFailed, fmt.Sprintf("field %q is given twice", name), fmt.Sprintf("字段 %q 重复出现", name))
			e.Field = name
			return e
		}
		seen[key] = true
		var ft reflect.Type
		switch {
		case fields != nil:
			var ok bool
			if ft, ok = fields[key]; !ok {
				for f := range fields {
					if strings.EqualFold(f, key) {
						e := apperr.Newf(apperr.ValidationFailed, fmt.Sprintf("unknown field %q (field names are case-sensitive: %q)", name, f),
							fmt.Sprintf("未知字段 %q（字段名区分大小写，应为 %q）", name, f))
						e.Field = name
						return e
					}
				}
			}
		case t != nil && t.Kind() == reflect.Map:
			ft = t.Elem()
		}
		if err := walkValue(dec, ft, name); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return errSyntax
	}
	return nil
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
