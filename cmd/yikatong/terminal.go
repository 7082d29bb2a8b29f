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
	"strings"
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

A simulated scanning terminal. Each mode needs:

  yikatong terminal --node URL --token T --scenario S (--code CODE | --card NUMBER) [--amount-fen N] [--key K]
      online: posts the scan to /v1/scans and prints the node's decision
  yikatong terminal --offline --node URL --id ID --scenario S (--code CODE | --card NUMBER) [--amount-fen N] [--state FILE]
      offline: decides alone with the node-signed trust bundle (refreshed
      from /v1/trust when older than --trust-refresh and the node answers;
      it is public, so no token is needed; its signature is checked against
      the node key pinned on first use or given with --node-key), refuses
      with trust_expired once the bundle has expired, refuses a scenario the
      bundle says may not run offline (forbidden) or is disabled
      (scenario_disabled), and queues accepted scans in the --state file
  yikatong terminal --offline --sync --node URL --token T --id ID --batch-key K --scenario S (--code CODE | --card NUMBER)
      offline, then uploads the queue if the node answers (as upload)
  yikatong terminal upload --node URL --token T --id ID --batch-key K [--state FILE]
      signs the queued records as one batch and uploads them to
      /v1/terminals/{id}/batches (authenticated: --token); prints the
      per-record report. A node that does not answer leaves the queue in
      the state file: run upload again later.

  --demo FILE         take --node, --token, --id and --batch-key from demo.json
                      (the terminal --id names, else the first of --scenario)
  --node URL          the node, e.g. http://127.0.0.1:8080
  --token T           the terminal's bearer token (online, upload, --sync)
  --id ID             the terminal's id (offline, upload)
  --batch-key K       the terminal's batch signing key (upload, --sync)
  --scenario S        the scenario scanned, e.g. transit.bus
  --code CODE         an e-code (YK1:…; quote it: Base45 has spaces)
  --card NUMBER       a physical card's number
  --amount-fen N      the amount, for scenarios whose terminal sends it
  --offline           decide alone (see above)
  --state FILE        offline state (default yikatong-terminal-ID.json)
  --trust-refresh D   offline: refresh the trust bundle when older than D,
                      if the node answers [1m]
  --node-key FILE     offline: the node's public key as a JWK file (what
                      GET /v1/trust/node-key answers), pinned instead of
                      trusting the first key fetched
  --sync              offline: after the scan, upload the queue if the node answers
  --after-seq N       offline: number records after N (a replacement device: the
                      offline_seq its reissued credentials came with)
  --key K             online: idempotency key (default: a random one)

Exit status: 0 accepted (or upload done), 1 declined, 2 usage or node error.
`

// terminalFlags are the flags of yikatong terminal (every one described
// in terminalUsage).
type terminalFlags struct {
	fs                                              *flag.FlagSet
	node, token, id, scenario, batchKey, code, card *string
	demo, state, nodeKey, key                       *string
	offline, sync                                   *bool
	refresh                                         *time.Duration
	amount, afterSeq                                *int64
}

func newTerminalFlags() *terminalFlags {
	fs := flag.NewFlagSet("terminal", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &terminalFlags{
		fs:       fs,
		node:     fs.String("node", "", ""),
		token:    fs.String("token", "", ""),
		id:       fs.String("id", "", ""),
		scenario: fs.String("scenario", "", ""),
		offline:  fs.Bool("offline", false, ""),
		batchKey: fs.String("batch-key", "", ""),
		refresh:  fs.Duration("trust-refresh", time.Minute, ""),
		code:     fs.String("code", "", ""),
		card:     fs.String("card", "", ""),
		amount:   fs.Int64("amount-fen", 0, ""),
		demo:     fs.String("demo", "", ""),
		state:    fs.String("state", "", ""),
		nodeKey:  fs.String("node-key", "", ""),
		sync:     fs.Bool("sync", false, ""),
		key:      fs.String("key", "", ""),
		afterSeq: fs.Int64("after-seq", 0, ""),
	}
}

// terminalNeeds returns the flags a mode needs that are missing (after
// --demo filled in what it has), or "" when none is.
func terminalNeeds(upload bool, f *terminalFlags) string {
	type need struct {
		name string
		v    string
	}
	needs := []need{{"--node", *f.node}}
	switch {
	case upload:
		// POST /v1/terminals/{id}/batches is authenticated.
		needs = append(needs, need{"--token", *f.token}, need{"--id", *f.id}, need{"--batch-key", *f.batchKey})
	case *f.offline:
		// GET /v1/trust is public: no token,
		// unless the queue is uploaded at once.
		needs = append(needs, need{"--id", *f.id}, need{"--scenario", *f.scenario})
		if *f.sync {
			needs = append(needs, need{"--token", *f.token}, need{"--batch-key", *f.batchKey})
		}
	default:
		needs = append(needs, need{"--token", *f.token}, need{"--scenario", *f.scenario})
	}
	var missing []string
	for _, n := range needs {
		if n.v == "" {
			missing = append(missing, n.name)
		}
	}
	return strings.Join(missing, ", ")
}

func cmdTerminal(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	upload := false
	if len(args) > 0 && args[0] == "upload" {
		upload, args = true, args[1:]
	}
	f := newTerminalFlags()
	fs := f.fs
	nodeURL, token, id, scenario, offline, batchKey := f.node, f.token, f.id, f.scenario, f.offline, f.batchKey
	refresh, code, card, amount, demoPath, statePath := f.refresh, f.code, f.card, f.amount, f.demo, f.state
	nodeKeyFile, sync, key, afterSeq := f.nodeKey, f.sync, f.key, f.afterSeq
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
	if missing := terminalNeeds(upload, f); missing != "" {
		mode := "an online scan"
		switch {
		case upload:
			mode = "upload"
		case *offline && *sync:
			mode = "--offline --sync"
		case *offline:
			mode = "--offline"
		}
		fmt.Fprintf(stderr, "yikatong terminal: %s needs %s (or --demo)\n\n%s", mode, missing, terminalUsage)
		return 2
	}
	if !upload {
		if (*code == "") == (*card == "") {
			fmt.Fprint(stderr, "yikatong terminal: need exactly one of --code and --card\n\n"+terminalUsage)
			return 2
		}
		if *amount < 0 {
			fmt.Fprint(stderr, "yikatong terminal: --amount-fen must not be negative\n")
			return 2
		}
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
		return terminalUpload(ctx, t, *statePath, stdout, stderr)
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
		rep, err := t.Upload(ctx)
		if serr := t.Save(); serr != nil {
			fmt.Fprintf(stderr, "yikatong terminal: saving %s: %v\n", *statePath, serr)
			return 2
		}
		if err == nil {
			writeJSONLine(stdout, rep)
		} else {
			fmt.Fprintf(stderr, "yikatong terminal: upload postponed: %s\n", uploadFailure(err, t, *statePath))
		}
	}
	return decisionExit(d)
}

// terminalUpload uploads the queue. The state is saved also when the
// upload failed part way: the records the node reported on have left
// the queue; the others stay in the state file for the next run.
func terminalUpload(ctx context.Context, t *termsim.Terminal, statePath string, stdout, stderr io.Writer) int {
	rep, err := t.Upload(ctx)
	if serr := t.Save(); serr != nil {
		fmt.Fprintf(stderr, "yikatong terminal: saving %s: %v\n", statePath, serr)
		return 2
	}
	if err != nil {
		e := apperr.As(err)
		if e.Code == apperr.Unavailable {
			// apperr's own text for unavailable speaks of idempotency
			// keys, which upload takes none of: say what to do here.
			en, zh := uploadLaterText(err, t, statePath)
			e = apperr.Newf(apperr.Unavailable, en, zh)
		}
		return terminalError(stdout, stderr, e)
	}
	writeJSONLine(stdout, rep)
	return 0
}

// uploadLaterText says, in English and Chinese, that an upload the node
// did not take can simply be run again: the records stay queued in the
// state file (each record id is applied once, however often it is sent).
func uploadLaterText(err error, t *termsim.Terminal, statePath string) (en, zh string) {
	why := "the node did not answer"
	if e := apperr.As(err); e.Detail != "" {
		why = e.Detail
	} else if c := errors.Unwrap(e); c != nil {
		why = c.Error()
	}
	n := len(t.State().Queue)
	recs := "records"
	if n == 1 {
		recs = "record"
	}
	return fmt.Sprintf("cannot upload now (%s): the queue (%d %s) stays in %s; run yikatong terminal upload again when the node answers", why, n, recs, statePath),
		fmt.Sprintf("暂时无法上传：%d 条待上传记录仍保存在 %s 中，节点恢复后请再次运行 yikatong terminal upload", n, statePath)
}

// uploadFailure is the one-line text of a failed --sync upload.
func uploadFailure(err error, t *termsim.Terminal, statePath string) string {
	if apperr.CodeOf(err) != apperr.Unavailable {
		return err.Error()
	}
	en, zh := uploadLaterText(err, t, statePath)
	return en + " (" + zh + ")"
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
	if e := apperr.As(err); e.DetailZh != "" {
		fmt.Fprintf(stderr, "yikatong terminal: %v (%s)\n", err, e.DetailZh)
	} else {
		fmt.Fprintf(stderr, "yikatong terminal: %v\n", err)
	}
	return 2
}

func writeJSONLine(w io.Writer, v any) {
	b, _ := json.Marshal(v)
	fmt.Fprintf(w, "%s\n", b)
}
