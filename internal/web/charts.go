package web

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"net/http"
	"sort"
	"strings"
	"time"

	chart "github.com/wcharczuk/go-chart/v2"
	"github.com/wcharczuk/go-chart/v2/drawing"

	"github.com/yikatong/yikatong/internal/apperr"
)

// ScanCount is how many scans of one kind happened in one hour.
type ScanCount struct {
	Hour     time.Time
	Item     int
	Scenario string
	Decision string // accepted | declined
	Reason   string // decline reason code
	N        int
}

// The dashboard's pictures are drawn here as SVG by go-chart: scans per
// hour by service item, decisions and decline reasons, takings per
// provider, top scenarios, subsidy paid against budget. Scan figures come
// from Deps.ScanCounts (the scan store's aggregate); money figures are read
// from the ledger journal with plain aggregate SQL (read-only).

type dashData struct {
	Charts   []string
	Takings  []kv
	Subsidy  []programme
	ScansErr string
}

type kv struct {
	Key   string
	Value int64
}

var chartNames = []string{"scans-hour", "decisions", "scenarios", "takings", "subsidy"}

func (w *Web) consoleDashboard(rq *req) error {
	d := dashData{Charts: chartNames}
	ctx := rq.r.Context()
	var err error
	if d.Takings, err = w.takings(ctx); err != nil {
		return err
	}
	if d.Subsidy, err = w.programmes(ctx); err != nil {
		return err
	}
	if w.d.ScanCounts == nil {
		d.ScansErr = rq.ErrText(unavailable("scan statistics"))
	}
	return rq.render(200, "c_dashboard.html", "c.dashboard.title", d)
}

func (w *Web) takings(ctx context.Context) ([]kv, error) {
	m := map[string]int64{}
	add := func(q string, sign int64) error {
		rows, err := w.d.DB.R.QueryContext(ctx, q)
		if err != nil {
			return apperr.Wrap(apperr.Internal, err)
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			var v int64
			if err := rows.Scan(&k, &v); err != nil {
				return apperr.Wrap(apperr.Internal, err)
			}
			m[strings.TrimPrefix(k, "prv:")] += sign * v
		}
		return rows.Err()
	}
	if err := add(`SELECT credit, SUM(amount) FROM ledger_journal WHERE type IN ('transfer','post') AND credit LIKE 'prv:%' GROUP BY credit`, 1); err != nil {
		return nil, err
	}
	if err := add(`SELECT debit, SUM(amount) FROM ledger_journal WHERE type = 'reversal' AND debit LIKE 'prv:%' GROUP BY debit`, -1); err != nil {
		return nil, err
	}
	// Providers by name, not id (two of the same name keep their ids apart).
	names := w.providerNames(ctx)
	byName := map[string]int64{}
	for id, v := range m {
		k := names[id]
		if k == "" {
			k = id
		} else if _, dup := byName[k]; dup {
			k += " (" + id + ")"
		}
		byName[k] += v
	}
	return sortedKV(byName), nil
}

func sortedKV(m map[string]int64) []kv {
	var out []kv
	for k, v := range m {
		out = append(out, kv{k, v})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Value != out[j].Value {
			return out[i].Value > out[j].Value
		}
		return out[i].Key < out[j].Key
	})
	return out
}

var palette = []drawing.Color{
	drawing.ColorFromHex("c0392b"), drawing.ColorFromHex("2471a3"), drawing.ColorFromHex("229954"),
	drawing.ColorFromHex("d68910"), drawing.ColorFromHex("7d3c98"), drawing.ColorFromHex("148f77"),
	drawing.ColorFromHex("5d6d7e"), drawing.ColorFromHex("a04000"),
}

func (w *Web) consoleChart(rq *req) error {
	name := strings.TrimSuffix(rq.r.PathValue("name"), ".svg")
	ctx := rq.r.Context()
	var buf bytes.Buffer
	var err error
	switch name {
	case "takings":
		var t []kv
		if t, err = w.takings(ctx); err == nil {
			err = barSVG(&buf, rq.T("chart.takings"), t, true)
		}
	case "subsidy":
		var s []programme
		if s, err = w.programmes(ctx); err == nil {
			var bars []kv
			for _, r := range s {
				bars = append(bars, kv{r.Label + " " + rq.T("chart.budget"), r.Budget}, kv{r.Label + " " + rq.T("chart.paid"), r.Paid})
			}
			err = barSVG(&buf, rq.T("chart.subsidy"), bars, true)
		}
	case "scans-hour", "decisions", "scenarios":
		err = w.scanChart(rq, &buf, name)
	default:
		return notFound()
	}
	if err != nil {
		return err
	}
	rq.w.Header().Set("Content-Type", "image/svg+xml")
	rq.w.Header().Set("Cache-Control", "no-store")
	_, err = rq.w.Write(buf.Bytes())
	return err
}

func (w *Web) scanChart(rq *req, buf *bytes.Buffer, name string) error {
	title := rq.T("chart." + name)
	if w.d.ScanCounts == nil {
		emptySVG(buf, title, rq.T("chart.nodata"))
		return nil
	}
	now := w.d.Now()
	counts, err := w.d.ScanCounts(rq.r.Context(), now.Add(-24*time.Hour))
	if err != nil {
		return err
	}
	switch name {
	case "decisions":
		m := map[string]int64{}
		for _, c := range counts {
			k := rq.T("chart.accepted")
			if c.Decision != "accepted" {
				k = rq.ReasonText(c.Reason) // the reason's words, not its code
				if k == "" {
					k = rq.T("gate.declined")
				}
			}
			m[k] += int64(c.N)
		}
		return barSVG(buf, title, sortedKV(m), false)
	case "scenarios":
		m := map[string]int64{}
		for _, c := range counts {
			m[rq.ScenarioName(c.Scenario)] += int64(c.N)
		}
		s := sortedKV(m)
		if len(s) > 10 {
			s = s[:10]
		}
		return barSVG(buf, title, s, false)
	}
	// scans-hour: one line per service item over the last 24 hours.
	start := now.Add(-23 * time.Hour).Truncate(time.Hour)
	byItem := map[int][]float64{}
	for _, c := range counts {
		i := int(c.Hour.Sub(start) / time.Hour)
		if i < 0 || i >= 24 {
			continue
		}
		if byItem[c.Item] == nil {
			byItem[c.Item] = make([]float64, 24)
		}
		byItem[c.Item][i] += float64(c.N)
	}
	if len(byItem) == 0 {
		emptySVG(buf, title, rq.T("chart.nodata"))
		return nil
	}
	xs := make([]time.Time, 24)
	for i := range xs {
		xs[i] = start.Add(time.Duration(i) * time.Hour).In(cst)
	}
	items := make([]int, 0, len(byItem))
	for it := range byItem {
		items = append(items, it)
	}
	sort.Ints(items)
	var series []chart.Series
	for k, it := range items {
		series = append(series, chart.TimeSeries{Name: fmt.Sprintf("%s %d", rq.T("chart.item"), it), XValues: xs, YValues: byItem[it],
			Style: chart.Style{StrokeColor: palette[k%len(palette)], StrokeWidth: 2}})
	}
	g := chart.Chart{Title: title, Width: 720, Height: 320, Background: chart.Style{Padding: chart.Box{Top: 40, Right: 20, Left: 20, Bottom: 10}},
		XAxis: chart.XAxis{ValueFormatter: func(v any) string {
			if f, ok := v.(float64); ok {
				return time.Unix(0, int64(f)).In(cst).Format("15:04")
			}
			return ""
		}},
		Series: series}
	g.Elements = []chart.Renderable{chart.Legend(&g)}
	return g.Render(chart.SVG, buf)
}

func barSVG(buf *bytes.Buffer, title string, data []kv, money bool) error {
	var bars []chart.Value
	nonzero := false
	lo, hi := 0.0, 0.0
	for i, d := range data {
		v := float64(d.Value)
		if money {
			v /= 100
		}
		if v != 0 {
			nonzero = true
		}
		lo, hi = min(lo, v), max(hi, v)
		bars = append(bars, chart.Value{Label: d.Key, Value: v, Style: chart.Style{FillColor: palette[i%len(palette)], StrokeColor: palette[i%len(palette)]}})
	}
	if !nonzero {
		emptySVG(buf, title, "—")
		return nil
	}
	// An explicit range from zero: go-chart refuses equal bars otherwise.
	bc := chart.BarChart{Title: title, Width: 720, Height: 320, BarWidth: 40, Bars: bars,
		Background: chart.Style{Padding: chart.Box{Top: 40}},
		YAxis:      chart.YAxis{Range: &chart.ContinuousRange{Min: lo, Max: hi * 1.1}}}
	return bc.Render(chart.SVG, buf)
}

// emptySVG draws a placeholder saying there is nothing to show yet.
func emptySVG(buf *bytes.Buffer, title, msg string) {
	fmt.Fprintf(buf, `<svg xmlns="http://www.w3.org/2000/svg" width="720" height="120" viewBox="0 0 720 120"><rect width="720" height="120" fill="#fafafa" stroke="#ddd"/><text x="360" y="40" font-size="16" text-anchor="middle" font-family="sans-serif">%s</text><text x="360" y="80" font-size="14" fill="#777" text-anchor="middle" font-family="sans-serif">%s</text></svg>`,
		html.EscapeString(title), html.EscapeString(msg))
}

var _ = http.StatusOK
