package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node/nodetest"
)

func TestCmdTerminalAndLoad(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 20})
	demo := filepath.Join(n.Dir, "demo.json")
	card := n.Demo.Residents[0].CardNumber
	state := filepath.Join(t.TempDir(), "gate.json")
	runCmd := func(args ...string) (int, map[string]any, string) { return terminalRun(t, args...) }
	// Online scan.
	code, v, out := runCmd("terminal", "--demo", demo, "--scenario", "transit.metro_exit", "--card", card, "--amount-fen", "400")
	if code != 0 || v["decision"] != "accepted" || v["charged_fen"] != 400.0 || v["mode"] != "online" {
		t.Fatalf("online: %d %s", code, out)
	}
	// Online with explicit flags and a bad card: declined, exit 1.
	tm := n.Demo.Terminals[0]
	code, v, out = runCmd("terminal", "--node", n.URL, "--token", tm.Token, "--scenario", tm.Scenario, "--card", "1234567812345678")
	if code != 1 || v["decision"] != "declined" {
		t.Fatalf("bad card: %d %s", code, out)
	}
	// Offline: decides alone and queues; then upload.
	for i := 0; i < 2; i++ {
		code, v, out = runCmd("terminal", "--demo", demo, "--scenario", "transit.bus", "--offline", "--state", state, "--card", card)
		if code != 0 || v["mode"] != "offline" || v["queued"] != float64(i+1) {
			t.Fatalf("offline %d: %d %s", i, code, out)
		}
	}
	code, v, out = runCmd("terminal", "upload", "--demo", demo, "--scenario", "transit.bus", "--state", state)
	if code != 0 || v["applied"] != 2.0 || v["charged_fen"] != 400.0 {
		t.Fatalf("upload: %d %s", code, out)
	}
	// Usage errors.
	if code, _, _ = runCmd("terminal", "--demo", demo, "--scenario", "transit.bus"); code != 2 {
		t.Fatalf("no code or card: exit %d", code)
	}
	if code, _, _ = runCmd("terminal", "--node", n.URL, "--scenario", "transit.bus", "--card", card); code != 2 {
		t.Fatalf("no token: exit %d", code)
	}
	// --id names the terminal: an unknown one is an error, not the first
	// terminal of --scenario under another terminal's id.
	if code, _, out = runCmd("terminal", "--demo", demo, "--id", "trm_nope", "--scenario", "transit.bus", "--card", card); code != 2 || !strings.Contains(out, "trm_nope") {
		t.Fatalf("unknown --id: exit %d %s", code, out)
	}

	// Load: short bounded runs of each mix against the same node; the
	// charge and offline runs spread over 30 terminals, onboarded first.
	terminalsNow := func() int {
		total := 0
		seen := map[string]bool{}
		for _, tm := range n.Demo.Terminals {
			if seen[tm.Provider] {
				continue
			}
			seen[tm.Provider] = true
			var list []struct {
				ID string `json:"id"`
			}
			n.Client(n.Demo.Staff["operator"].Token).JSON(t, "GET", "/v1/providers/"+tm.Provider+"/terminals", nil, 200, &list)
			total += len(list)
		}
		return total
	}
	before := terminalsNow()
	for _, mix := range []string{"charge", "identify", "peak", "offline"} {
		var outb, errb bytes.Buffer
		args := []string{"load", "--demo", demo, "--mix", mix, "--duration", "1500ms", "--concurrency", "8", "--residents", "10", "--codes", "300", "--batch", "50", "--json"}
		spread := mix == "charge" || mix == "offline"
		if spread {
			args = append(args, "--terminals", "30")
		}
		// The online mixes' timed requests go over the wire client by
		// default; identify runs once with net/http's client.
		wantClient := map[string]string{"charge": "wire", "peak": "wire", "identify": "std"}[mix]
		if mix == "identify" {
			args = append(args, "--client", "std")
		}
		if c := run(args, strings.NewReader(""), &outb, &errb); c != 0 {
			t.Fatalf("load %s: exit %d: %s", mix, c, errb.String())
		}
		var res struct {
			Terminals int              `json:"terminals"`
			Client    string           `json:"client"`
			Records   int64            `json:"records"`
			Accepted  int64            `json:"accepted"`
			Errors    int64            `json:"errors"`
			P99       int64            `json:"p99_ns"`
			Rate      float64          `json:"rate_per_s"`
			Reasons   map[string]int64 `json:"reasons"`
		}
		if err := json.Unmarshal(outb.Bytes(), &res); err != nil {
			t.Fatalf("load %s output %q", mix, outb.String())
		}
		if res.Records == 0 || res.Accepted == 0 || res.Errors != 0 || res.P99 <= 0 || res.Rate <= 0 {
			t.Fatalf("load %s: %+v (stderr %s)", mix, res, errb.String())
		}
		if res.Client != wantClient {
			t.Fatalf("load %s: client %q, want %q", mix, res.Client, wantClient)
		}
		if !strings.Contains(errb.String(), "\r") {
			t.Fatalf("load %s: no progress display on stderr", mix)
		}
		// An offline terminal uploads one batch at a time: the offline mix
		// has at least one terminal per caller and scenario (8 × 4 = 32).
		wantSpread := map[string]int{"charge": 30, "offline": 32}[mix]
		if spread && res.Terminals != wantSpread || !spread && (res.Terminals == 0 || res.Terminals > len(n.Demo.Terminals)) {
			t.Fatalf("load %s: spread over %d terminals", mix, res.Terminals)
		}
	}
	// The charge mix's 3 scenarios and the offline mix's 4 have a demo
	// terminal each; the rest of the 30 and the 32 were onboarded.
	if got, want := terminalsNow()-before, (30-3)+(32-4); got != want {
		t.Fatalf("the load runs onboarded %d terminals, want %d", got, want)
	}
	// The books still balance after all that.
	var check struct {
		Sum       int64 `json:"sum_fen"`
		JournalOK bool  `json:"journal_ok"`
	}
	n.Client(n.Demo.Staff["finance"].Token).JSON(t, "GET", "/v1/ledger/check", nil, 200, &check)
	if check.Sum != 0 || !check.JournalOK {
		t.Fatalf("ledger check after load: %+v", check)
	}
	// Refuses a node that is not on this machine, and unbounded runs.
	var outb, errb bytes.Buffer
	if c := run([]string{"load", "--demo", demo, "--node", "http://10.1.2.3:8080"}, strings.NewReader(""), &outb, &errb); c == 0 || !strings.Contains(errb.String(), "this machine") {
		t.Fatalf("non-loopback node: exit %d %s", c, errb.String())
	}
	if c := run([]string{"load", "--demo", demo, "--duration", "2h"}, strings.NewReader(""), &outb, &errb); c == 0 {
		t.Fatal("a 2h run was accepted")
	}
	// Flag values that cannot be meant are usage errors naming the flag.
	for _, bad := range [][]string{{"--concurrency", "0"}, {"--duration", "-1s"}, {"--batch", "0"}, {"--max-requests", "-1"}, {"--residents", "-1"}, {"--codes", "-2"}, {"--terminals", "-1"}, {"--terminals", "20001"}, {"--client", "curl"}} {
		errb.Reset()
		if c := run(append([]string{"load", "--demo", demo}, bad...), strings.NewReader(""), &outb, &errb); c != 2 || !strings.Contains(errb.String(), bad[0]+" "+bad[1]) {
			t.Fatalf("load %v: exit %d %s", bad, c, errb.String())
		}
	}
	// A node that is down fails the run at once, not after its duration.
	errb.Reset()
	start := time.Now()
	if c := run([]string{"load", "--demo", demo, "--node", "http://127.0.0.1:1", "--duration", "5m"}, strings.NewReader(""), &outb, &errb); c != 1 || !strings.Contains(errb.String(), "cannot reach the node at http://127.0.0.1:1") {
		t.Fatalf("node down: exit %d %s", c, errb.String())
	}
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("a run against a node that is down took %v", d)
	}
}
