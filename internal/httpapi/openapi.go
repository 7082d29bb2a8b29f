package httpapi

import (
	"net/http"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
)

// The OpenAPI document is built from the route table itself (pattern, roles,
// request and response types), so it lists exactly the routes the server
// serves; openapi_test.go walks the document against a live server.

var pathParam = regexp.MustCompile(`\{([a-zA-Z_]+)(\.\.\.)?\}`)

func (s *Server) serveOpenAPI(w http.ResponseWriter, r *http.Request, _ auth.Principal) error {
	return WriteJSON(w, http.StatusOK, s.OpenAPI())
}

// OpenAPI returns the OpenAPI 3.1 document of every /v1 route.
func (s *Server) OpenAPI() map[string]any {
	paths := map[string]any{}
	schemas := map[string]any{}
	// Every error answer is an apperr.Problem; its code is one of the
	// catalogue's.
	problemRef := schemaRef(reflect.TypeOf(apperr.Problem{}), schemas)
	codes := apperr.Codes()
	sort.Slice(codes, func(i, j int) bool { return codes[i] < codes[j] })
	if p, ok := schemas[strings.TrimPrefix(problemRef["$ref"].(string), "#/components/schemas/")].(map[string]any); ok {
		props := p["properties"].(map[string]any)
		props["code"] = map[string]any{"type": "string", "enum": codes}
	}
	for _, rt := range s.routes {
		method, path, _ := strings.Cut(rt.Pattern, " ")
		if !strings.HasPrefix(path, "/v1/") {
			continue
		}
		op := map[string]any{
			"summary":     rt.Summary,
			"operationId": operationID(method, path),
		}
		if rt.Tag != "" {
			op["tags"] = []string{rt.Tag}
		}
		var params []any
		for _, m := range pathParam.FindAllStringSubmatch(path, -1) {
			params = append(params, map[string]any{"name": m[1], "in": "path", "required": true, "schema": map[string]any{"type": "string"}})
		}
		if params != nil {
			op["parameters"] = params
		}
		if len(rt.Roles) > 0 {
			roles := make([]string, len(rt.Roles))
			for i, r := range rt.Roles {
				roles[i] = string(r)
			}
			op["security"] = []any{map[string]any{"bearer": []string{}}}
			op["x-roles"] = roles
		}
		if rt.RequestType != "" {
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{rt.RequestType: map[string]any{"schema": map[string]any{"type": "string"}}}}
		} else if rt.Request != nil {
			body := map[string]any{"required": !rt.RequestOptional, "content": map[string]any{"application/json": map[string]any{"schema": schemaRef(reflect.TypeOf(rt.Request), schemas)}}}
			if rt.RequestOptional {
				body["description"] = "Optional: no body, an empty one or {} leaves every field at its default."
			}
			op["requestBody"] = body
		}
		code := SuccessStatus(rt)
		okResp := map[string]any{"description": http.StatusText(code)}
		if rt.Response != nil {
			okResp["content"] = map[string]any{"application/json": map[string]any{"schema": schemaRef(reflect.TypeOf(rt.Response), schemas)}}
		}
		status := strconv.Itoa(code)
		op["responses"] = map[string]any{
			status:    okResp,
			"default": map[string]any{"description": "Error", "content": map[string]any{"application/problem+json": map[string]any{"schema": problemRef}}},
		}
		item, _ := paths[path].(map[string]any)
		if item == nil {
			item = map[string]any{}
			paths[path] = item
		}
		item[strings.ToLower(method)] = op
	}
	return map[string]any{
		"openapi": "3.1.0",
		"info": map[string]any{
			"title":       "yikatong city node API (一卡通城市节点接口)",
			"version":     "1",
			"description": "Resident-service one-card and one-code platform. Errors are application/problem+json with a stable `code` and Chinese `detail_zh`.",
		},
		"paths": paths,
		"components": map[string]any{
			"schemas":         schemas,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}},
		},
	}
}

// SuccessStatus is the status the OpenAPI document gives rt's success
// answer (Route.Status).
func SuccessStatus(rt Route) int {
	method, _, _ := strings.Cut(rt.Pattern, " ")
	switch {
	case rt.Status != 0:
		return rt.Status
	case method == http.MethodPost && rt.Response != nil && strings.HasPrefix(rt.Summary, "Create"):
		return http.StatusCreated
	case method != http.MethodGet && method != http.MethodHead && rt.Response == nil:
		return http.StatusNoContent
	}
	return http.StatusOK
}

func operationID(method, path string) string {
	p := strings.TrimPrefix(path, "/v1/")
	p = pathParam.ReplaceAllString(p, "by_$1")
	p = strings.NewReplacer("/", "_", "-", "_", ".", "_").Replace(p)
	return strings.ToLower(method) + "_" + p
}

var timeType = reflect.TypeOf(time.Time{})

func schemaRef(t reflect.Type, schemas map[string]any) map[string]any {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == timeType {
		return map[string]any{"type": "string", "format": "date-time"}
	}
	switch t.Kind() {
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "contentEncoding": "base64"}
		}
		return map[string]any{"type": "array", "items": schemaRef(t.Elem(), schemas)}
	case reflect.Map:
		return map[string]any{"type": "object", "additionalProperties": schemaRef(t.Elem(), schemas)}
	case reflect.Interface:
		return map[string]any{}
	case reflect.Struct:
		name := t.Name()
		if name == "" {
			return structSchema(t, schemas)
		}
		if pkg := t.PkgPath(); pkg != "" && !strings.HasSuffix(pkg, "/httpapi") {
			name = pkg[strings.LastIndex(pkg, "/")+1:] + "." + name
			name = strings.ToUpper(name[:1]) + strings.ReplaceAll(name[1:], ".", "")
		}
		if _, ok := schemas[name]; !ok {
			schemas[name] = map[string]any{} // break cycles
			schemas[name] = structSchema(t, schemas)
		}
		return map[string]any{"$ref": "#/components/schemas/" + name}
	}
	return map[string]any{}
}

// structSchema is the schema of struct type t. A field is required unless
// its json tag says omitempty or omitzero (Route.Request).
func structSchema(t reflect.Type, schemas map[string]any) map[string]any {
	props := map[string]any{}
	var required []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			if sub, ok := structSchema(f.Type, schemas)["properties"].(map[string]any); ok {
				for k, v := range sub {
					props[k] = v
				}
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		sch := schemaRef(f.Type, schemas)
		if d := f.Tag.Get("doc"); d != "" {
			sch = map[string]any{"allOf": []any{sch}, "description": d}
		}
		props[name] = sch
		if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
			required = append(required, name)
		}
	}
	out := map[string]any{"type": "object", "properties": props}
	if len(required) > 0 {
		sort.Strings(required)
		out["required"] = required
	}
	return out
}
