package node_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestScenarioSwitchOverHTTP: switching a scenario on and off takes an
// explicit true or false; a body that says neither is refused and leaves
// the scenario as it was (a missing value read as "off" would stop every
// gate of the scenario). Only hr_admin may switch.
func TestScenarioSwitchOverHTTP(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	d := tn.Demo
	hr := tn.Client(d.Staff["hr_admin"].Token)
	op := tn.Client(d.Staff["operator"].Token)
	var lib nodetest.Client
	for _, tm := range d.Terminals {
		if tm.Scenario == "library.loan" {
			lib = *tn.Client(tm.Token)
		}
	}
	if lib.Token == "" {
		t.Fatal("the demo has no library terminal")
	}
	type scenario struct {
		ID      string `json:"id"`
		Enabled bool   `json:"enabled"`
	}
	enabled := func() bool {
		var s scenario
		hr.JSON(t, "GET", "/v1/scenarios/library.loan", nil, 200, &s)
		return s.Enabled
	}
	scan := func(key string) (decision, reason string) {
		var a struct{ Decision, Reason string }
		lib.JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": key, "scenario": "library.loan", "card_number": d.Residents[0].CardNumber}, 200, &a)
		return a.Decision, a.Reason
	}
	if !enabled() {
		t.Fatal("library.loan starts disabled")
	}
	for _, body := range []string{`{}`, `{"enabled":null}`, `null`, ``, `[]`, `{"Enabled":false}`, `{"enabled":false,"enabled":true}`, `{"enabled":"no"}`} {
		if r := hr.Do(t, "PUT", "/v1/scenarios/library.loan/enabled", body); r.Status != 422 || r.Code() != "validation_failed" {
			t.Errorf("%s: %d %s", body, r.Status, r.Body)
		}
		if !enabled() {
			t.Fatalf("%s switched the scenario off", body)
		}
	}
	if r := op.Do(t, "PUT", "/v1/scenarios/library.loan/enabled", `{"enabled":false}`); r.Status != 403 {
		t.Fatalf("operator: %d %s", r.Status, r.Body)
	}
	if dec, _ := scan("sw-1"); dec != "accepted" {
		t.Fatalf("scan while on: %s", dec)
	}
	var s scenario
	hr.JSON(t, "PUT", "/v1/scenarios/library.loan/enabled", `{"enabled":false}`, 200, &s)
	if s.Enabled || enabled() {
		t.Fatal("not switched off")
	}
	if dec, reason := scan("sw-2"); dec != "declined" || reason != "scenario_disabled" {
		t.Fatalf("scan while off: %s %s", dec, reason)
	}
	hr.JSON(t, "PUT", "/v1/scenarios/library.loan/enabled", `{"enabled":true}`, 200, &s)
	if dec, _ := scan("sw-3"); !s.Enabled || dec != "accepted" {
		t.Fatalf("scan after switching on: %s", dec)
	}
	if r := hr.Do(t, "PUT", "/v1/scenarios/no.such/enabled", `{"enabled":true}`); r.Status != 404 {
		t.Fatalf("unknown scenario: %d %s", r.Status, r.Body)
	}
}

// TestMoneyBodiesAreStrict: a top-up whose body names a field twice, or
// names it in another case, is refused and books nothing (encoding/json
// alone would book the last value, or match the name case-blind).
func TestMoneyBodiesAreStrict(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	d := tn.Demo
	fin := tn.Client(d.Staff["finance"].Token)
	op := tn.Client(d.Staff["operator"].Token)
	r0 := d.Residents[0]
	balance := func() int64 {
		var a struct {
			BalanceFen int64 `json:"balance_fen"`
		}
		fin.JSON(t, "GET", "/v1/accounts/w:"+r0.ResidentID, nil, 200, &a)
		return a.BalanceFen
	}
	before := balance()
	for i, body := range []string{
		`{"idempotency_key":"s-%d","card_number":"` + r0.CardNumber + `","amount_fen":1,"amount_fen":100000,"channel":"bank"}`,
		`{"idempotency_key":"s-%d","Card_Number":"` + r0.CardNumber + `","AMOUNT_FEN":100,"channel":"bank"}`,
	} {
		r := op.Do(t, "POST", "/v1/topups", fmt.Sprintf(body, i))
		if r.Status != 422 || r.Code() != "validation_failed" {
			t.Errorf("%s: %d %s", body, r.Status, r.Body)
		}
	}
	if got := balance(); got != before {
		t.Fatalf("the wallet moved: %d → %d", before, got)
	}
}

// TestRequestBounds: absurd amounts and contradicting names are refused
// before anything is booked; the token scheme's case does not matter.
func TestRequestBounds(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	d := tn.Demo
	op := tn.Client(d.Staff["operator"].Token)
	fin := tn.Client(d.Staff["finance"].Token)
	r0, r1 := d.Residents[0], d.Residents[1]
	if r := op.Do(t, "POST", "/v1/topups", map[string]any{"idempotency_key": "b-1", "card_number": r0.CardNumber, "amount_fen": int64(1e15)}); r.Code() != "invalid_amount" {
		t.Errorf("a top-up of 10^15 fen: %d %s", r.Status, r.Body)
	}
	if r := op.Do(t, "POST", "/v1/topups", map[string]any{"idempotency_key": "b-2", "card_number": r0.CardNumber, "resident_id": r1.ResidentID, "amount_fen": 100}); r.Status != 422 || r.Code() != "validation_failed" {
		t.Errorf("card of one resident, id of another: %d %s", r.Status, r.Body)
	}
	op.JSON(t, "POST", "/v1/topups", map[string]any{"idempotency_key": "b-3", "card_number": r0.CardNumber, "resident_id": r0.ResidentID, "amount_fen": 100}, 200, nil)
	fin.JSON(t, "POST", "/v1/subsidies", map[string]any{"id": "bounds-2026", "label": "test"}, 201, nil)
	if r := fin.Do(t, "POST", "/v1/subsidies/bounds-2026/funding", map[string]any{"idempotency_key": "f-1", "amount_fen": int64(1e18)}); r.Code() != "invalid_amount" {
		t.Errorf("funding of 10^18 fen: %d %s", r.Status, r.Body)
	}
	var check struct {
		SumFen int64 `json:"sum_fen"`
	}
	fin.JSON(t, "GET", "/v1/ledger/check", nil, 200, &check)
	if check.SumFen != 0 {
		t.Fatalf("the books do not balance: %d", check.SumFen)
	}

	// Settlement on a node that is in no region: a conflict, as the
	// console says, not an empty success.
	if r := fin.Do(t, "POST", "/v1/clearing/settle", `{}`); r.Status != 409 || r.Code() != "conflict" {
		t.Errorf("settle outside a region: %d %s", r.Status, r.Body)
	}

	lower := nodetest.NewClient(tn.URL, "")
	for _, h := range []string{"bearer ", "BEARER ", "Bearer  "} {
		req, _ := http.NewRequest("GET", tn.URL+"/v1/ledger/check", nil)
		req.Header.Set("Authorization", h+d.Staff["finance"].Token)
		resp, err := lower.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%q: %d", h, resp.StatusCode)
		}
	}
}
