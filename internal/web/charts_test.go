package web

import (
	"bytes"
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestBarSVG(t *testing.T) {
	for _, data := range [][]kv{{{"prv_a", 200}}, {{"a", 300}, {"b", 100}}, {{"x", 0}}, {{"a", 1}, {"b", 1}, {"c", 1}}} {
		var buf bytes.Buffer
		if err := barSVG(&buf, "title", data, true); err != nil {
			t.Fatalf("%v: %v", data, err)
		}
		if !strings.HasPrefix(buf.String(), "<svg") {
			t.Fatalf("%v: not an SVG: %.100s", data, buf.String())
		}
	}
}

func TestScanCharts(t *testing.T) {
	now := time.Date(2026, 1, 2, 10, 30, 0, 0, time.UTC)
	w := &Web{d: Deps{Now: func() time.Time { return now }, ScanCounts: func(ctx context.Context, since time.Time) ([]ScanCount, error) {
		return []ScanCount{
			{Hour: now.Truncate(time.Hour), Item: 6, Scenario: "transit.bus", Decision: "accepted", N: 3},
			{Hour: now.Truncate(time.Hour).Add(-time.Hour), Item: 7, Scenario: "library.loan", Decision: "declined", Reason: "replayed", N: 1},
		}, nil
	}}}
	for _, name := range []string{"scans-hour", "decisions", "scenarios"} {
		rq := &req{r: httptest.NewRequest("GET", "/", nil), web: w, Lang: "zh"}
		var buf bytes.Buffer
		if err := w.scanChart(rq, &buf, name); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.HasPrefix(buf.String(), "<svg") {
			t.Fatalf("%s: not an SVG: %.100s", name, buf.String())
		}
	}
}
