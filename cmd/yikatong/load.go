package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/yikatong/yikatong/internal/loadgen"
	"github.com/yikatong/yikatong/internal/node"
)

func init() {
	register("load", "drive a node on this machine with simulated terminals and residents; print throughput and latency", cmdLoad)
}

const loadUsage = `usage: yikatong load --demo demo.json [--node URL] [flags]
       yikatong load --serve-bare 127.0.0.1:PORT

Drives a node on this machine (127.0.0.1 only) with simulated terminals and
residents, shows progress on stderr and prints throughput, latency
percentiles (per request) and decline reasons. Stops by itself.

  --node URL          the node (default: base_url of demo.json)
  --demo FILE         demo.json of the node (terminals, staff, residents)
  --mix M             peak | identify | charge | offline, or a ceiling:
                      bare (POST /bare of a --serve-bare process) | sm2
                      (bare SM2 code verification on every core)  [peak]
  --duration D        how long to run (at most 10m)                [20s]
  --concurrency N     closed-loop workers                          [64]
  --max-requests N    stop after N requests (0: duration only)     [0]
  --residents N       load residents to enrol and fund first        [200]
  --codes N           e-codes to issue before the clock starts (-1: the mix's default) [-1]
  --batch N           records per offline batch                    [1000]
  --terminals N       spread the scans over N terminals: the demo's and
                      new ones onboarded first, anew on every run (a
                      terminal's token is shown once), so use a throwaway
                      demo node (0: the demo's only)                 [0]
  --client C          how the timed requests are sent: wire (each worker
                      writes HTTP/1.1 on its own connection; cheap, so the
                      node keeps the machine's CPU) | std (Go's net/http
                      client)                                      [wire]
  --json              print the result as one JSON object
  --serve-bare ADDR   serve the bare HTTP ceiling endpoint until SIGINT/SIGTERM
`

func cmdLoad(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	nodeURL := fs.String("node", "", "")
	demoPath := fs.String("demo", "", "")
	mix := fs.String("mix", loadgen.MixPeak, "")
	duration := fs.Duration("duration", 20*time.Second, "")
	conc := fs.Int("concurrency", 64, "")
	maxReq := fs.Int64("max-requests", 0, "")
	residents := fs.Int("residents", 200, "")
	codes := fs.Int("codes", -1, "")
	batch := fs.Int("batch", 1000, "")
	terminals := fs.Int("terminals", 0, "")
	client := fs.String("client", loadgen.ClientWire, "")
	asJSON := fs.Bool("json", false, "")
	bare := fs.String("serve-bare", "", "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, loadUsage)
			return 0
		}
		fmt.Fprintf(stderr, "yikatong load: %v\n\n%s", err, loadUsage)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "yikatong load: unexpected argument %q\n\n%s", fs.Arg(0), loadUsage)
		return 2
	}
	for _, bad := range []struct {
		ok   bool
		flag string
		v    any
		want string
	}{
		{*duration > 0, "--duration", *duration, "a positive duration such as 20s"},
		{*conc > 0, "--concurrency", *conc, "at least 1 worker"},
		{*maxReq >= 0, "--max-requests", *maxReq, "0 (no limit) or more"},
		{*residents >= 0, "--residents", *residents, "0 or more"},
		{*codes >= -1, "--codes", *codes, "-1 (the mix's default), 0 or more"},
		{*batch > 0, "--batch", *batch, "at least 1 record"},
		{*client == loadgen.ClientWire || *client == loadgen.ClientStd, "--client", *client, "wire or std"},
		{*terminals >= 0 && *terminals <= loadgen.MaxTerminals, "--terminals", *terminals, fmt.Sprintf("0 to %d", loadgen.MaxTerminals)},
	} {
		if !bad.ok {
			fmt.Fprintf(stderr, "yikatong load: %s %v: want %s\n\n%s", bad.flag, bad.v, bad.want, loadUsage)
			return 2
		}
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if *bare != "" {
		return serveBare(ctx, *bare, stderr)
	}
	o := loadgen.Options{Node: *nodeURL, Mix: *mix, Duration: *duration, Concurrency: *conc, MaxRequests: *maxReq,
		Residents: *residents, Codes: *codes, BatchSize: *batch, Terminals: *terminals, Client: *client, Progress: stderr}
	if *demoPath != "" {
		d, err := node.ReadDemoFile(*demoPath)
		if err != nil {
			fmt.Fprintf(stderr, "yikatong load: %v\n", err)
			return 2
		}
		o.Demo = d
		setDefault(&o.Node, d.BaseURL)
	} else if *mix != loadgen.MixSM2 && *mix != loadgen.MixBare {
		fmt.Fprint(stderr, "yikatong load: need --demo demo.json\n\n"+loadUsage)
		return 2
	}
	if o.Node == "" && *mix != loadgen.MixSM2 {
		fmt.Fprint(stderr, "yikatong load: need --node URL\n\n"+loadUsage)
		return 2
	}
	if *mix == loadgen.MixSM2 && o.Node == "" {
		o.Node = "http://127.0.0.1:1" // unused
	}
	res, err := loadgen.Run(ctx, o)
	if err != nil {
		fmt.Fprintf(stderr, "yikatong load: %v\n", err)
		return 1
	}
	if *asJSON {
		b, _ := json.Marshal(res)
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		res.Print(stdout)
	}
	return 0
}

func serveBare(ctx context.Context, addr string, stderr io.Writer) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintf(stderr, "yikatong load: %v\n", err)
		return 1
	}
	if err := loadgen.CheckLoopback("http://" + ln.Addr().String()); err != nil {
		ln.Close()
		fmt.Fprintf(stderr, "yikatong load: %v\n", err)
		return 2
	}
	srv := &http.Server{Handler: loadgen.BareHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		srv.Shutdown(sctx)
	}()
	fmt.Fprintf(stderr, "yikatong load: bare endpoint on http://%s/bare\n", ln.Addr())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "yikatong load: %v\n", err)
		return 1
	}
	return 0
}
