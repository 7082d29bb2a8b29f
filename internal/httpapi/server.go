// Package httpapi is the node's REST API under /v1 (CONTRACT.md): JSON over
// HTTP, bearer tokens, errors as application/problem+json with a stable code
// and English + Chinese text, Prometheus metrics, structured request logs.
//
// Every route is declared once in routes.go with the roles that may call it;
// the OpenAPI 3.1 document (openapi.json, embedded) is checked against that
// table by a test, so the document cannot drift from the routes.
package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/store"
)

// MaxBody is the default cap on request bodies; uploads declare their own.
const MaxBody = 1 << 20

// Handler handles an authenticated (or public) request. A returned error is
// written as problem+json.
type Handler func(w http.ResponseWriter, r *http.Request, p auth.Principal) error

// Route is one API route.
type Route struct {
	Pattern string // "POST /v1/ecodes"
	// Roles that may call it; empty means public (no token needed).
	Roles   []auth.Role
	Handle  Handler
	MaxBody int64
	// For the OpenAPI document:
	Summary string
	Tag     string
	// Request is a value of the request body type (nil: no JSON body).
	// In the document a field of it is required unless its json tag says
	// omitempty or omitzero (a pointer alone does not make it optional: a
	// pointer is how a handler tells a field left out from its zero value,
	// mostly to require it), so tag every field a handler can do without
	// omitempty; the same rule holds for response types.
	Request any
	// RequestOptional: the body may be left out (no body, a blank one or
	// {}; the handler reads it with DecodeOptionalJSON), and the document
	// marks the request body not required.
	RequestOptional bool
	Response        any // a value of the 2xx response body type
	// RequestType overrides the request media type (e.g. "text/csv").
	RequestType string
	// Status is the success status the handler answers, for the OpenAPI
	// document. 0: 201 for a POST whose summary begins "Create" and that
	// has a Response, 204 for a route other than GET without a Response,
	// else 200. Set it where that rule does not hold.
	Status int
}

// Authenticator resolves bearer tokens.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (auth.Principal, error)
}

// Server is the HTTP API.
type Server struct {
	mux      *http.ServeMux
	routes   []Route
	log      *slog.Logger
	authn    Authenticator
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	// Ready reports whether the node can serve (for /healthz).
	Ready func(ctx context.Context) error
}

// NewServer returns an API server with the framework routes (/healthz,
// /metrics, /v1/openapi.json). Add domain routes with Handle.
func NewServer(log *slog.Logger, authn Authenticator, reg *prometheus.Registry) *Server {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	s := &Server{mux: http.NewServeMux(), log: log, authn: authn, reg: reg}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "yikatong_http_requests_total", Help: "HTTP requests by route and status."}, []string{"route", "status"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "yikatong_http_request_duration_seconds", Help: "HTTP request latency by route.", Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}}, []string{"route"})
	reg.MustRegister(s.requests, s.latency)
	// The caller may have registered these already.
	_ = reg.Register(collectors.NewGoCollector())
	_ = reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	s.Handle(Route{Pattern: "GET /v1/openapi.json", Handle: s.serveOpenAPI, Summary: "This OpenAPI 3.1 document", Tag: "meta"})
	s.mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		if allow := s.allowed(r.URL.Path); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			WriteError(w, r, apperr.Newf(apperr.MethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path+"; allowed: "+strings.Join(allow, ", "),
				r.URL.Path+" 不支持 "+r.Method+" 方法，可用："+strings.Join(allow, ", ")))
			return
		}
		WriteError(w, r, apperr.Newf(apperr.NotFound, "no such endpoint: "+r.Method+" "+r.URL.Path, "接口不存在："+r.Method+" "+r.URL.Path))
	})
	return s
}

// allowed lists the methods of the routes whose path matches path (the
// route exists, with other methods).
func (s *Server) allowed(path string) []string {
	var out []string
	for _, rt := range s.routes {
		method, pattern, ok := strings.Cut(rt.Pattern, " ")
		if ok && pathMatches(pattern, path) && !slices.Contains(out, method) {
			out = append(out, method)
		}
	}
	slices.Sort(out)
	return out
}

// pathMatches reports whether a ServeMux path pattern ("/v1/cards/{number}")
// matches path.
func pathMatches(pattern, path string) bool {
	ps, xs := strings.Split(pattern, "/"), strings.Split(path, "/")
	for i, p := range ps {
		if strings.HasPrefix(p, "{") && strings.HasSuffix(p, "...}") {
			return i < len(xs)
		}
		if i >= len(xs) {
			return false
		}
		if strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}") {
			if xs[i] == "" {
				return false
			}
			continue
		}
		if p != xs[i] {
			return false
		}
	}
	return len(ps) == len(xs)
}

// Registry returns the Prometheus registry the server exports.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Routes returns the registered API routes.
func (s *Server) Routes() []Route { return s.routes }

// Mux gives access to the underlying mux for non-API handlers (web pages).
func (s *Server) Mux() *http.ServeMux { return s.mux }

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if s.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.Ready(ctx); err != nil {
			WriteError(w, r, apperr.Wrap(apperr.Unavailable, err))
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"status":"ok"}` + "\n"))
}

// Handle registers a route.
func (s *Server) Handle(rt Route) {
	s.routes = append(s.routes, rt)
	route := rt.Pattern
	maxBody := rt.MaxBody
	if maxBody == 0 {
		maxBody = MaxBody
	}
	method, _, _ := strings.Cut(rt.Pattern, " ")
	takesNoBody := rt.Request == nil && rt.RequestType == "" && method != http.MethodGet && method != http.MethodHead
	s.mux.HandleFunc(rt.Pattern, func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		var p auth.Principal
		if len(rt.Roles) > 0 {
			var err error
			p, err = s.principal(r)
			if err != nil {
				WriteError(w, r, err)
				return
			}
			if !p.Has(rt.Roles...) {
				WriteError(w, r, apperr.Newf(apperr.Forbidden, "your role ("+string(p.Role)+") may not call "+route, "您的角色（"+string(p.Role)+"）无权调用此接口"))
				return
			}
		} else if h := r.Header.Get("Authorization"); h != "" {
			// Public routes still learn who calls, if a valid token is sent.
			p, _ = s.principal(r)
		}
		setPrincipal(r, p)
		if takesNoBody {
			// An action without a body (cancel a card, rotate keys): a body
			// sent anyway says the caller expects it to count (a reason, a
			// choice); refuse it rather than act without it. "{}" is none.
			if b, err := io.ReadAll(io.LimitReader(r.Body, 4<<10)); err != nil || len(bytes.TrimSpace(b)) > 0 && string(bytes.TrimSpace(b)) != "{}" {
				WriteError(w, r, apperr.Newf(apperr.ValidationFailed, route+" takes no request body; send none (or {})", "此接口不接受请求体，请不要发送（或发送 {}）"))
				return
			}
		}
		if err := rt.Handle(w, r, p); err != nil {
			WriteError(w, r, err)
		}
	})
}

func (s *Server) principal(r *http.Request) (auth.Principal, error) {
	token := BearerToken(r)
	if token == "" {
		return auth.Principal{}, apperr.Newf(apperr.Unauthorized, "missing bearer token", "缺少访问令牌")
	}
	if s.authn == nil {
		return auth.Principal{}, apperr.New(apperr.Unauthorized)
	}
	return s.authn.Authenticate(r.Context(), token)
}

// BearerToken returns the request's bearer token, or "" if it has none.
func BearerToken(r *http.Request) string {
	// The scheme's case does not matter (RFC 9110, 11.1): "bearer" too.
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(token)
}

// ServeHTTP adds logging, metrics and panic recovery around the mux.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, status: 200}
	info := &reqInfo{}
	r = r.WithContext(context.WithValue(r.Context(), reqInfoKey{}, info))
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("panic", "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if !rec.wrote {
				WriteError(rec, r, apperr.New(apperr.Internal))
			}
		}
		_, pattern := s.mux.Handler(r)
		if pattern == "" {
			pattern = "unmatched"
		}
		d := time.Since(start)
		s.requests.WithLabelValues(pattern, fmt.Sprint(rec.status)).Inc()
		s.latency.WithLabelValues(pattern).Observe(d.Seconds())
		level := slog.LevelInfo
		if rec.status >= 500 {
			level = slog.LevelError
		}
		attrs := []any{"method", r.Method, "route", pattern, "status", rec.status, "ms", float64(d.Microseconds()) / 1000}
		if info.p.Role != "" {
			attrs = append(attrs, "who", info.p.LogString())
		}
		if info.code != "" {
			attrs = append(attrs, "code", info.code)
		}
		if info.cause != nil && rec.status >= 500 {
			attrs = append(attrs, "cause", info.cause.Error())
		}
		if s.log.Enabled(r.Context(), level) && (r.URL.Path != "/healthz" && r.URL.Path != "/metrics" || rec.status >= 400) {
			s.log.Log(r.Context(), level, "request", attrs...)
		}
	}()
	s.mux.ServeHTTP(rec, r)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

type reqInfoKey struct{}

type reqInfo struct {
	p     auth.Principal
	code  apperr.Code
	cause error
}

func setPrincipal(r *http.Request, p auth.Principal) {
	if info, ok := r.Context().Value(reqInfoKey{}).(*reqInfo); ok {
		info.p = p
	}
}

// WriteError writes err as problem+json. Internal errors are logged with
// their cause by the access log; clients see only the catalogue text.
func WriteError(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		err = apperr.Newf(apperr.BodyTooLarge, fmt.Sprintf("the request body is larger than %d bytes", mbe.Limit), fmt.Sprintf("请求体超过 %d 字节", mbe.Limit))
	}
	e := apperr.As(err)
	if e.Code == apperr.Internal && store.IsRetryable(e.Unwrap()) {
		// A lost database connection, a restarting server or a statement
		// timeout is transient: tell the client to retry (same idempotency
		// key), not that the node is broken.
		e = apperr.Wrap(apperr.Unavailable, e.Unwrap())
	}
	if info, ok := r.Context().Value(reqInfoKey{}).(*reqInfo); ok {
		info.code = e.Code
		info.cause = e.Unwrap()
	}
	prob := apperr.ToProblem(e)
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("Cache-Control", "no-store")
	if prob.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="yikatong"`)
	}
	if e.Code == apperr.Unavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.WriteHeader(prob.Status)
	json.NewEncoder(w).Encode(prob)
}

// WriteJSON writes v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}

// DecodeJSON reads exactly one JSON object into v, refusing unknown fields,
// trailing data, wrong types and oversized bodies with precise errors.
func DecodeJSON(r *http.Request, v any) error {
	data, err := readBody(r)
	if err != nil {
		return err
	}
	return decodeStrict(data, v)
}

// DecodeOptionalJSON is DecodeJSON for a request whose body may be left
// out: an empty or blank body leaves v as it is (its defaults). Its route
// says so with Route.RequestOptional, for the OpenAPI document.
func DecodeOptionalJSON(r *http.Request, v any) error {
	data, err := readBody(r)
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		return err
	}
	return decodeStrict(data, v)
}

// readBody reads a JSON request's body.
func readBody(r *http.Request) ([]byte, error) {
	// The content type is not checked: curl's default form type with a JSON
	// body is common at a counter's command line; the body must be JSON.
	if ct := r.Header.Get("Content-Type"); strings.HasPrefix(ct, "multipart/") {
		return nil, apperr.Newf(apperr.ValidationFailed, "send the body as application/json", "请求体须为 application/json")
	}
	data, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, jsonError(err)
	}
	return data, nil
}

// decodeStrict decodes exactly one JSON object from data into v (DecodeJSON).
func decodeStrict(data []byte, v any) error {
	if err := checkStrict(data, v); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return apperr.Newf(apperr.ValidationFailed, "the body must hold exactly one JSON object", "请求体只能包含一个 JSON 对象")
	}
	return nil
}

func jsonError(err error) error {
	var mbe *http.MaxBytesError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe):
		return err
	case errors.Is(err, io.EOF):
		return apperr.Newf(apperr.ValidationFailed, "the request body is empty", "请求体为空")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return apperr.Newf(apperr.ValidationFailed, "the JSON body is truncated", "JSON 请求体不完整")
	case errors.As(err, &se):
		return apperr.Newf(apperr.ValidationFailed, fmt.Sprintf("the body is not valid JSON (at byte %d)", se.Offset), fmt.Sprintf("请求体不是有效的 JSON（第 %d 字节）", se.Offset))
	case errors.As(err, &te):
		en, zh := jsonKind(te.Type)
		e := apperr.Newf(apperr.ValidationFailed, fmt.Sprintf("field %q must be %s", te.Field, en), fmt.Sprintf("字段 %q 类型应为%s", te.Field, zh))
		e.Field = te.Field
		return e
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		e := apperr.Newf(apperr.ValidationFailed, fmt.Sprintf("unknown field %q", name), fmt.Sprintf("未知字段 %q", name))
		e.Field = name
		return e
	}
	return apperr.Newf(apperr.ValidationFailed, "the body is not valid JSON", "请求体不是有效的 JSON")
}

// jsonKind names what a JSON value of Go type t must look like (never the
// Go type's own name).
func jsonKind(t reflect.Type) (en, zh string) {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return "another type", "其他类型"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string", "字符串"
	case reflect.Bool:
		return "true or false", " true 或 false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number", "整数"
	case reflect.Float32, reflect.Float64:
		return "a number", "数字"
	case reflect.Slice, reflect.Array:
		return "a list", "列表（数组）"
	case reflect.Struct, reflect.Map:
		return "an object", "对象"
	}
	return "another type", "其他类型"
}

// Required returns a validation error naming the first empty field, or nil.
// Pass pairs of name, value.
func Required(pairs ...string) error {
	for i := 0; i+1 < len(pairs); i += 2 {
		if strings.TrimSpace(pairs[i+1]) == "" {
			e := apperr.Newf(apperr.ValidationFailed, fmt.Sprintf("field %q is required", pairs[i]), fmt.Sprintf("缺少必填字段 %q", pairs[i]))
			e.Field = pairs[i]
			return e
		}
	}
	return nil
}
