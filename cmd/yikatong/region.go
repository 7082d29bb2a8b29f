package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/federation"
)

func init() {
	register("region", "region federation: keygen, sign, up (a local demo region), simulate", cmdRegion)
}

// regionFlags adds the serve flags that join a node to a region and
// returns the function that turns them into a federation.Config.
func regionFlags(fs *flag.FlagSet) func() (federation.Config, error) {
	anchor := fs.String("region-anchor", "", "region anchor public key (JWK file); with --region-members joins a region")
	members := fs.String("region-members", "", "signed region member list: a file or an http(s) URL")
	refresh := fs.Duration("region-refresh", federation.DefaultRefresh, "how often to re-read the member list and the peers' trust bundles")
	outbox := fs.Duration("region-outbox", federation.DefaultOutboxEvery, "how often to send queued clearing messages")
	authTimeout := fs.Duration("region-auth-timeout", federation.DefaultAuthTimeout, "how long to wait for a home city's online authorisation")
	risk := fs.Int64("region-risk-limit", federation.DefaultRiskLimitFen, "per-card limit (fen) of charges accepted without the home city")
	maxBackoff := fs.Duration("region-max-backoff", federation.MaxBackoff, "longest pause between deliveries to an unreachable peer")
	return func() (federation.Config, error) {
		cfg := federation.Config{Members: *members, Refresh: *refresh, OutboxEvery: *outbox, AuthTimeout: *authTimeout, RiskLimitFen: *risk, MaxBackoff: *maxBackoff}
		if (*anchor == "") != (*members == "") {
			return cfg, errors.New("--region-anchor and --region-members go together")
		}
		if *anchor == "" {
			return cfg, nil
		}
		b, err := os.ReadFile(*anchor)
		if err != nil {
			return cfg, fmt.Errorf("--region-anchor: %w", err)
		}
		if cfg.Anchor, err = federation.ReadAnchorKey(b); err != nil {
			return cfg, fmt.Errorf("--region-anchor %s: %w", *anchor, err)
		}
		return cfg, nil
	}
}

func cmdRegion(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || isHelp(args[0]) {
		return subcommandUsage(args, "yikatong region keygen|sign|up|simulate [flags] ('yikatong region SUBCOMMAND -h' for its flags)", stdout, stderr)
	}
	switch args[0] {
	case "keygen":
		return regionKeygen(args[1:], stdout, stderr)
	case "sign":
		return regionSign(args[1:], stdout, stderr)
	case "up":
		return regionUp(args[1:], stdout, stderr)
	case "simulate":
		return regionSimulate(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "region: unknown subcommand %q (keygen, sign, up, simulate)\n", args[0])
	return 2
}

// writeAnchor creates an SM2 anchor key: the private key (PEM, 0600) at
// path and its public JWK at path + ".jwk".
func writeAnchor(path string) (ecode.Signer, error) {
	s, err := ecode.GenerateSM2()
	if err != nil {
		return nil, err
	}
	pemBytes, err := ecode.MarshalPrivateKey(s)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(pemBytes); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	j, _ := json.MarshalIndent(s.Public().JWK(), "", "  ")
	return s, os.WriteFile(path+".jwk", append(j, '\n'), 0o644)
}

func readAnchor(path string) (ecode.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ecode.ParsePrivateKey(b)
}

func regionKeygen(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("region keygen", flag.ContinueOnError)
	out := fs.String("out", "region-anchor.key", "private key file to create (its public JWK goes to FILE.jwk)")
	if exit, ok := parseFlags(fs, "yikatong region keygen [--out FILE]", args, stdout, stderr); !ok {
		return exit
	}
	s, err := writeAnchor(*out)
	if err != nil {
		fmt.Fprintf(stderr, "region keygen: %v\n", err)
		return 1
	}
	j, _ := json.Marshal(s.Public().JWK())
	fmt.Fprintf(stdout, "%s\n", j)
	fmt.Fprintf(stderr, "region anchor: private key %s (keep it offline), public key %s.jwk (give it to every node: --region-anchor)\n", *out, *out)
	return 0
}

func regionSign(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("region sign", flag.ContinueOnError)
	anchor := fs.String("anchor", "region-anchor.key", "region anchor private key")
	in := fs.String("in", "", `unsigned member list: {"region":"…","members":[{"city","base_url","node_key":{JWK}}]} ("-" = stdin)`)
	out := fs.String("out", "", "where to write the signed list (default stdout)")
	ttl := fs.Duration("ttl", federation.DefaultMembersTTL, "validity of the signed list")
	if exit, ok := parseFlags(fs, "yikatong region sign [--anchor KEY] [--in LIST.json] [--out FILE] [--ttl D]", args, stdout, stderr); !ok {
		return exit
	}
	s, err := readAnchor(*anchor)
	if err != nil {
		fmt.Fprintf(stderr, "region sign: %v\n", err)
		return 1
	}
	var data []byte
	if *in == "-" || *in == "" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(*in)
	}
	if err != nil {
		fmt.Fprintf(stderr, "region sign: %v\n", err)
		return 1
	}
	var l federation.MemberList
	if err := json.Unmarshal(data, &l); err != nil {
		fmt.Fprintf(stderr, "region sign: the member list is not valid JSON: %v\n", err)
		return 1
	}
	l.Signature, l.Version = nil, ""
	l.IssuedAt = time.Now()
	l.ExpiresAt = l.IssuedAt.Add(*ttl)
	signed, err := federation.SignMembers(l, s)
	if err != nil {
		fmt.Fprintf(stderr, "region sign: %v\n", err)
		return 1
	}
	if *out == "" {
		fmt.Fprintf(stdout, "%s\n", signed)
		return 0
	}
	if err := writeAtomic(*out, signed); err != nil {
		fmt.Fprintf(stderr, "region sign: %v\n", err)
		return 1
	}
	return 0
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// RegionFile is DIR/region.json (CONTRACT.md).
type RegionFile struct {
	Anchor  ecode.JWK    `json:"anchor"`
	Members string       `json:"members"`
	Nodes   []RegionNode `json:"nodes"`
}

// RegionNode is one node of a local region.
type RegionNode struct {
	City    string `json:"city"`
	BaseURL string `json:"base_url"`
	Demo    string `json:"demo"`
	Log     string `json:"log"`
}

func regionUp(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("region up", flag.ContinueOnError)
	cities := fs.String("cities", "CN-310000,CN-330100,CN-340100", "comma-separated city node ids")
	dir := fs.String("data", "./yikatong-region", "region directory (anchor key, member list, one data directory per city)")
	basePort := fs.Int("base-port", 8100, "the first city listens on 127.0.0.1:PORT, the next on PORT+1, …")
	refresh := fs.Duration("refresh", 5*time.Second, "how often nodes re-read the member list and peers' bundles")
	if exit, ok := parseFlags(fs, "yikatong region up [--cities …] [--data DIR] [--base-port 8100] [--refresh 5s]", args, stdout, stderr); !ok {
		return exit
	}
	list := strings.Split(*cities, ",")
	for i := range list {
		list[i] = strings.TrimSpace(list[i])
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		fmt.Fprintf(stderr, "region up: %v\n", err)
		return 1
	}
	abs, _ := filepath.Abs(*dir)
	anchorPath := filepath.Join(abs, "anchor.key")
	anchor, err := readAnchor(anchorPath)
	if errors.Is(err, os.ErrNotExist) {
		anchor, err = writeAnchor(anchorPath)
	}
	if err != nil {
		fmt.Fprintf(stderr, "region up: anchor key: %v\n", err)
		return 1
	}
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(stderr, "region up: %v\n", err)
		return 1
	}
	membersPath := filepath.Join(abs, "members.json")
	type proc struct {
		cmd  *exec.Cmd
		node RegionNode
		done chan error
	}
	var procs []*proc
	stopAll := func() {
		for _, p := range procs {
			if p.cmd.ProcessState == nil {
				p.cmd.Process.Signal(syscall.SIGTERM)
			}
		}
		for _, p := range procs {
			select {
			case <-p.done:
			case <-time.After(20 * time.Second):
				p.cmd.Process.Kill()
				<-p.done
			}
		}
	}
	for i, city := range list {
		data := filepath.Join(abs, city)
		if err := os.MkdirAll(data, 0o700); err != nil {
			fmt.Fprintf(stderr, "region up: %v\n", err)
			stopAll()
			return 1
		}
		addr := fmt.Sprintf("127.0.0.1:%d", *basePort+i)
		logPath := filepath.Join(data, "node.log")
		logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			fmt.Fprintf(stderr, "region up: %v\n", err)
			stopAll()
			return 1
		}
		cmd := exec.Command(exe, "serve", "--demo", "--city", city, "--addr", addr, "--data", data,
			"--region-anchor", anchorPath+".jwk", "--region-members", membersPath, "--region-refresh", refresh.String())
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			logf.Close()
			fmt.Fprintf(stderr, "region up: starting %s: %v\n", city, err)
			stopAll()
			return 1
		}
		p := &proc{cmd: cmd, done: make(chan error, 1), node: RegionNode{City: city, BaseURL: "http://" + addr, Demo: filepath.Join(data, "demo.json"), Log: logPath}}
		go func() { p.done <- cmd.Wait(); logf.Close() }()
		procs = append(procs, p)
	}
	// Wait until every node serves, then sign the member list with their node keys.
	members := make([]federation.Member, len(procs))
	var wg sync.WaitGroup
	errs := make([]error, len(procs))
	for i, p := range procs {
		wg.Add(1)
		go func(i int, p *proc) {
			defer wg.Done()
			members[i], errs[i] = waitNode(ctx, p.node, p.done)
		}(i, p)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			fmt.Fprintf(stderr, "region up: %s: %v (see %s)\n", procs[i].node.City, err, procs[i].node.Log)
			stopAll()
			return 1
		}
	}
	signed, err := federation.SignMembers(federation.MemberList{Region: "local", Members: members}, anchor)
	if err == nil {
		err = writeAtomic(membersPath, signed)
	}
	if err != nil {
		fmt.Fprintf(stderr, "region up: signing the member list: %v\n", err)
		stopAll()
		return 1
	}
	rf := RegionFile{Anchor: anchor.Public().JWK(), Members: membersPath}
	for _, p := range procs {
		rf.Nodes = append(rf.Nodes, p.node)
	}
	b, _ := json.MarshalIndent(rf, "", "  ")
	regionPath := filepath.Join(abs, "region.json")
	if err := writeAtomic(regionPath, append(b, '\n')); err != nil {
		fmt.Fprintf(stderr, "region up: %v\n", err)
		stopAll()
		return 1
	}
	fmt.Fprintf(stdout, "yikatong region up: %d cities federated under anchor %s\n", len(procs), anchor.Public().KidString())
	for _, p := range procs {
		fmt.Fprintf(stdout, "  %s  %s  demo %s  log %s\n", p.node.City, p.node.BaseURL, p.node.Demo, p.node.Log)
	}
	fmt.Fprintf(stdout, "region file %s; member list %s; each node's peers: GET /v1/federation/status. Ctrl-C stops the region.\n", regionPath, membersPath)
	exited := make(chan string, len(procs))
	for _, p := range procs {
		go func(p *proc) {
			err := <-p.done
			p.done <- err
			exited <- p.node.City
		}(p)
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(stderr, "yikatong region: stopping the nodes")
		stopAll()
		return 0
	case city := <-exited:
		fmt.Fprintf(stderr, "region up: node %s exited; stopping the region\n", city)
		stopAll()
		return 1
	}
}

// waitNode waits for a node to serve and returns its member entry.
func waitNode(ctx context.Context, n RegionNode, done chan error) (federation.Member, error) {
	deadline := time.Now().Add(60 * time.Second)
	c := &http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			done <- err
			return federation.Member{}, fmt.Errorf("the node exited: %v", err)
		case <-ctx.Done():
			return federation.Member{}, ctx.Err()
		default:
		}
		if _, err := os.Stat(n.Demo); err == nil {
			resp, err := c.Get(n.BaseURL + "/v1/trust/node-key")
			if err == nil {
				var j ecode.JWK
				err = json.NewDecoder(resp.Body).Decode(&j)
				resp.Body.Close()
				if err == nil && resp.StatusCode == 200 {
					return federation.Member{City: n.City, BaseURL: n.BaseURL, NodeKey: j}, nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return federation.Member{}, errors.New("not serving within 60 s")
}
