package node_test

import (
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/idnum"
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

// openAPIRequest is what the document says of one operation's request.
type openAPIRequest struct {
	Body struct {
		Required bool `json:"required"`
		Content  map[string]struct {
			Schema struct {
				Ref string `json:"$ref"`
			} `json:"schema"`
		} `json:"content"`
	} `json:"requestBody"`
	Roles []string `json:"x-roles"`
}

type openAPIDoc struct {
	Paths      map[string]map[string]json.RawMessage `json:"paths"`
	Components struct {
		Schemas map[string]struct {
			Required []string `json:"required"`
		} `json:"schemas"`
	} `json:"components"`
}

// op returns the document's operation method path (nil if there is none).
func (d openAPIDoc) op(t *testing.T, method, path string) *openAPIRequest {
	t.Helper()
	raw, ok := d.Paths[path][strings.ToLower(method)]
	if !ok {
		return nil
	}
	var op openAPIRequest
	if err := json.Unmarshal(raw, &op); err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return &op
}

// requiredFields returns the required members of op's JSON request schema.
func (d openAPIDoc) requiredFields(op *openAPIRequest) []string {
	ref := op.Body.Content["application/json"].Schema.Ref
	return d.Components.Schemas[strings.TrimPrefix(ref, "#/components/schemas/")].Required
}

// emptyBodyRefused: the answer says the body was needed.
func emptyBodyRefused(r nodetest.Response) bool {
	d, _ := r.Problem()["detail"].(string)
	return r.Status == http.StatusUnprocessableEntity &&
		(strings.Contains(d, "the request body is empty") || strings.Contains(d, "must be a JSON object"))
}

// TestOpenAPIOptionalBodies: a request body the program does without is
// not required in the document, nor are the fields it defaults. The three
// routes that take an optional body are really called with none; then
// every JSON-body operation is called with an empty body, as a caller of
// one of its roles: one the document calls optional must act on it, one
// it calls required must not.
func TestOpenAPIOptionalBodies(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	var doc openAPIDoc
	tn.Client("").JSON(t, "GET", "/v1/openapi.json", nil, 200, &doc)
	op := tn.Client(tn.Demo.Staff["operator"].Token)
	hr := tn.Client(tn.Demo.Staff["hr_admin"].Token)
	fin := tn.Client(tn.Demo.Staff["finance"].Token)

	// POST /v1/keys/rotate with no body rotates at once.
	var rot struct {
		Kid        string    `json:"kid"`
		ActiveFrom time.Time `json:"active_from"`
	}
	op.JSON(t, "POST", "/v1/keys/rotate", nil, 200, &rot)
	if rot.Kid == "" {
		t.Errorf("rotate with no body: no kid")
	}
	// POST /v1/residents/{id}/cards with no body issues a card (no PIN yet).
	num := idnum.Generate(rand.New(rand.NewPCG(7, 8)), idnum.KindCitizen, "410105", time.Now().AddDate(-40, 0, -3), "F")
	var enrolled struct {
		Resident struct {
			ID string `json:"id"`
		} `json:"resident"`
	}
	hr.JSON(t, "POST", "/v1/residents", map[string]any{"name": "孙女士", "id_number": num, "category": "local", "issue_card": false}, 201, &enrolled)
	var card struct {
		Number string `json:"card_number"`
	}
	hr.JSON(t, "POST", "/v1/residents/"+enrolled.Resident.ID+"/cards", nil, 201, &card)
	if card.Number == "" {
		t.Errorf("issue a card with no body: no card number")
	}
	// POST /v1/clearing/settle with no body reads it as "yesterday"; this
	// node is in no region, so it answers that (not that a body is due).
	if r := fin.Do(t, "POST", "/v1/clearing/settle", nil); r.Status != 409 || !strings.Contains(r.Problem()["detail"].(string), "not in a region") {
		t.Errorf("settle with no body: %d %s", r.Status, r.Body)
	}
	for _, c := range []struct {
		path  string
		field string
	}{{"/v1/keys/rotate", "announce_seconds"}, {"/v1/residents/{id}/cards", "new_pin"}, {"/v1/clearing/settle", "day"}} {
		o := doc.op(t, "POST", c.path)
		if o == nil {
			t.Errorf("POST %s is not documented", c.path)
			continue
		}
		if o.Body.Required {
			t.Errorf("POST %s: the document requires a body the program does without", c.path)
		}
		if req := doc.requiredFields(o); slices.Contains(req, c.field) {
			t.Errorf("POST %s: the document requires %q (required: %v)", c.path, c.field, req)
		}
	}

	// Every operation with a JSON body, called with an empty body.
	tokens := map[string]string{}
	for _, role := range []string{"hr_admin", "finance", "operator"} {
		tokens[role] = tn.Demo.Staff[role].Token
	}
	if len(tn.Demo.Terminals) > 0 {
		tokens["terminal"] = tn.Demo.Terminals[0].Token
	}
	res := tn.Demo.Residents[0]
	var rtok struct {
		Token string `json:"token"`
	}
	tn.Client("").JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": res.CardNumber, "pin": res.PIN}, 200, &rtok)
	tokens["resident"] = rtok.Token
	param := regexp.MustCompile(`\{[^}]+\}`)
	checked := 0
	for path, ops := range doc.Paths {
		for method := range ops {
			o := doc.op(t, method, path)
			if _, ok := o.Body.Content["application/json"]; !ok {
				continue
			}
			token, ok := "", len(o.Roles) == 0
			for _, role := range o.Roles {
				if tokens[role] != "" {
					token, ok = tokens[role], true
					break
				}
			}
			if !ok {
				continue // no caller of its roles here (provider staff)
			}
			r := tn.Client(token).Do(t, strings.ToUpper(method), param.ReplaceAllString(path, "x"), nil)
			switch {
			case !o.Body.Required && emptyBodyRefused(r):
				t.Errorf("%s %s: the document says the body is optional, the program wants one: %d %s", method, path, r.Status, r.Body)
			case o.Body.Required && r.Status/100 == 2:
				t.Errorf("%s %s: the document requires a body, the program acted without one: %d %s", method, path, r.Status, r.Body)
			}
			checked++
		}
	}
	if checked < 10 {
		t.Errorf("only %d operations with a JSON body called", checked)
	}
}
