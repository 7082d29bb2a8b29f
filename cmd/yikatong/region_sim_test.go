package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/federation"
)

// TestRegionSimulate runs `yikatong region simulate` small: three cities
// with the table, two with --json. Both must pass every check, print
// progress on stderr and leave nothing behind.
func TestRegionSimulate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a small region")
	}
	tmp := t.TempDir()
	var out, errb bytes.Buffer
	code := run([]string{"region", "simulate", "--cities", "3", "--refresh", "300ms", "--scans", "40", "--tmp", tmp}, strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	for _, want := range []string{"Region simulation: 3 cities, refresh 300ms", "issuer key rotation (CN-310000), 2 nodes", "member removed (CN-310200), 2 nodes",
		"cross-city scans", "40 of 40 planned", "voided at home", "TOP PAIRS", "CN-310000 / CN-310", "every statement signed by both sides", "all checks passed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "FAILED") {
		t.Errorf("a check failed:\n%s", out.String())
	}
	for _, want := range []string{"simulate: 3 nodes started", "simulate: every node trusts every other (6 directed pairs)", "simulate: settled"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}

	out.Reset()
	errb.Reset()
	code = run([]string{"region", "simulate", "--cities", "2", "--refresh", "300ms", "--scans", "34", "--json", "--tmp", tmp}, strings.NewReader(""), &out, &errb)
	if code != 0 {
		t.Fatalf("--json: exit %d\n%s\n%s", code, out.String(), errb.String())
	}
	var rep federation.SimReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out.String())
	}
	// Two cities: no membership change; scan 16 is a void, 32 an offline ride.
	if !rep.OK || rep.Cities != 2 || rep.Removed != nil || rep.Rotation.Reached != 1 || rep.Day.Scans != 34 ||
		rep.Day.Offline != 1 || rep.Day.Voids < 1 || rep.Day.Agreed != 2 || rep.Day.GrossFen != rep.Day.ChargedFen || rep.Day.GrossFen == 0 {
		t.Errorf("report: %s", out.String())
	}
	if !strings.Contains(out.String(), `"p50_ms": `) {
		t.Errorf("durations are not in milliseconds: %s", out.String())
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

// TestRegionSimulateFlags: bad values are refused before any node starts.
func TestRegionSimulateFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--cities", "1"}, 1, "cities must be between 2 and 200"},
		{[]string{"--refresh", "1ms"}, 1, "refresh interval"},
		{[]string{"--scans", "-3"}, 1, "scans must be"},
		{[]string{"--bogus"}, 2, "flag provided but not defined"},
		{[]string{"extra"}, 2, "unexpected argument"},
	} {
		var out, errb bytes.Buffer
		code := run(append([]string{"region", "simulate"}, c.args...), strings.NewReader(""), &out, &errb)
		if code != c.code || !strings.Contains(errb.String(), c.want) || out.Len() != 0 {
			t.Errorf("%v: exit %d, stderr %q, stdout %q", c.args, code, errb.String(), out.String())
		}
	}
}
