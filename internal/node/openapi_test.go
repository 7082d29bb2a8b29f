package node_test

import (
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestOpenAPIMatchesLiveRoutes walks the served OpenAPI document against the
// live server: every documented operation exists (it does not answer "no
// such endpoint" or 405), secured ones refuse a call without a token, and
// every registered /v1 route is documented.
func TestOpenAPIMatchesLiveRoutes(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{})
	c := tn.Client("")
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	c.JSON(t, "GET", "/v1/openapi.json", nil, 200, &doc)
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	param := regexp.MustCompile(`\{[^}]+\}`)
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method, raw := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
			var op struct {
				Summary  string           `json:"summary"`
				Security []map[string]any `json:"security"`
				Roles    []string         `json:"x-roles"`
			}
			json.Unmarshal(raw, &op)
			if op.Summary == "" {
				t.Errorf("%s %s has no summary", method, path)
			}
			concrete := param.ReplaceAllString(path, "x")
			r := c.Do(t, strings.ToUpper(method), concrete, nil)
			if r.Status == http.StatusMethodNotAllowed || (r.Status == 404 && strings.Contains(r.Code(), "not_found") && strings.Contains(string(r.Body), "no such endpoint")) {
				t.Errorf("%s %s documented but not served: %d %s", method, path, r.Status, r.Body)
			}
			if len(op.Security) > 0 && r.Status != http.StatusUnauthorized {
				t.Errorf("%s %s is secured but answered %d without a token", method, path, r.Status)
			}
			if len(op.Security) > 0 && len(op.Roles) == 0 {
				t.Errorf("%s %s is secured but names no roles", method, path)
			}
		}
	}
	for _, rt := range tn.API.Routes() {
		method, path, _ := strings.Cut(rt.Pattern, " ")
		if strings.HasPrefix(path, "/v1/") && !documented[method+" "+path] {
			t.Errorf("route %s is not in the OpenAPI document", rt.Pattern)
		}
	}
	if len(documented) < 2 {
		t.Fatalf("only %d operations documented", len(documented))
	}
}

func TestUnknownEndpointAndBadJSON(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	c := tn.Client("")
	r := c.Do(t, "GET", "/v1/nope", nil)
	if r.Status != 404 || r.Code() != "not_found" || r.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("unknown endpoint: %d %s %s", r.Status, r.Header.Get("Content-Type"), r.Body)
	}
	if p := r.Problem(); p["detail_zh"] == "" || p["detail"] == "" {
		t.Fatalf("problem lacks bilingual text: %s", r.Body)
	}
	// A route that exists, with another method: 405 and the methods it has.
	for path, allow := range map[string]string{"/v1/topups": "POST", "/v1/cards/4101999999999991": "GET", "/v1/scenarios/transit.bus": "GET, PUT"} {
		r := c.Do(t, "DELETE", path, nil)
		if r.Status != 405 || r.Code() != "method_not_allowed" || r.Header.Get("Allow") != allow {
			t.Errorf("DELETE %s: %d %q %s", path, r.Status, r.Header.Get("Allow"), r.Body)
		}
	}
	if r := c.Do(t, "DELETE", "/v1/cards/1/2/3", nil); r.Status != 404 {
		t.Errorf("a path no route has: %d %s", r.Status, r.Body)
	}
	// An action that takes no body refuses one (after authentication),
	// and acts on none or {}.
	if r := c.Do(t, "POST", "/v1/keys/rotate", `{"reason":"x"}`); r.Status != 401 {
		t.Errorf("no token, with a body: %d %s", r.Status, r.Body)
	}
	op := tn.Client(tn.Demo.Staff["operator"].Token)
	if r := op.Do(t, "POST", "/v1/keys/rotate", `{"reason":`); r.Status != 422 || r.Code() != "validation_failed" {
		t.Errorf("a body where none is taken: %d %s", r.Status, r.Body)
	}
	for _, body := range []any{nil, "{}", " "} {
		if r := op.Do(t, "POST", "/v1/keys/rotate", body); r.Status/100 != 2 {
			t.Errorf("rotate with body %q: %d %s", body, r.Status, r.Body)
		}
	}
	cases := map[string]string{
		"":                                   "validation_failed",
		"{":                                  "validation_failed",
		`{"user":"a","password":"b","x":1}`:  "validation_failed",
		`{"user":1,"password":"b"}`:          "validation_failed",
		`{"user":"a"}`:                       "validation_failed",
		`{"user":"a","password":"b"} {}`:     "validation_failed",
		`{"user":"a","password":"bbbbbbbb"}`: "unauthorized",
	}
	for body, want := range cases {
		r := c.Do(t, "POST", "/v1/auth/staff", body)
		if r.Code() != want {
			t.Errorf("body %q: got %d %s, want %s", body, r.Status, r.Body, want)
		}
	}
	big := `{"user":"` + strings.Repeat("a", 2<<20) + `","password":"x"}`
	if r := c.Do(t, "POST", "/v1/auth/staff", big); r.Status != 413 || r.Code() != "body_too_large" {
		t.Errorf("oversized body: %d %s", r.Status, r.Body)
	}
	if r := c.Do(t, "GET", "/healthz", nil); r.Status != 200 {
		t.Errorf("healthz %d", r.Status)
	}
	if r := c.Do(t, "GET", "/metrics", nil); r.Status != 200 || !strings.Contains(string(r.Body), "yikatong_http_requests_total") {
		t.Errorf("metrics %d", r.Status)
	}
}
