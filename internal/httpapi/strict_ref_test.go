package httpapi

// The walk over json.Decoder tokens that walkBody replaced, kept as the
// reference FuzzStrictMatchesReference compares it with.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"github.com/yikatong/yikatong/internal/apperr"
)

func refWalkBody(data []byte, v any) error {
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
		return refWalkObject(dec, t, "")
	}
	return refWalkValue(dec, t, "")
}

// walkValue reads one value of type t (nil: any) from dec.
func refWalkValue(dec *json.Decoder, t reflect.Type, path string) error {
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
		return refWalkObject(dec, t, path)
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; dec.More(); i++ {
			if err := refWalkValue(dec, elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
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
func refWalkObject(dec *json.Decoder, t reflect.Type, path string) error {
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
						return caseVariantErr(name, f)
					}
				}
			}
		case t != nil && t.Kind() == reflect.Map:
			ft = t.Elem()
		}
		if err := refWalkValue(dec, ft, name); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return errSyntax
	}
	return nil
}
