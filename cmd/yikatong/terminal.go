package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/termsim"
)

func init() {
	register("terminal", "run a simulated terminal: one scan online or offline, or upload its offline queue", cmdTerminal)
}

const terminalUsage = `usage: yikatong terminal [upload] [flags]

A simulated scanning terminal.

  yikatong terminal --node URL --token T --scenario S (--code CODE | --card NUMBER) [--amount-fen N]
      online: posts the scan to /v1/scans and prints the node's decision
  yikatong terminal --offline --id ID --batch-key K ... (--code CODE | --card NUMBER)
      offline: decides alone with the node-signed trust bundle (refreshed
      from /v1/trust when older than --trust-refresh and the node answers;
      its signature is checked against the node key pinned on first use or
      given with --node-key), refuses with trust_expired once the bundle has
      expired, and queues accepted scans in the --state file
  yikatong terminal upload --id ID --batch-key K [--state FILE]
      signs the queued records as one batch and uploads them to
      /v1/terminals/{id}/batches; prints the per-record report

  --demo FILE       take --node, --token, --id and --batch-key from demo.json
                    (the terminal of --scenario)
  --state FILE      offline state (default yikatong-terminal-ID.json)
  --sync            offline: after the scan, upload the queue if the node answers
  --after-seq N     offline: number records after N (a replacement device: the
                    offline_seq its reissued credentials came with)
  --key K           online: idempotency key (default: a random one)

Exit status: 0 accepted (or upload done), 1 declined, 2 usage or node error.
`

func cmdTerminal(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	upload := false
	if len(args) > 0 && args[0] == "upload" {
		upload, args = true, args[1:]
	}
	fs := flag.NewFlagSet("terminal", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	nodeURL := fs.String("node", "", "")
	token := fs.String("token", "", "")
	id := fs.String("id", "", "")
	scenario := fs.String("scenario", "", "")
	offline := fs.Bool("offline", false, "")
	batchKey := fs.String("batch-key", "", "")
	refresh := fs.Duration("trust-refresh", time.Minute, "")
	code := fs.String("code", "", "")
	card := fs.String("card", "", "")
	amount := fs.Int64("amount-fen", 0, "")
	demoPath := fs.String("demo", "", "")
	statePath := fs.String("state", "", "")
	nodeKeyFile := fs.String("node-key", "", "")
	sync := fs.Bool("sync", false, "")
	key := fs.String("key", "", "")
	afterSeq := fs.Int64("after-seq", 0, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, terminalUsage)
			return 0
		}
		fmt.Fprintf(stderr, "yikatong terminal: %v\n\n%s", err, terminalUsage)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "yikatong terminal: unexpected argument %q\n\n%s", fs.Arg(0), terminalUsage)
		return 2
	}
	if *demoPath != "" {
		d, err := node.ReadDemoFile(*demoPath)
		if err != nil {
			fmt.Fprintf(stderr, "yikatong terminal: %v\n", err)
			return 2
		}
		// --id names the terminal (its token and batch key go with it);
		// otherwise the first terminal of --scenario.
		var found *node.DemoTerminal
		for i, t := range d.Terminals {
			if *id != "" && t.ID == *id || *id == "" && t.Scenario == *scenario {
				found = &d.Terminals[i]
				break
			}
		}
		switch {
		case found == nil && *id != "":
			fmt.Fprintf(stderr, "yikatong terminal: %s has no terminal %q\n", *demoPath, *id)
			return 2
		case found == nil:
			fmt.Fprintf(stderr, "yikatong terminal: %s has no terminal for scenario %q\n", *demoPath, *scenario)
			return 2
		}
		setDefault(nodeURL, d.BaseURL)
		setDefault(token, found.Token)
		setDefault(id, found.ID)
		setDefault(batchKey, found.BatchKey)
		setDefault(scenario, found.Scenario)
	}
	if *nodeURL == "" || *token == "" {
		fmt.Fprint(stderr, "yikatong terminal: need --node and --token (or --demo)\n\n"+terminalUsage)
		return 2
	}
	if !upload {
		if *scenario == "" || (*code == "") == (*card == "") {
			fmt.Fprint(stderr, "yikatong terminal: need --scenario and exactly one of --code and --card\n\n"+terminalUsage)
			return 2
		}
		if *amount < 0 {
			fmt.Fprint(stderr, "yikatong terminal: --amount-fen must not be negative\n")
			return 2
		}
	}
	if (upload || *offline) && (*id == "" || *batchKey == "" && (upload || *sync)) {
		fmt.Fprint(stderr, "yikatong terminal: offline mode and upload need --id and --batch-key (or --demo)\n\n"+terminalUsage)
		return 2
	}
	if *statePath == "" && (upload || *offline) {
		*statePath = "yikatong-terminal-" + *id + ".json"
	}
	if *afterSeq < 0 {
		fmt.Fprint(stderr, "yikatong terminal: --after-seq must not be negative\n")
		return 2
	}
	cfg := termsim.Config{Node: *nodeURL, Token: *token, ID: *id, Scenario: *scenario, BatchKey: *batchKey, StatePath: *statePath, TrustRefresh: *refresh, AfterSeq: *afterSeq}
	if *nodeKeyFile != "" {
		b, err := os.ReadFile(*nodeKeyFile)
		var j ecode.JWK
		if err == nil {
			err = json.Unmarshal(b, &j)
		}
		var k ecode.PublicKey
		if err == nil {
			k, err = ecode.PublicKeyFromJWK(j)
		}
		if err != nil {
			fmt.Fprintf(stderr, "yikatong terminal: --node-key %s: %v\n", *nodeKeyFile, err)
			return 2
		}
		cfg.NodeKey = &k
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	t, err := termsim.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "yikatong terminal: %v\n", err)
		return 2
	}
	switch {
	case upload:
		return terminalUpload(ctx, t, stdout, stderr)
	case !*offline:
		d, err := t.ScanOnline(ctx, *key, *code, *card, *amount)
		if err != nil {
			return terminalError(stdout, stderr, err)
		}
		writeJSONLine(stdout, d)
		return decisionExit(d)
	}
	// Offline: refresh the trust bundle if it is due and the node answers;
	// a node that does not answer is what offline mode is for.
	if err := t.RefreshTrust(ctx, false); err != nil && apperr.CodeOf(err) != apperr.Unavailable {
		fmt.Fprintf(stderr, "yikatong terminal: trust bundle: %v\n", err)
	}
	d := t.DecideOffline(*code, *card, *amount)
	if err := t.Save(); err != nil {
		fmt.Fprintf(stderr, "yikatong terminal: saving %s: %v\n", *statePath, err)
		return 2
	}
	writeJSONLine(stdout, d)
	if *sync {
		if rep, err := t.Upload(ctx); err == nil {
			t.Save()
			writeJSONLine(stdout, rep)
		} else {
			fmt.Fprintf(stderr, "yikatong terminal: upload postponed: %v\n", err)
		}
	}
	return decisionExit(d)
}

func terminalUpload(ctx context.Context, t *termsim.Terminal, stdout, stderr io.Writer) int {
	rep, err := t.Upload(ctx)
	if err != nil {
		return terminalError(stdout, stderr, err)
	}
	if err := t.Save(); err != nil {
		fmt.Fprintf(stderr, "yikatong terminal: saving the state: %v\n", err)
		return 2
	}
	writeJSONLine(stdout, rep)
	return 0
}

func setDefault(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func decisionExit(d termsim.Decision) int {
	if d.Decision == scan.Accepted {
		return 0
	}
	return 1
}

func terminalError(stdout, stderr io.Writer, err error) int {
	writeJSONLine(stdout, map[string]any{"error": apperr.ToJSON(err)})
	fmt.Fprintf(stderr, "yikatong terminal: %v\n", err)
	return 2
}

func writeJSONLine(w io.Writer, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(w, "%s\n", b)
}
