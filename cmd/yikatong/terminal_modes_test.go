package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/termsim"
)

// terminalRun runs `yikatong ARGS…` and returns the exit status, the
// first JSON line of stdout (nil if none) and stdout and stderr together.
func terminalRun(t *testing.T, args ...string) (int, map[string]any, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errb)
	var v map[string]any
	if line, _, _ := strings.Cut(out.String(), "\n"); line != "" {
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("%v: output %q is not JSON", args, out.String())
		}
	}
	return code, v, out.String() + errb.String()
}

// TestTerminalUsageDescribesEveryFlag: the flag list of `yikatong
// terminal -h` describes every flag the command takes.
func TestTerminalUsageDescribesEveryFlag(t *testing.T) {
	newTerminalFlags().fs.VisitAll(func(f *flag.Flag) {
		if !regexp.MustCompile(`(?m)^  --` + regexp.QuoteMeta(f.Name) + ` `).MatchString(terminalUsage) {
			t.Errorf("the usage's flag list does not describe --%s", f.Name)
		}
	})
}

// TestTerminalUsageLinesWork runs the command lines `yikatong terminal -h`
// prints, as printed (placeholders filled in, optional parts left out),
// against a node: each mode needs what its line gives and no more. The
// offline line has no token (the trust bundle and the scenario are
// public); upload and --sync have one (the batch upload is not).
func TestTerminalUsageLinesWork(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	bus := n.Demo.Terminals[0]
	for _, tm := range n.Demo.Terminals {
		if tm.Scenario == "transit.bus" {
			bus = tm
			break
		}
	}
	card := n.Demo.Residents[0].CardNumber
	state := filepath.Join(t.TempDir(), "bus.json")
	fill := strings.NewReplacer("URL", n.URL, "T", bus.Token, "ID", bus.ID, "K", bus.BatchKey, "S", bus.Scenario)
	optional := regexp.MustCompile(`\[[^\]]*\]`)
	var lines []string
	for _, l := range strings.Split(terminalUsage, "\n") {
		if strings.HasPrefix(l, "  yikatong terminal ") {
			lines = append(lines, l)
		}
	}
	if len(lines) < 3 {
		t.Fatalf("usage lines: %q", lines)
	}
	for i, l := range lines {
		l = optional.ReplaceAllString(l, "")
		l = strings.ReplaceAll(l, "(--code CODE | --card NUMBER)", "--card "+card)
		var args []string
		for _, w := range strings.Fields(l)[1:] {
			args = append(args, fill.Replace(w))
		}
		if strings.Contains(l, "--offline") || strings.Contains(l, "upload") {
			args = append(args, "--state", state)
		}
		code, v, out := terminalRun(t, args...)
		if code != 0 {
			t.Fatalf("usage line %d %q as printed: exit %d\n%s", i, lines[i], code, out)
		}
		if strings.Contains(l, " upload ") && v["records"] == nil {
			t.Fatalf("upload: %s", out)
		}
	}
	// What a mode needs and lacks is named.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--offline", "--id", bus.ID, "--scenario", "transit.bus", "--card", card}, "--offline needs --node"},
		{[]string{"--offline", "--sync", "--node", n.URL, "--id", bus.ID, "--batch-key", bus.BatchKey, "--scenario", "transit.bus", "--card", card}, "--offline --sync needs --token"},
		{[]string{"upload", "--node", n.URL, "--id", bus.ID, "--batch-key", bus.BatchKey}, "upload needs --token"},
		{[]string{"upload", "--node", n.URL, "--token", bus.Token, "--id", bus.ID}, "upload needs --batch-key"},
		{[]string{"--node", n.URL, "--scenario", "transit.bus", "--card", card}, "needs --token"},
	} {
		code, _, out := terminalRun(t, append([]string{"terminal"}, c.args...)...)
		if code != 2 || !strings.Contains(out, c.want) {
			t.Fatalf("%v: exit %d, want 2 and %q:\n%s", c.args, code, c.want, out)
		}
	}
}

// TestCmdTerminalRefusesScenarioNotOffline: a scenario that may not run
// offline (medical.outpatient) is declined at the gate (exit 1,
// forbidden, in both languages), not accepted and rejected on upload.
func TestCmdTerminalRefusesScenarioNotOffline(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	demo := filepath.Join(n.Dir, "demo.json")
	card := n.Demo.Residents[0].CardNumber
	state := filepath.Join(t.TempDir(), "hospital.json")
	code, v, out := terminalRun(t, "terminal", "--demo", demo, "--scenario", "medical.outpatient", "--offline", "--state", state, "--card", card)
	if code != 1 || v["decision"] != "declined" || v["reason"] != "forbidden" || !strings.Contains(out, "may not run offline") || !strings.Contains(out, "不允许脱机") {
		t.Fatalf("medical.outpatient offline: exit %d %s", code, out)
	}
	if code, v, out = terminalRun(t, "terminal", "upload", "--demo", demo, "--scenario", "medical.outpatient", "--state", state); code != 0 || v["records"] != nil && v["records"] != 0.0 {
		t.Fatalf("upload after the refusal: exit %d %s", code, out)
	}
}

// TestCmdTerminalUploadNodeDown: an upload the node does not take keeps
// the queue and says to run upload again (no idempotency key: upload
// takes none).
func TestCmdTerminalUploadNodeDown(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	demo := filepath.Join(n.Dir, "demo.json")
	card := n.Demo.Residents[0].CardNumber
	// Queue a bus ride, then upload with the node down.
	state := filepath.Join(t.TempDir(), "bus.json")
	if code, v, out := terminalRun(t, "terminal", "--demo", demo, "--scenario", "transit.bus", "--offline", "--state", state, "--card", card); code != 0 || v["queued"] != 1.0 {
		t.Fatalf("bus offline: exit %d %s", code, out)
	}
	down := []string{"--demo", demo, "--scenario", "transit.bus", "--node", "http://127.0.0.1:1", "--state", state}
	code, v, out := terminalRun(t, append([]string{"terminal", "upload"}, down...)...)
	if code != 2 || strings.Contains(out, "idempotency") || strings.Contains(out, "幂等") ||
		!strings.Contains(out, "run yikatong terminal upload again") || !strings.Contains(out, "再次运行 yikatong terminal upload") || !strings.Contains(out, "the queue (1 record) stays in "+state) {
		t.Fatalf("upload with the node down: exit %d %s", code, out)
	}
	if e, _ := v["error"].(map[string]any); e["code"] != "unavailable" {
		t.Fatalf("upload with the node down: %s", out)
	}
	b, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	var st termsim.State
	if err := json.Unmarshal(b, &st); err != nil || len(st.Queue) != 1 {
		t.Fatalf("the queue after a failed upload: %d records, %v", len(st.Queue), err)
	}
	// --sync with the node down: the scan is accepted on the bundle held,
	// the upload postponed with the same advice.
	code, v, out = terminalRun(t, append([]string{"terminal", "--offline", "--sync", "--card", card}, down...)...)
	if code != 0 || v["queued"] != 2.0 || strings.Contains(out, "idempotency") || !strings.Contains(out, "upload postponed") || !strings.Contains(out, "the queue (2 records) stays in "+state) {
		t.Fatalf("--sync with the node down: exit %d %s", code, out)
	}
	// The node answers again: upload as advised.
	if code, v, out = terminalRun(t, "terminal", "upload", "--demo", demo, "--scenario", "transit.bus", "--state", state); code != 0 || v["applied"] != 2.0 {
		t.Fatalf("upload again: exit %d %s", code, out)
	}
}
