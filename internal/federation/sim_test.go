package federation_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/node"
)

// openSimNode opens a node.Node for federation.Simulate (the same opener
// as `yikatong region simulate`'s).
func openSimNode(ctx context.Context, c federation.SimNodeConfig) (*federation.SimNode, error) {
	var log *slog.Logger
	if os.Getenv("YIKATONG_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return node.OpenSimNode(ctx, c, log)
}

func failedChecks(r federation.SimReport) string {
	var b strings.Builder
	for _, c := range r.Checks {
		if !c.OK {
			b.WriteString("\n  " + c.Name + ": " + c.Detail)
		}
	}
	return b.String()
}

// TestSimulate runs a small region through federation.Simulate: 4 cities,
// a short refresh and a small day (two voids and two offline acceptances
// among 66 scans), and checks what the report says and that it checked
// what it claims.
func TestSimulate(t *testing.T) {
	parent := t.TempDir()
	var progress bytes.Buffer
	rep, err := federation.Simulate(context.Background(), federation.SimOptions{Cities: 4, Refresh: 300 * time.Millisecond, Scans: 66,
		Workers: 6, Dir: parent, Open: openSimNode}, &progress)
	if err != nil {
		t.Fatalf("simulate: %v\n%s", err, progress.String())
	}
	if !rep.OK {
		t.Fatalf("failed checks:%s\n%s", failedChecks(rep), progress.String())
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Fatalf("the region directory was not removed: %v", ents)
	}
	names := map[string]bool{}
	for _, c := range rep.Checks {
		names[c.Name] = true
	}
	for _, want := range []string{"every ledger checks (sums to zero, journal chain verifies)", "clearing accounts mirror across every pair",
		"reconciliation lists nothing missing or different", "every statement signed by both sides", "statements match the clearing accounts",
		"statements add up to the fares charged", "every void recorded at the home city", "voided medical bills left no money moved"} {
		if !names[want] {
			t.Errorf("no check %q in the report", want)
		}
	}
	if r := rep.Rotation; r.City != "CN-310000" || r.Nodes != 3 || r.Reached != 3 || r.Max <= 0 || r.P50 > r.Max {
		t.Errorf("rotation: %+v", r)
	}
	for _, p := range []*federation.Propagation{&rep.Rotation, rep.Removed, rep.Added} {
		if p == nil {
			continue
		}
		ratio := float64(p.Max) / float64(rep.Refresh)
		if math.Abs(ratio-p.MaxRefreshes) > 1e-9 || p.WithinRefresh != (time.Duration(p.Max) <= time.Duration(rep.Refresh)+federation.PollResolution) {
			t.Errorf("%s: max %v = %.3f refreshes, within one: %v", p.What, p.Max, p.MaxRefreshes, p.WithinRefresh)
		}
	}
	for _, p := range []*federation.Propagation{rep.Removed, rep.Added} {
		if p == nil || p.City != "CN-310300" || p.Reached != 3 || p.Max <= 0 {
			t.Errorf("membership change: %+v", p)
		}
	}
	d := rep.Day
	if d.Planned != 66 || d.Scans != 66 || d.ScanErrors != 0 || d.Accepted+d.Declined != 66 {
		t.Errorf("scans: %+v", d)
	}
	// Scans 16 and 49 are slow-link medical bills, 32 and 65 slow-link rides.
	if d.Offline != 2 || d.Voids < 2 || d.VoidedAtHome != d.Voids || d.Reasons["home_unreachable"] < 2 {
		t.Errorf("voids and offline acceptances: offline %d, voids %d, voided at home %d, reasons %v", d.Offline, d.Voids, d.VoidedAtHome, d.Reasons)
	}
	// A loaded machine (-race) may time out ordinary medical bills too.
	if d.ByScenario["transit.bus"] == 0 || (d.ByScenario["medical.outpatient"] == 0 && d.OverTimeout == 0) {
		t.Errorf("accepted by scenario: %v", d.ByScenario)
	}
	if d.Statements != 12 || d.Agreed != 12 || d.Pairs != 6 || d.Reconciled != 6 || d.Discrepancies != 0 {
		t.Errorf("settlement: %d statements, %d agreed, %d pairs, %d reconciled", d.Statements, d.Agreed, d.Pairs, d.Reconciled)
	}
	if d.GrossFen <= 0 || d.GrossFen != d.ChargedFen || d.Messages <= 0 || len(d.TopPairs) == 0 {
		t.Errorf("totals: gross %d, charged %d, messages %d, top pairs %v", d.GrossFen, d.ChargedFen, d.Messages, d.TopPairs)
	}
	var sum int64
	for _, p := range d.TopPairs {
		if p.A >= p.B || p.Net != p.AOwesB-p.BOwesA {
			t.Errorf("pair %+v", p)
		}
		sum += p.AOwesB + p.BOwesA
	}
	if len(d.TopPairs) < 10 && sum != d.GrossFen {
		t.Errorf("the pairs add up to %d, gross %d", sum, d.GrossFen)
	}
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"issuer key rotation (CN-310000), 3 nodes", "all checks passed", "TOP PAIRS", "member removed (CN-310300)"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, text.String())
		}
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back federation.SimReport
	if err := json.Unmarshal(b, &back); err != nil || back.Day.GrossFen != d.GrossFen || absDiff(time.Duration(back.Rotation.Max), time.Duration(rep.Rotation.Max)) > 50*time.Microsecond {
		t.Errorf("JSON round trip: %v\n%s", err, b)
	}
	if !strings.Contains(progress.String(), "simulate: 4 nodes started") {
		t.Errorf("progress: %s", progress.String())
	}
	t.Logf("%s", text.String())
}

// TestSimulateOptions: bad options are validation_failed, before any node
// starts.
func TestSimulateOptions(t *testing.T) {
	opened := false
	open := func(ctx context.Context, c federation.SimNodeConfig) (*federation.SimNode, error) {
		opened = true
		return nil, io.EOF
	}
	for _, o := range []federation.SimOptions{
		{Cities: 1, Open: open}, {Cities: federation.MaxSimCities + 1, Open: open}, {Refresh: time.Millisecond, Open: open},
		{Scans: -1, Open: open}, {Duration: -time.Second, Open: open}, {Cities: 2},
	} {
		_, err := federation.Simulate(context.Background(), o, nil)
		if apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Errorf("%+v: %v, want validation_failed", o, err)
		}
	}
	if opened {
		t.Error("a node was opened despite bad options")
	}
	// A node that will not open is an error, not a report.
	if _, err := federation.Simulate(context.Background(), federation.SimOptions{Cities: 2, Open: open, Dir: t.TempDir()}, nil); err == nil || !opened {
		t.Errorf("a failing opener: %v", err)
	}
}

// TestSimulateRegion runs the whole region (docs/federation.md,
// "Simulating a region"; `yikatong region simulate` runs the same). It
// runs only with YIKATONG_FED_SIM=1:
//
//	YIKATONG_FED_SIM=1 [YIKATONG_FED_SIM_CITIES=41] [YIKATONG_FED_SIM_REFRESH=2s] [YIKATONG_FED_SIM_SCANS=820] \
//	  go test ./internal/federation -run TestSimulateRegion -v -timeout 30m
//
// Beyond every check of the report it requires the rotated issuer key to
// reach the slowest node within one and a half refresh intervals.
func TestSimulateRegion(t *testing.T) {
	if os.Getenv("YIKATONG_FED_SIM") == "" {
		t.Skip("set YIKATONG_FED_SIM=1")
	}
	opts := federation.SimOptions{Open: openSimNode, Dir: t.TempDir()}
	opts.Cities, _ = strconv.Atoi(os.Getenv("YIKATONG_FED_SIM_CITIES"))
	opts.Scans, _ = strconv.Atoi(os.Getenv("YIKATONG_FED_SIM_SCANS"))
	opts.Refresh, _ = time.ParseDuration(os.Getenv("YIKATONG_FED_SIM_REFRESH"))
	rep, err := federation.Simulate(context.Background(), opts, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	rep.WriteText(&text)
	t.Logf("\n%s", text.String())
	if !rep.OK {
		t.Fatalf("failed checks:%s", failedChecks(rep))
	}
	if refresh := time.Duration(rep.Refresh); time.Duration(rep.Rotation.Max) > refresh+refresh/2 {
		t.Errorf("the slowest node took %v, more than the refresh interval (%v) plus half of it", rep.Rotation.Max, refresh)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// absDiff is |a-b|; the JSON carries milliseconds to one decimal, so a round
// trip may move a duration by up to 50 µs.
func absDiff(a, b time.Duration) time.Duration {
	if a > b {
		return a - b
	}
	return b - a
}
