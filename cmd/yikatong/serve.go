package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/yikatong/yikatong/internal/node"
)

func init() {
	register("serve", "run a city node (--demo creates a demo city on an empty node)", cmdServe)
}

func cmdServe(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	data := fs.String("data", "./yikatong-data", "data directory (keys, master key, SQLite database)")
	db := fs.String("db", "", "database URL (default: SQLite in the data directory; postgres://… selects PostgreSQL)")
	demo := fs.Bool("demo", false, "on an empty node, create a demo city and write DATA/demo.json")
	city := fs.String("city", "", "city node id on first start (default "+node.DefaultCity+")")
	maxConns := fs.Int("max-conns", 0, "database connection pool size (PostgreSQL default 32)")
	stmtTimeout := fs.Duration("statement-timeout", 5*time.Second, "PostgreSQL statement timeout for requests (migrations at start are not bounded)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	regionCfg := regionFlags(fs) // --region-anchor, --region-members, … (region.go)
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof on this address (e.g. 127.0.0.1:6060); off by default")
	if exit, ok := parseFlags(fs, "yikatong serve [--addr 127.0.0.1:8080] [--data DIR] [--db URL] [--demo] [flags]", args, stdout, stderr); !ok {
		return exit
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *maxConns < 0 {
		fmt.Fprintf(stderr, "serve: --max-conns %d: give a positive pool size, or leave it out for the default\n", *maxConns)
		return 2
	}
	if *stmtTimeout <= 0 {
		fmt.Fprintf(stderr, "serve: --statement-timeout %v: give a positive duration such as 5s (every request's statements need a bound)\n", *stmtTimeout)
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "serve: bad --log-level %q\n", *logLevel)
		return 2
	}
	logger := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(stderr, "serve: cannot listen on %s: %v\n", *addr, err)
		return 1
	}
	defer ln.Close()
	if *pprofAddr != "" {
		if err := servePprof(ctx, *pprofAddr); err != nil {
			fmt.Fprintf(stderr, "serve: --pprof: %v\n", err)
			return 1
		}
	}
	baseURL := "http://" + ln.Addr().String()

	fed, err := regionCfg()
	if err != nil {
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 2
	}
	n, err := node.Open(ctx, node.Config{DataDir: *data, DB: *db, City: *city, MaxConns: *maxConns, StatementTimeout: *stmtTimeout, Logger: logger, Federation: fed})
	if err != nil {
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 1
	}
	defer n.Close()
	if *demo {
		path := filepath.Join(*data, "demo.json")
		err := n.EnsureDemo(ctx, baseURL, path)
		switch {
		case err == nil:
			fmt.Fprintf(stderr, "yikatong: demo city %s — sign-in details in %s\n", n.City, path)
		case errors.Is(err, node.ErrDemoFileMissing):
			// The demo city is there, only its sign-in details are not:
			// it serves as it is.
			fmt.Fprintf(stderr, "yikatong: --demo: %v\n", err)
		case errors.Is(err, node.ErrNotDemoCity):
			fmt.Fprintf(stderr, "serve: --demo: %v\n", err)
			return 1
		case ctx.Err() != nil:
			fmt.Fprintf(stderr, "serve: stopped while creating the demo city; `yikatong serve --demo --data %s` finishes it (演示城市创建中途停止；使用同一数据目录再次以 --demo 启动即可继续完成)\n", *data)
			return 1
		default:
			fmt.Fprintf(stderr, "serve: creating the demo city: %v\n", err)
			fmt.Fprintf(stderr, "serve: what was created is kept; `yikatong serve --demo --data %s` again finishes the demo city (已创建的部分会保留；使用同一数据目录再次以 --demo 启动即可继续完成)\n", *data)
			return 1
		}
	}
	fmt.Fprintf(stderr, "yikatong: city %s serving on %s (data %s, database %s %s)\n", n.City, baseURL, *data, n.DB.Dialect, n.DB.Where)
	if err := n.Serve(ctx, ln); err != nil {
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 1
	}
	fmt.Fprintln(stderr, "yikatong: stopped")
	return 0
}

// servePprof serves the profiler on its own listener (never on the API
// address, so it cannot be reached through the load balancer).
func servePprof(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	go func() { <-ctx.Done(); srv.Close() }()
	return nil
}
