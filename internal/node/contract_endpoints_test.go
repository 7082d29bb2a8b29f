package node_test

// Contract tests: every command output, file and HTTP endpoint that
// /work/shared/CONTRACT.md names, checked over real HTTP (and the real
// binary) for exactly the contract's member names, JSON types, status codes
// and error bodies. Where the node and CONTRACT.md disagree, the contract
// wins: a failure here is a defect of the node, not of the test.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/trust"
)

// ctShape describes the members of a JSON object: name → kind, one of
// "string", "int" (an integral number), "number", "bool", "object",
// "array", "time" (an RFC 3339 string). A leading "?" marks an optional
// member. With exact set, no other member may appear.
type ctShape map[string]string

// ctCheck checks m against shape; what names the object in messages.
func ctCheck(t *testing.T, what string, m map[string]any, shape ctShape, exact bool) {
	t.Helper()
	if m == nil {
		t.Errorf("%s: not a JSON object", what)
		return
	}
	for name, kind := range shape {
		opt := strings.HasPrefix(kind, "?")
		kind = strings.TrimPrefix(kind, "?")
		v, ok := m[name]
		if !ok {
			if !opt {
				t.Errorf("%s: member %q missing in %v", what, name, m)
			}
			continue
		}
		if !ctKind(v, kind) {
			t.Errorf("%s: member %q = %#v is not %s", what, name, v, kind)
		}
	}
	if exact {
		for name := range m {
			if _, ok := shape[name]; !ok {
				t.Errorf("%s: unexpected member %q", what, name)
			}
		}
	}
}

func ctKind(v any, kind string) bool {
	switch kind {
	case "string":
		_, ok := v.(string)
		return ok
	case "time":
		s, ok := v.(string)
		if !ok {
			return false
		}
		_, err := time.Parse(time.RFC3339, s)
		return err == nil
	case "number":
		_, ok := v.(float64)
		return ok
	case "int":
		f, ok := v.(float64)
		return ok && f == math.Trunc(f)
	case "bool":
		_, ok := v.(bool)
		return ok
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	}
	panic("unknown kind " + kind)
}

// ctObject decodes a response body as one JSON object.
func ctObject(t *testing.T, what string, r nodetest.Response) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Fatalf("%s: body is not a JSON object: %v: %s", what, err, r.Body)
	}
	return m
}

// ctOK requires status want and an application/json object body.
func ctOK(t *testing.T, what string, r nodetest.Response, want int) map[string]any {
	t.Helper()
	if r.Status != want {
		t.Fatalf("%s: status %d, want %d: %s", what, r.Status, want, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	return ctObject(t, what, r)
}

func hasHan(s string) bool {
	for _, r := range s {
		if unicode.Is(unicode.Han, r) {
			return true
		}
	}
	return false
}

// ctProblem requires an application/problem+json error with status and
// code, and the members the contract names: status, title, detail, code,
// detail_zh (Chinese text).
func ctProblem(t *testing.T, what string, r nodetest.Response, status int, code string) map[string]any {
	t.Helper()
	if r.Status != status {
		t.Errorf("%s: status %d, want %d (%s): %s", what, r.Status, status, code, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("%s: Content-Type %q, want application/problem+json", what, ct)
	}
	var m map[string]any
	if err := json.Unmarshal(r.Body, &m); err != nil {
		t.Errorf("%s: problem body is not JSON: %v: %s", what, err, r.Body)
		return nil
	}
	ctCheck(t, what+" problem", m, ctShape{"status": "int", "title": "string", "detail": "string", "code": "string", "detail_zh": "string",
		"type": "?string", "field": "?string", "retryable": "?bool"}, true)
	if s, _ := m["status"].(float64); int(s) != r.Status {
		t.Errorf("%s: problem status %v, HTTP status %d", what, m["status"], r.Status)
	}
	if m["code"] != code {
		t.Errorf("%s: code %v, want %s: %s", what, m["code"], code, r.Body)
	}
	for _, k := range []string{"title", "detail"} {
		if s, _ := m[k].(string); strings.TrimSpace(s) == "" {
			t.Errorf("%s: empty %s", what, k)
		}
	}
	if s, _ := m["detail_zh"].(string); !hasHan(s) {
		t.Errorf("%s: detail_zh %q is not Chinese", what, s)
	}
	if status == http.StatusUnauthorized && !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("%s: 401 without a Bearer challenge", what)
	}
	return m
}

// ctRaw sends body as is (JSON content type) with token.
func ctRaw(t *testing.T, base, token, method, path, body string) nodetest.Response {
	t.Helper()
	return nodetest.NewClient(base, token).Do(t, method, path, body)
}

// ctDemoResident returns the first listed demo resident of category.
func ctDemoResident(t *testing.T, d *node.DemoFile, category string) node.DemoResident {
	t.Helper()
	for _, r := range d.Residents {
		if r.Category == category {
			return r
		}
	}
	t.Fatalf("demo.json has no %s resident", category)
	return node.DemoResident{}
}

// ctDemoFile checks demo.json as written on disk against the contract.
func ctDemoFile(t *testing.T, path, baseURL string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("demo.json is not a JSON object: %v", err)
	}
	ctCheck(t, "demo.json", m, ctShape{"base_url": "string", "city": "string", "staff": "object", "residents": "array", "terminals": "array"}, false)
	if baseURL != "" && m["base_url"] != baseURL {
		t.Errorf("demo.json base_url %v, want %s", m["base_url"], baseURL)
	}
	if s, _ := m["city"].(string); !strings.HasPrefix(s, "CN-") || len(s) != 9 {
		t.Errorf("demo.json city %q", s)
	}
	staff, _ := m["staff"].(map[string]any)
	for _, role := range []string{"hr_admin", "finance", "operator"} {
		s, _ := staff[role].(map[string]any)
		ctCheck(t, "demo.json staff."+role, s, ctShape{"user": "string", "password": "string", "token": "string"}, false)
	}
	res, _ := m["residents"].([]any)
	cats := map[string]bool{}
	for i, x := range res {
		r, _ := x.(map[string]any)
		ctCheck(t, fmt.Sprintf("demo.json residents[%d]", i), r, ctShape{"name": "string", "id_number": "string", "card_number": "string", "pin": "string", "category": "string"}, false)
		if c, _ := r["category"].(string); c != "" {
			cats[c] = true
		}
	}
	if len(res) < 3 {
		t.Errorf("demo.json has %d residents, want at least 3", len(res))
	}
	for _, c := range []string{"local", "insured_nonlocal", "permanent_resident"} {
		if !cats[c] {
			t.Errorf("demo.json has no %s resident (categories %v)", c, cats)
		}
	}
	terms, _ := m["terminals"].([]any)
	kinds := map[string]bool{}
	for i, x := range terms {
		tm, _ := x.(map[string]any)
		ctCheck(t, fmt.Sprintf("demo.json terminals[%d]", i), tm, ctShape{"id": "string", "token": "string", "provider": "string", "scenario": "string"}, false)
		sc, _ := tm["scenario"].(string)
		kinds[strings.SplitN(sc, ".", 2)[0]] = true
	}
	for _, k := range []string{"transit", "library", "medical"} {
		if !kinds[k] {
			t.Errorf("demo.json has no %s terminal (%v)", k, kinds)
		}
	}
}

// TestContractEndpoints walks every HTTP endpoint of CONTRACT.md on a demo
// node: the answers' members and types, and for each at least one error
// (malformed JSON, a missing field, a wrong role, an unknown id), as
// problem+json with the contract's members.
func TestContractEndpoints(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 20})
	d := tn.Demo
	base := tn.URL
	anon := tn.Client("")
	fin := tn.Client(d.Staff["finance"].Token)
	hr := tn.Client(d.Staff["hr_admin"].Token)
	op := tn.Client(d.Staff["operator"].Token)
	bus := demoTerminal(t, d, "transit.bus")
	lib := demoTerminal(t, d, "library.loan")
	hosp := demoTerminal(t, d, "medical.outpatient")
	local := ctDemoResident(t, d, "local")
	nonlocal := ctDemoResident(t, d, "insured_nonlocal")
	foreign := ctDemoResident(t, d, "permanent_resident")

	t.Run("demo.json", func(t *testing.T) {
		ctDemoFile(t, filepath.Join(tn.Dir, "demo.json"), tn.URL)
	})

	t.Run("healthz", func(t *testing.T) {
		if r := anon.Do(t, "GET", "/healthz", nil); r.Status != 200 {
			t.Errorf("GET /healthz: %d %s", r.Status, r.Body)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		r := anon.Do(t, "GET", "/metrics", nil)
		if r.Status != 200 || !strings.HasPrefix(r.Header.Get("Content-Type"), "text/plain") {
			t.Fatalf("GET /metrics: %d %q", r.Status, r.Header.Get("Content-Type"))
		}
		body := string(r.Body)
		if !strings.Contains(body, "# TYPE ") || !strings.Contains(body, "yikatong_http_requests_total") {
			t.Errorf("GET /metrics is not Prometheus text: %.300s", body)
		}
	})

	t.Run("openapi", func(t *testing.T) {
		r := anon.Do(t, "GET", "/v1/openapi.json", nil)
		m := ctOK(t, "GET /v1/openapi.json", r, 200)
		if v, _ := m["openapi"].(string); !strings.HasPrefix(v, "3.1") {
			t.Errorf("openapi version %q, want 3.1.x", v)
		}
		paths, _ := m["paths"].(map[string]any)
		comps, _ := m["components"].(map[string]any)
		schemas, _ := comps["schemas"].(map[string]any)
		// props resolves a schema's $ref and returns its property names.
		props := func(sch any) []string {
			sm, _ := sch.(map[string]any)
			if ref, ok := sm["$ref"].(string); ok {
				sm, _ = schemas[strings.TrimPrefix(ref, "#/components/schemas/")].(map[string]any)
			}
			pr, _ := sm["properties"].(map[string]any)
			var out []string
			for k := range pr {
				out = append(out, k)
			}
			return out
		}
		// Each contract endpoint is documented with the status it answers
		// (all 200, as seen live in the subtests below) and the contract's
		// request and response members.
		for _, c := range []struct {
			op        string
			req, resp []string
		}{
			{"GET /v1/openapi.json", nil, nil},
			{"GET /v1/trust", nil, []string{"issuer", "issued_at", "expires_at", "keys", "deny", "peers", "signature"}},
			{"POST /v1/auth/resident", []string{"card_number", "pin"}, []string{"token", "expires_at"}},
			{"POST /v1/ecodes", nil, []string{"code", "expires_at"}},
			{"POST /v1/scans", []string{"idempotency_key", "scenario", "code", "card_number", "amount_fen"}, []string{"decision", "reason", "charged_fen", "view"}},
			{"GET /v1/ledger/check", nil, []string{"accounts", "transfers", "sum_fen", "journal_ok"}},
			{"GET /v1/clearing/positions", nil, []string{"positions"}},
		} {
			method, path, _ := strings.Cut(c.op, " ")
			ops, _ := paths[path].(map[string]any)
			op, ok := ops[strings.ToLower(method)].(map[string]any)
			if !ok {
				t.Errorf("the OpenAPI document lacks %s", c.op)
				continue
			}
			resps, _ := op["responses"].(map[string]any)
			ok200, has200 := resps["200"].(map[string]any)
			if !has200 {
				var got []string
				for k := range resps {
					got = append(got, k)
				}
				t.Errorf("%s answers 200, the OpenAPI document says %v", c.op, got)
			}
			if c.resp != nil {
				content, _ := ok200["content"].(map[string]any)
				js, _ := content["application/json"].(map[string]any)
				if have := props(js["schema"]); !ctSubset(c.resp, have) {
					t.Errorf("%s: the OpenAPI response schema has %v, want %v", c.op, have, c.resp)
				}
			}
			if c.req != nil {
				rb, _ := op["requestBody"].(map[string]any)
				content, _ := rb["content"].(map[string]any)
				js, _ := content["application/json"].(map[string]any)
				if have := props(js["schema"]); !ctSubset(c.req, have) {
					t.Errorf("%s: the OpenAPI request schema has %v, want %v", c.op, have, c.req)
				}
			}
		}
		if pr := props(schemas["FederationPosition"]); !ctSubset([]string{"peer", "owed_to_us_fen", "we_owe_fen", "pending_messages"}, pr) {
			t.Errorf("the OpenAPI position schema has %v", pr)
		}
		// Every $ref in the document resolves.
		var walk func(v any)
		walk = func(v any) {
			switch x := v.(type) {
			case map[string]any:
				if ref, ok := x["$ref"].(string); ok {
					if _, ok := schemas[strings.TrimPrefix(ref, "#/components/schemas/")]; !ok {
						t.Errorf("the OpenAPI document refers to %s, which it lacks", ref)
					}
				}
				for _, y := range x {
					walk(y)
				}
			case []any:
				for _, y := range x {
					walk(y)
				}
			}
		}
		walk(m)
		if pr := props(schemas["ApperrProblem"]); !ctSubset([]string{"status", "title", "detail", "code", "detail_zh"}, pr) {
			t.Errorf("the OpenAPI Problem schema has %v", pr)
		}
	})

	var bundle map[string]any
	t.Run("trust", func(t *testing.T) {
		r := anon.Do(t, "GET", "/v1/trust", nil)
		bundle = ctOK(t, "GET /v1/trust", r, 200)
		ctTrustBundle(t, "GET /v1/trust", bundle, d.City)
		// The signature verifies against the node key a terminal pins.
		var jwk ecode.JWK
		anon.JSON(t, "GET", "/v1/trust/node-key", nil, 200, &jwk)
		k, err := ecode.PublicKeyFromJWK(jwk)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := trust.Parse(r.Body, &k); err != nil {
			t.Errorf("the served bundle does not verify against the node key: %v", err)
		}
		tampered := bytes.Replace(r.Body, []byte(d.City), []byte("CN-999999"), 1)
		if _, err := trust.Parse(tampered, &k); err == nil {
			t.Errorf("a tampered bundle verifies")
		}
		// A public GET takes no body and no token; a POST is not allowed.
		rp := anon.Do(t, "POST", "/v1/trust", "{}")
		ctProblem(t, "POST /v1/trust", rp, 405, "method_not_allowed")
		if rp.Header.Get("Allow") == "" {
			t.Errorf("405 without Allow")
		}
	})

	t.Run("auth/resident", func(t *testing.T) {
		for _, res := range []node.DemoResident{local, nonlocal, foreign} {
			r := anon.Do(t, "POST", "/v1/auth/resident", map[string]string{"card_number": res.CardNumber, "pin": res.PIN})
			m := ctOK(t, "POST /v1/auth/resident "+res.Category, r, 200)
			ctCheck(t, "resident token", m, ctShape{"token": "string", "expires_at": "time", "role": "?string"}, true)
			if exp, _ := time.Parse(time.RFC3339, fmt.Sprint(m["expires_at"])); !exp.After(time.Now()) {
				t.Errorf("token expires_at %v is not in the future", m["expires_at"])
			}
		}
		ctProblem(t, "malformed JSON", ctRaw(t, base, "", "POST", "/v1/auth/resident", `{"card_number":`), 422, "validation_failed")
		p := ctProblem(t, "missing pin", anon.Do(t, "POST", "/v1/auth/resident", map[string]string{"card_number": local.CardNumber}), 422, "validation_failed")
		if p["field"] != "pin" {
			t.Errorf("missing pin: field %v", p["field"])
		}
		ctProblem(t, "unknown field", anon.Do(t, "POST", "/v1/auth/resident", map[string]string{"card_number": local.CardNumber, "pin": local.PIN, "pin2": "1"}), 422, "validation_failed")
		ctProblem(t, "wrong type", ctRaw(t, base, "", "POST", "/v1/auth/resident", `{"card_number":`+local.CardNumber+`,"pin":"1"}`), 422, "validation_failed")
		unknown := anon.Do(t, "POST", "/v1/auth/resident", map[string]string{"card_number": "4101000000000000", "pin": "123456"})
		t.Logf("unknown card sign-in: %d %s", unknown.Status, unknown.Body)
		if unknown.Status/100 != 4 || unknown.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("unknown card: %d %s", unknown.Status, unknown.Body)
		}
		// Wrong PINs count toward a lock-out: after it, even the right
		// PIN is refused (card_locked).
		victim := d.Residents[len(d.Residents)-1]
		wrong := "000000"
		if victim.PIN == wrong {
			wrong = "111111"
		}
		locked := false
		for i := 0; i < 10 && !locked; i++ {
			r := anon.Do(t, "POST", "/v1/auth/resident", map[string]string{"card_number": victim.CardNumber, "pin": wrong})
			switch r.Code() {
			case "bad_pin":
				ctProblem(t, "wrong PIN", r, 401, "bad_pin")
			case "card_locked":
				ctProblem(t, "locked", r, 423, "card_locked")
				locked = true
			default:
				t.Fatalf("wrong PIN %d: %d %s", i, r.Status, r.Body)
			}
		}
		if !locked {
			t.Fatalf("10 wrong PINs did not lock the card")
		}
		ctProblem(t, "right PIN on a locked card", anon.Do(t, "POST", "/v1/auth/resident", map[string]string{"card_number": victim.CardNumber, "pin": victim.PIN}), 423, "card_locked")
	})

	localTok := signIn(t, base, local)
	foreignTok := signIn(t, base, foreign)
	resident := tn.Client(localTok)

	t.Run("ecodes", func(t *testing.T) {
		r := resident.Do(t, "POST", "/v1/ecodes", nil)
		m := ctOK(t, "POST /v1/ecodes", r, 200)
		ctCheck(t, "e-code", m, ctShape{"code": "string", "expires_at": "time"}, true)
		if c, _ := m["code"].(string); !strings.HasPrefix(c, "YK1:") {
			t.Errorf("code %q does not start with YK1:", c)
		}
		if exp, _ := time.Parse(time.RFC3339, fmt.Sprint(m["expires_at"])); exp.Sub(time.Now()) > 2*time.Minute || exp.Before(time.Now()) {
			t.Errorf("e-code expires_at %v: not about a minute ahead", m["expires_at"])
		}
		ctProblem(t, "no token", anon.Do(t, "POST", "/v1/ecodes", nil), 401, "unauthorized")
		ctProblem(t, "unknown token", ctRaw(t, base, "no-such-token", "POST", "/v1/ecodes", ""), 401, "unauthorized")
		ctProblem(t, "terminal role", tn.Client(bus.Token).Do(t, "POST", "/v1/ecodes", nil), 403, "forbidden")
		ctProblem(t, "staff role", hr.Do(t, "POST", "/v1/ecodes", nil), 403, "forbidden")
		ctProblem(t, "malformed body", ctRaw(t, base, localTok, "POST", "/v1/ecodes", `{"card`), 422, "validation_failed")
		// A lost card gets no code: card_not_active.
		lostTok := signIn(t, base, nonlocal)
		hr.JSON(t, "POST", "/v1/cards/"+nonlocal.CardNumber+"/lost", nil, 200, nil)
		r = tn.Client(lostTok).Do(t, "POST", "/v1/ecodes", nil)
		if r.Status == 401 {
			ctProblem(t, "lost card", r, 401, "unauthorized") // the session ended with the card
		} else {
			ctProblem(t, "lost card", r, 409, "card_not_active")
		}
	})

	scanShape := ctShape{"decision": "string", "reason": "?string", "charged_fen": "?int", "view": "object"}
	checkScan := func(t *testing.T, what string, r nodetest.Response, decision string) map[string]any {
		t.Helper()
		m := ctOK(t, what, r, 200)
		ctCheck(t, what, m, scanShape, true)
		if m["decision"] != decision {
			t.Errorf("%s: decision %v, want %s: %s", what, m["decision"], decision, r.Body)
		}
		if decision == "declined" {
			if s, _ := m["reason"].(string); s == "" {
				t.Errorf("%s: declined without a reason", what)
			}
		}
		return m
	}

	t.Run("scans", func(t *testing.T) {
		busc := tn.Client(bus.Token)
		code := issueCode(t, base, localTok)
		req := map[string]any{"idempotency_key": "ct-scan-1", "scenario": bus.Scenario, "code": code}
		r1 := busc.Do(t, "POST", "/v1/scans", req)
		a1 := checkScan(t, "bus e-code", r1, "accepted")
		if c, ok := a1["charged_fen"].(float64); !ok || c <= 0 {
			t.Errorf("a bus fare charged %v", a1["charged_fen"])
		}
		// Same key, same body: the same answer.
		r2 := busc.Do(t, "POST", "/v1/scans", req)
		if a2 := checkScan(t, "bus e-code again", r2, "accepted"); !reflect.DeepEqual(a1, a2) {
			t.Errorf("same key and body, another answer:\n%s\n%s", r1.Body, r2.Body)
		}
		// Same key, another body: idempotency_conflict.
		other := map[string]any{"idempotency_key": "ct-scan-1", "scenario": bus.Scenario, "card_number": local.CardNumber}
		ctProblem(t, "same key, other body", busc.Do(t, "POST", "/v1/scans", other), 409, "idempotency_conflict")
		// The same code under another key: declined, replayed.
		r3 := busc.Do(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "ct-scan-2", "scenario": bus.Scenario, "code": code})
		if a3 := checkScan(t, "replayed code", r3, "declined"); a3["reason"] != "replayed" {
			t.Errorf("second use of a code: reason %v, want replayed", a3["reason"])
		}
		if _, ok := ctObject(t, "replayed", r3)["charged_fen"]; ok {
			if c, _ := ctObject(t, "replayed", r3)["charged_fen"].(float64); c != 0 {
				t.Errorf("a replayed code charged %v", c)
			}
		}

		// A card number (identify only: library).
		r := tn.Client(lib.Token).Do(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "ct-scan-3", "scenario": lib.Scenario, "card_number": local.CardNumber})
		checkScan(t, "library card", r, "accepted")
		// A card number with amount_fen (hospital).
		r = tn.Client(hosp.Token).Do(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "ct-scan-4", "scenario": hosp.Scenario, "card_number": foreign.CardNumber, "amount_fen": 1234})
		m := checkScan(t, "hospital card", r, "accepted")
		if c, _ := m["charged_fen"].(float64); c <= 0 {
			t.Errorf("hospital charge answered charged_fen %v", m["charged_fen"])
		}
		// A foreign resident's e-code at the library.
		fc := issueCode(t, base, foreignTok)
		r = tn.Client(lib.Token).Do(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "ct-scan-5", "scenario": lib.Scenario, "code": fc})
		checkScan(t, "library e-code", r, "accepted")
		// The view never carries a full ID number.
		for _, res := range d.Residents {
			if strings.Contains(string(r.Body), res.IDNumber) {
				t.Errorf("a scan answer carries a full ID number: %s", r.Body)
			}
		}
		// An unknown card is an answer (declined), not an error.
		r = busc.Do(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "ct-scan-6", "scenario": bus.Scenario, "card_number": "4101999999999991"})
		t.Logf("unknown card: %d %s", r.Status, r.Body)
		if r.Status == 200 {
			checkScan(t, "unknown card", r, "declined")
		} else {
			ctProblem(t, "unknown card", r, 404, "unknown_holder")
		}

		// Errors.
		ctProblem(t, "malformed JSON", ctRaw(t, base, bus.Token, "POST", "/v1/scans", `{"idempotency_key":"x",`), 422, "validation_failed")
		p := ctProblem(t, "missing key", busc.Do(t, "POST", "/v1/scans", map[string]any{"scenario": bus.Scenario, "code": code}), 422, "validation_failed")
		if p["field"] != "idempotency_key" {
			t.Errorf("missing key: field %v", p["field"])
		}
		ctProblem(t, "neither code nor card", busc.Do(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "ct-scan-7", "scenario": bus.Scenario}), 422, "validation_failed")
		ctProblem(t, "amount as a string", ctRaw(t, base, bus.Token, "POST", "/v1/scans", `{"idempotency_key":"ct-scan-8","scenario":"`+bus.Scenario+`","card_number":"`+local.CardNumber+`","amount_fen":"100"}`), 422, "validation_failed")
		ctProblem(t, "no token", anon.Do(t, "POST", "/v1/scans", req), 401, "unauthorized")
		ctProblem(t, "resident role", resident.Do(t, "POST", "/v1/scans", req), 403, "forbidden")
		ctProblem(t, "operator role", op.Do(t, "POST", "/v1/scans", req), 403, "forbidden")
		r = busc.Do(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "ct-scan-9", "scenario": "no.such_scenario", "card_number": local.CardNumber})
		t.Logf("unknown scenario: %d %s", r.Status, r.Body)
		if r.Status != 403 && r.Status != 404 && r.Status != 422 {
			t.Errorf("a scenario the terminal does not run: %d %s", r.Status, r.Body)
		} else {
			ctProblem(t, "unknown scenario", r, r.Status, r.Code())
		}
	})

	t.Run("ledger/check", func(t *testing.T) {
		r := fin.Do(t, "GET", "/v1/ledger/check", nil)
		m := ctOK(t, "GET /v1/ledger/check", r, 200)
		ctCheck(t, "ledger check", m, ctShape{"accounts": "int", "transfers": "int", "sum_fen": "int", "journal_ok": "bool", "problems": "?array"}, true)
		if m["sum_fen"] != 0.0 || m["journal_ok"] != true {
			t.Errorf("the books: %s", r.Body)
		}
		if a, _ := m["accounts"].(float64); a <= 0 {
			t.Errorf("accounts %v", m["accounts"])
		}
		if a, _ := m["transfers"].(float64); a <= 0 {
			t.Errorf("transfers %v", m["transfers"])
		}
		ctProblem(t, "no token", anon.Do(t, "GET", "/v1/ledger/check", nil), 401, "unauthorized")
		ctProblem(t, "hr_admin role", hr.Do(t, "GET", "/v1/ledger/check", nil), 403, "forbidden")
		ctProblem(t, "operator role", op.Do(t, "GET", "/v1/ledger/check", nil), 403, "forbidden")
		ctProblem(t, "terminal role", tn.Client(bus.Token).Do(t, "GET", "/v1/ledger/check", nil), 403, "forbidden")
		ctProblem(t, "resident role", resident.Do(t, "GET", "/v1/ledger/check", nil), 403, "forbidden")
		ctProblem(t, "POST", fin.Do(t, "POST", "/v1/ledger/check", "{}"), 405, "method_not_allowed")
	})

	t.Run("clearing/positions", func(t *testing.T) {
		r := fin.Do(t, "GET", "/v1/clearing/positions", nil)
		m := ctOK(t, "GET /v1/clearing/positions", r, 200)
		ctCheck(t, "positions", m, ctShape{"positions": "array"}, true)
		ctProblem(t, "no token", anon.Do(t, "GET", "/v1/clearing/positions", nil), 401, "unauthorized")
		ctProblem(t, "operator role", op.Do(t, "GET", "/v1/clearing/positions", nil), 403, "forbidden")
		ctProblem(t, "terminal role", tn.Client(bus.Token).Do(t, "GET", "/v1/clearing/positions", nil), 403, "forbidden")
		// A position's members (seen live in TestContractRegionUp).
		b, _ := json.Marshal(federation.Position{Peer: "CN-330100"})
		var pm map[string]any
		json.Unmarshal(b, &pm)
		ctCheck(t, "position", pm, positionShape, false)
	})

	t.Run("unknown endpoint", func(t *testing.T) {
		ctProblem(t, "GET /v1/no-such", anon.Do(t, "GET", "/v1/no-such", nil), 404, "not_found")
	})
}

func ctSubset(want, have []string) bool {
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

var positionShape = ctShape{"peer": "string", "owed_to_us_fen": "int", "we_owe_fen": "int", "pending_messages": "int"}

// ctTrustBundle checks a trust bundle's contract members.
func ctTrustBundle(t *testing.T, what string, m map[string]any, city string) {
	t.Helper()
	ctCheck(t, what, m, ctShape{"issuer": "string", "issued_at": "time", "expires_at": "time", "keys": "array", "deny": "object", "peers": "array", "signature": "object"}, false)
	if m["issuer"] != city {
		t.Errorf("%s: issuer %v, want %s", what, m["issuer"], city)
	}
	iat, _ := time.Parse(time.RFC3339, fmt.Sprint(m["issued_at"]))
	exp, _ := time.Parse(time.RFC3339, fmt.Sprint(m["expires_at"]))
	if !exp.After(iat) {
		t.Errorf("%s: expires_at %v not after issued_at %v", what, m["expires_at"], m["issued_at"])
	}
	keys, _ := m["keys"].([]any)
	if len(keys) == 0 {
		t.Errorf("%s: no keys", what)
	}
	b64 := func(s any, n int, name string) {
		str, _ := s.(string)
		raw, err := base64.RawURLEncoding.DecodeString(str)
		if err != nil || strings.ContainsAny(str, "+/=") {
			t.Errorf("%s: %s %q is not unpadded base64url", what, name, str)
		} else if n > 0 && len(raw) != n {
			t.Errorf("%s: %s is %d bytes, want %d", what, name, len(raw), n)
		}
	}
	for i, x := range keys {
		k, _ := x.(map[string]any)
		name := fmt.Sprintf("%s keys[%d]", what, i)
		ctCheck(t, name, k, ctShape{"kid": "string", "alg": "string", "crv": "string", "x": "string", "y": "?string", "not_after": "?time"}, false)
		b64(k["kid"], 0, name+" kid")
		switch k["alg"] {
		case "SM2":
			if k["crv"] != "SM2" {
				t.Errorf("%s: SM2 key with crv %v", name, k["crv"])
			}
			b64(k["x"], 32, name+" x")
			b64(k["y"], 32, name+" y")
		case "EdDSA":
			if k["crv"] != "Ed25519" {
				t.Errorf("%s: EdDSA key with crv %v", name, k["crv"])
			}
			b64(k["x"], 32, name+" x")
			if _, ok := k["y"]; ok {
				t.Errorf("%s: an Ed25519 key has y", name)
			}
		default:
			t.Errorf("%s: alg %v", name, k["alg"])
		}
	}
}

// ctRun runs the binary with stdin and returns stdout and the exit code.
func ctRun(t *testing.T, stdin string, args ...string) ([]byte, int) {
	t.Helper()
	cmd := exec.Command(nodetest.Binary(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.Bytes(), ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), 0
}

// ctOneObject requires out to be exactly one JSON object (one line).
func ctOneObject(t *testing.T, what string, out []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(out))
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("%s: output is not a JSON object: %v: %q", what, err, out)
	}
	var extra any
	if err := dec.Decode(&extra); err == nil {
		t.Errorf("%s: more than one JSON value: %q", what, out)
	}
	return m
}

var cliErrorShape = ctShape{"code": "string", "message": "string", "message_zh": "string", "field": "?string"}

// ctCLIInvalid checks {"valid":false,"error":{"code","message","message_zh"}}.
func ctCLIInvalid(t *testing.T, what string, m map[string]any, code string) {
	t.Helper()
	ctCheck(t, what, m, ctShape{"valid": "bool", "error": "object"}, true)
	if m["valid"] != false {
		t.Errorf("%s: valid %v", what, m["valid"])
	}
	e, _ := m["error"].(map[string]any)
	ctCheck(t, what+" error", e, cliErrorShape, true)
	if e["code"] != code {
		t.Errorf("%s: code %v, want %s", what, e["code"], code)
	}
	if s, _ := e["message_zh"].(string); !hasHan(s) {
		t.Errorf("%s: message_zh %q is not Chinese", what, s)
	}
}

// TestContractCommands runs the binary: `serve --demo` (healthz and
// demo.json within 15 s, a clean stop on SIGTERM), `id check`, `trust
// export` and `code verify`, checking their outputs and exit codes.
func TestContractCommands(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	nodetest.Binary(t)

	t.Run("id check", func(t *testing.T) {
		out, rc := ctRun(t, "", "id", "check", "11010519491231002X")
		m := ctOneObject(t, "id check", out)
		want := map[string]any{"valid": true, "kind": "citizen", "region": "110105", "birth_date": "1949-12-31", "sex": "F"}
		if rc != 0 || !reflect.DeepEqual(m, want) {
			t.Errorf("id check citizen: exit %d %v, want %v", rc, m, want)
		}
		out, rc = ctRun(t, "", "id", "check", "11010519491231002x")
		if m := ctOneObject(t, "id check x", out); rc != 0 || !reflect.DeepEqual(m, want) {
			t.Errorf("id check lower-case x: exit %d %v", rc, m)
		}
		for num, kind := range map[string]string{"911398199012310021": "permanent_resident", "KAZ110090123105": "permanent_resident_2017"} {
			out, rc := ctRun(t, "", "id", "check", num)
			m := ctOneObject(t, "id check "+num, out)
			ctCheck(t, "id check "+num, m, ctShape{"valid": "bool", "kind": "string", "region": "string", "birth_date": "string", "sex": "string", "nationality": "?string"}, false)
			if rc != 0 || m["valid"] != true || m["kind"] != kind {
				t.Errorf("id check %s: exit %d %v, want kind %s", num, rc, m, kind)
			}
		}
		out, rc = ctRun(t, "", "id", "check", "110105194912310021")
		if rc != 1 {
			t.Errorf("an invalid number: exit %d", rc)
		}
		ctCLIInvalid(t, "id check bad check digit", ctOneObject(t, "id check bad", out), "bad_check_digit")
	})

	dir := t.TempDir()
	start := time.Now()
	p := nodetest.StartProcess(t, dir, "--demo")
	demoPath := filepath.Join(dir, "demo.json")
	for time.Since(start) < 15*time.Second {
		if _, err := os.Stat(demoPath); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if took := time.Since(start); took > 15*time.Second {
		t.Errorf("serve --demo: healthz and demo.json took %v, contract allows 15 s", took)
	}
	ctDemoFile(t, demoPath, p.URL)
	d, err := node.ReadDemoFile(demoPath)
	if err != nil {
		t.Fatal(err)
	}
	res := ctDemoResident(t, d, "local")
	tok := signIn(t, p.URL, res)
	code := issueCode(t, p.URL, tok)

	var trustFile string
	tmp := t.TempDir()
	t.Run("trust export", func(t *testing.T) {
		out, rc := ctRun(t, "", "trust", "export", "--data", dir)
		if rc != 0 {
			t.Fatalf("trust export: exit %d %s", rc, out)
		}
		m := ctOneObject(t, "trust export", out)
		ctTrustBundle(t, "trust export", m, d.City)
		served := ctOK(t, "GET /v1/trust", nodetest.NewClient(p.URL, "").Do(t, "GET", "/v1/trust", nil), 200)
		for _, k := range []string{"issuer", "keys", "deny", "peers"} {
			if !reflect.DeepEqual(m[k], served[k]) {
				t.Errorf("trust export and GET /v1/trust differ in %s:\n%v\n%v", k, m[k], served[k])
			}
		}
		trustFile = filepath.Join(tmp, "trust.json")
		if err := os.WriteFile(trustFile, out, 0o600); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("code verify", func(t *testing.T) {
		if trustFile == "" {
			t.Skip("no trust bundle")
		}
		validShape := ctShape{"valid": "bool", "scheme": "string", "issuer": "string", "kid": "string", "alg": "string",
			"subject": "string", "issued_at": "time", "expires_at": "time", "category": "string", "flags": "array"}
		out, rc := ctRun(t, "", "code", "verify", "--trust", trustFile, code)
		m := ctOneObject(t, "code verify", out)
		ctCheck(t, "code verify", m, validShape, true)
		if rc != 0 || m["valid"] != true || m["scheme"] != "YK1" || m["issuer"] != d.City || m["category"] != "local" {
			t.Errorf("code verify: exit %d %v", rc, m)
		}
		if a := m["alg"]; a != "SM2" && a != "EdDSA" {
			t.Errorf("code verify alg %v", a)
		}
		if m["kid"] != codeKid(t, code) {
			t.Errorf("code verify kid %v, code's kid %s", m["kid"], codeKid(t, code))
		}
		// "-" reads the code from stdin.
		out, rc = ctRun(t, code+"\n", "code", "verify", "--trust", trustFile, "-")
		if m2 := ctOneObject(t, "code verify -", out); rc != 0 || !reflect.DeepEqual(m, m2) {
			t.Errorf("code verify -: exit %d %v", rc, m2)
		}
		// --at after the code's expiry: expired, exit 1.
		at := time.Now().Add(10 * time.Minute).UTC().Format(time.RFC3339)
		out, rc = ctRun(t, "", "code", "verify", "--trust", trustFile, "--at", at, code)
		if rc != 1 {
			t.Errorf("code verify --at later: exit %d", rc)
		}
		ctCLIInvalid(t, "code verify expired", ctOneObject(t, "code verify expired", out), "expired")
		at = time.Now().Add(-10 * time.Minute).UTC().Format(time.RFC3339)
		out, rc = ctRun(t, "", "code", "verify", "--trust", trustFile, "--at", at, code)
		if rc != 1 {
			t.Errorf("code verify --at earlier: exit %d", rc)
		}
		ctCLIInvalid(t, "code verify not yet valid", ctOneObject(t, "code verify early", out), "not_yet_valid")
		for c, want := range map[string]string{"YK1:!!!": "malformed", "ZZ9:ABC": "unsupported_scheme"} {
			out, rc = ctRun(t, "", "code", "verify", "--trust", trustFile, c)
			if rc != 1 {
				t.Errorf("code verify %s: exit %d", c, rc)
			}
			ctCLIInvalid(t, "code verify "+c, ctOneObject(t, "code verify "+c, out), want)
		}
		// A live code against a bundle past its expiry: trust_expired
		// (the bundle's signature is not checked without --node-key).
		var b map[string]any
		raw, _ := os.ReadFile(trustFile)
		json.Unmarshal(raw, &b)
		b["issued_at"] = time.Now().Add(-48 * time.Hour).UTC().Format(time.RFC3339)
		b["expires_at"] = time.Now().Add(-24 * time.Hour).UTC().Format(time.RFC3339)
		raw, _ = json.Marshal(b)
		old := filepath.Join(tmp, "expired-trust.json")
		os.WriteFile(old, raw, 0o600)
		fresh := issueCode(t, p.URL, tok)
		out, rc = ctRun(t, "", "code", "verify", "--trust", old, fresh)
		if rc != 1 {
			t.Errorf("code verify with an expired bundle: exit %d %s", rc, out)
		}
		ctCLIInvalid(t, "code verify expired bundle", ctOneObject(t, "code verify expired bundle", out), "trust_expired")
	})

	t.Run("SIGTERM", func(t *testing.T) {
		p.Cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- p.Cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve after SIGTERM: %v: %s", err, p.Stderr.String())
			}
		case <-time.After(20 * time.Second):
			t.Errorf("serve did not stop within 20 s of SIGTERM")
		}
	})
}

// TestContractStrictJSON checks the strict request decoding answers the
// documented codes on the contract's JSON endpoints: repeated and
// case-variant keys, unknown fields, trailing data, huge bodies, deep
// nesting, non-object bodies.
func TestContractStrictJSON(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	d := tn.Demo
	bus := demoTerminal(t, d, "transit.bus")
	res := d.Residents[0]
	scan := func(i int, tail string) string {
		return `{"idempotency_key":"ct-strict-` + strconv.Itoa(i) + `","scenario":"` + bus.Scenario + `"` + tail + `}`
	}
	deep := strings.Repeat("[", 20000) + strings.Repeat("]", 20000)
	cases := []struct {
		name, path, token, body string
		status                  int
		code                    string
	}{
		{"duplicate key", "/v1/scans", bus.Token, scan(1, `,"card_number":"`+res.CardNumber+`","amount_fen":1,"amount_fen":100000`), 422, "validation_failed"},
		{"duplicate key by escape", "/v1/scans", bus.Token, scan(2, `,"card_number":"`+res.CardNumber+`","card_\u006eumber":"x"`), 422, "validation_failed"},
		{"case variant", "/v1/scans", bus.Token, scan(3, `,"card_number":"`+res.CardNumber+`","AMOUNT_FEN":5`), 422, "validation_failed"},
		{"case variant only", "/v1/auth/resident", "", `{"Card_Number":"` + res.CardNumber + `","pin":"` + res.PIN + `"}`, 422, "validation_failed"},
		{"unknown field", "/v1/scans", bus.Token, scan(4, `,"card_number":"`+res.CardNumber+`","tip_fen":5`), 422, "validation_failed"},
		{"trailing object", "/v1/scans", bus.Token, scan(5, `,"card_number":"`+res.CardNumber+`"`) + `{}`, 422, "validation_failed"},
		{"trailing garbage", "/v1/auth/resident", "", `{"card_number":"` + res.CardNumber + `","pin":"` + res.PIN + `"} x`, 422, "validation_failed"},
		{"null body", "/v1/scans", bus.Token, `null`, 422, "validation_failed"},
		{"array body", "/v1/auth/resident", "", `[]`, 422, "validation_failed"},
		{"empty body", "/v1/scans", bus.Token, ``, 422, "validation_failed"},
		{"huge body", "/v1/scans", bus.Token, scan(6, `,"card_number":"`+strings.Repeat("1", 2<<20)+`"`), 413, "body_too_large"},
		{"huge body, no token", "/v1/auth/resident", "", `{"pin":"` + strings.Repeat("1", 2<<20) + `"}`, 413, "body_too_large"},
		{"deep nesting", "/v1/scans", bus.Token, scan(7, `,"card_number":`+deep), 422, "validation_failed"},
		{"deep nesting, unknown field", "/v1/auth/resident", "", `{"x":` + deep + `}`, 422, "validation_failed"},
		{"deep objects", "/v1/auth/resident", "", `{"x":` + strings.Repeat(`{"a":`, 20000) + `1` + strings.Repeat("}", 20000) + `}`, 422, "validation_failed"},
		{"invalid UTF-8 string", "/v1/auth/resident", "", "{\"card_number\":\"\xff\",\"pin\":\"1\"}", 0, ""},
	}
	for _, c := range cases {
		r := ctRaw(t, tn.URL, c.token, "POST", c.path, c.body)
		if c.status == 0 {
			t.Logf("%s: %d %s", c.name, r.Status, r.Body)
			if r.Status >= 500 {
				t.Errorf("%s: %d %s", c.name, r.Status, r.Body)
			}
			continue
		}
		ctProblem(t, c.name, r, c.status, c.code)
	}
	// Nothing of it was booked: the well-formed scan with the first key
	// still runs as new.
	r := ctRaw(t, tn.URL, bus.Token, "POST", "/v1/scans", scan(1, `,"card_number":"`+res.CardNumber+`"`))
	if r.Status != 200 {
		t.Errorf("a clean scan after the refused ones: %d %s", r.Status, r.Body)
	}
	var m map[string]any
	json.Unmarshal(r.Body, &m)
	if m["decision"] != "accepted" {
		t.Errorf("clean scan: %s", r.Body)
	}
}

// TestContractRegionUp runs `yikatong region up` and checks region.json
// and a live clearing position of each peer.
func TestContractRegionUp(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three processes")
	}
	bin := nodetest.Binary(t)
	dir := t.TempDir()
	port := 0
	for try := 0; try < 20 && port == 0; try++ {
		_, ps, _ := strings.Cut(nodetest.FreeAddr(t), ":")
		p, _ := strconv.Atoi(ps)
		if l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1)); err == nil {
			l.Close()
			port = p
		}
	}
	if port == 0 {
		t.Skip("no two consecutive free ports")
	}
	cmd := exec.Command(bin, "region", "up", "--cities", "CN-310000,CN-330100", "--data", dir, "--base-port", strconv.Itoa(port))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("region up after SIGTERM: %v: %s", err, out.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("region up did not stop within 30 s of SIGTERM")
		}
	}()
	var m map[string]any
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "region.json"))
		if err == nil && json.Unmarshal(b, &m) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no region.json: %s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctCheck(t, "region.json", m, ctShape{"anchor": "?object", "nodes": "array"}, false)
	if _, ok := m["anchor"]; !ok {
		t.Errorf("region.json has no anchor")
	}
	nodes, _ := m["nodes"].([]any)
	if len(nodes) != 2 {
		t.Fatalf("region.json nodes: %v", nodes)
	}
	var cities []string
	for i, x := range nodes {
		n, _ := x.(map[string]any)
		ctCheck(t, fmt.Sprintf("region.json nodes[%d]", i), n, ctShape{"city": "string", "base_url": "string", "demo": "string"}, false)
		cities = append(cities, fmt.Sprint(n["city"]))
	}
	if !slices.Equal(cities, []string{"CN-310000", "CN-330100"}) {
		t.Errorf("region.json cities %v", cities)
	}
	for i, x := range nodes {
		n := x.(map[string]any)
		d, err := node.ReadDemoFile(fmt.Sprint(n["demo"]))
		if err != nil {
			t.Fatalf("nodes[%d].demo: %v", i, err)
		}
		if d.City != n["city"] || d.BaseURL != n["base_url"] {
			t.Errorf("nodes[%d]: demo.json of %s at %s", i, d.City, d.BaseURL)
		}
		ctDemoFile(t, fmt.Sprint(n["demo"]), fmt.Sprint(n["base_url"]))
		// Each node lists its peer once it has read the region's member list.
		var r nodetest.Response
		var ps []any
		start := time.Now()
		for {
			r = nodetest.NewClient(d.BaseURL, d.Staff["finance"].Token).Do(t, "GET", "/v1/clearing/positions", nil)
			pm := ctOK(t, "positions of "+d.City, r, 200)
			ps, _ = pm["positions"].([]any)
			if len(ps) > 0 || time.Since(start) > 20*time.Second {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%s: positions after %v: %s", d.City, time.Since(start).Round(time.Millisecond), r.Body)
		if len(ps) == 0 {
			t.Errorf("%s: no position for its peer: %s", d.City, r.Body)
		}
		for j, y := range ps {
			pos, _ := y.(map[string]any)
			ctCheck(t, fmt.Sprintf("%s positions[%d]", d.City, j), pos, positionShape, false)
			if pos["peer"] == d.City {
				t.Errorf("%s has a position with itself", d.City)
			}
		}
	}
}
