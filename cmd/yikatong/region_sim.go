package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/node"
)

// regionSimulate runs `yikatong region simulate`: a whole region of
// in-process nodes (federation.Simulate), progress on stderr, the report
// as a table (or --json) on stdout. Exit 0 when every check passed, 1 when
// one failed or the simulation could not run, 2 for bad flags.
func regionSimulate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("region simulate", flag.ContinueOnError)
	cities := fs.Int("cities", federation.DefaultSimCities, "number of city nodes (in this process, SQLite each, HTTP on 127.0.0.1)")
	refresh := fs.Duration("refresh", federation.DefaultSimRefresh, "every node's member list and trust bundle refresh interval")
	scans := fs.Int("scans", 0, "cross-city scans in the simulated day (default 20 per city)")
	duration := fs.Duration("duration", 10*time.Minute, "longest the day's traffic may run; scans not started by then are left out (0 = no limit)")
	seed := fs.Uint64("seed", 1, "seed of the day's traffic plan")
	workers := fs.Int("workers", federation.DefaultSimWorkers, "terminals scanning at once")
	dir := fs.String("tmp", "", "where to make the temporary region directory (removed at the end; default the system's)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if exit, ok := parseFlags(fs, "yikatong region simulate [--cities 41] [--refresh 2s] [--scans N] [--json] [flags]", args, stdout, stderr); !ok {
		return exit
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "region simulate: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	rep, err := federation.Simulate(ctx, federation.SimOptions{Cities: *cities, Refresh: *refresh, Scans: *scans, Duration: *duration,
		Seed: *seed, Workers: *workers, Dir: *dir, Open: openSimNode}, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "region simulate: %v\n", err)
		return 1
	}
	if *asJSON {
		b, _ := json.MarshalIndent(rep, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
	} else if err := rep.WriteText(stdout); err != nil {
		fmt.Fprintf(stderr, "region simulate: %v\n", err)
		return 1
	}
	if !rep.OK {
		fmt.Fprintln(stderr, "region simulate: some checks failed")
		return 1
	}
	return 0
}

func openSimNode(ctx context.Context, c federation.SimNodeConfig) (*federation.SimNode, error) {
	return node.OpenSimNode(ctx, c, nil)
}
