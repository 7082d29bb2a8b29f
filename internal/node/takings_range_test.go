package node_test

import (
	"encoding/json"
	"testing"

	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestTakingsRange: GET /v1/providers/{id}/takings answers from and to
// only when they were given (no "0001-01-01T00:00:00Z" for an open bound),
// and the document does not require them.
func TestTakingsRange(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	op := tn.Client(tn.Demo.Staff["operator"].Token)
	prov := tn.Demo.Terminals[0].Provider
	get := func(query string) map[string]json.RawMessage {
		var m map[string]json.RawMessage
		op.JSON(t, "GET", "/v1/providers/"+prov+"/takings"+query, nil, 200, &m)
		return m
	}
	m := get("")
	if _, ok := m["from"]; ok {
		t.Errorf("no ?from, yet from = %s", m["from"])
	}
	if _, ok := m["to"]; ok {
		t.Errorf("no ?to, yet to = %s", m["to"])
	}
	m = get("?from=2025-01-01")
	if string(m["from"]) != `"2025-01-01T00:00:00Z"` {
		t.Errorf("?from=2025-01-01: from = %s", m["from"])
	}
	if _, ok := m["to"]; ok {
		t.Errorf("no ?to, yet to = %s", m["to"])
	}
	m = get("?from=2025-01-01&to=2025-02-01T08:00:00%2B08:00")
	if string(m["to"]) != `"2025-02-01T08:00:00+08:00"` {
		t.Errorf("?to=…: to = %s", m["to"])
	}
	var doc openAPIDoc
	op.JSON(t, "GET", "/v1/openapi.json", nil, 200, &doc)
	for _, f := range doc.Components.Schemas["NodeTakings"].Required {
		if f == "from" || f == "to" {
			t.Errorf("the document requires %q of the takings answer", f)
		}
	}
}
