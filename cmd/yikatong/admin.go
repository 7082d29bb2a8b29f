package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/keys"
	"github.com/yikatong/yikatong/internal/node"
)

func init() {
	register("trust", "print the node's signed trust bundle: yikatong trust export [--data DIR] [--db URL]", cmdTrust)
	register("keys", "rotate the e-code signing key: yikatong keys rotate [--data DIR] [--db URL] [--alg SM2|EdDSA] [--announce 15m]", cmdKeys)
	register("code", "verify an e-code offline: yikatong code verify --trust FILE [--at RFC3339] CODE", cmdCode)
	register("ledger", "check the books: yikatong ledger check [--data DIR] [--db URL]", cmdLedger)
}

// cmdLedger runs the ledger's full check (the books balance, every balance
// equals its postings, the journal's hash chain verifies end to end)
// beside the running node processes, with no time bound but Ctrl-C: the
// check of a large city's journal outlasts any HTTP request (GET
// /v1/ledger/check does the same within one). It prints the result as
// JSON; exit status 0 when the books are right, 1 when not (or on error).
func cmdLedger(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	const synopsis = "yikatong ledger check [--data DIR] [--db URL]"
	if len(args) == 0 || args[0] != "check" {
		return subcommandUsage(args, synopsis, stdout, stderr)
	}
	fs := flag.NewFlagSet("ledger check", flag.ContinueOnError)
	data, db := adminFlags(fs)
	if exit, ok := parseFlags(fs, synopsis, args[1:], stdout, stderr); !ok {
		return exit
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ledger check: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	n, err := openNodeForAdmin(ctx, *data, *db, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "ledger check: %v\n", err)
		return 1
	}
	defer n.Close()
	start := time.Now()
	r, err := n.Ledger.Check(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "ledger check: %v\n", err)
		return 1
	}
	out, _ := json.Marshal(struct {
		OK        bool     `json:"ok"`
		Accounts  int64    `json:"accounts"`
		Transfers int64    `json:"transfers"`
		SumFen    int64    `json:"sum_fen"`
		JournalOK bool     `json:"journal_ok"`
		Problems  []string `json:"problems,omitempty"`
		Seconds   float64  `json:"seconds"`
	}{r.OK(), r.Accounts, r.Transfers, r.SumFen, r.JournalOK, r.Problems, time.Since(start).Seconds()})
	fmt.Fprintf(stdout, "%s\n", out)
	if !r.OK() {
		fmt.Fprintln(stderr, "ledger check: THE BOOKS ARE NOT RIGHT; see problems (账目核对未通过)")
		return 1
	}
	return 0
}

// subcommandUsage answers a command whose one subcommand was not given:
// its usage on stdout for -h/--help (exit 0), else on stderr (exit 2).
func subcommandUsage(args []string, synopsis string, stdout, stderr io.Writer) int {
	if len(args) > 0 && isHelp(args[0]) {
		fmt.Fprintf(stdout, "usage: %s\n", synopsis)
		return 0
	}
	fmt.Fprintf(stderr, "usage: %s\n", synopsis)
	return 2
}

// adminFlags defines the flags of every administrative command that
// opens a node (openNodeForAdmin): --data and --db.
func adminFlags(fs *flag.FlagSet) (data, db *string) {
	data = fs.String("data", "./yikatong-data", "data directory")
	db = fs.String("db", "", "database URL (default: SQLite in the data directory)")
	return data, db
}

// openNodeForAdmin opens the node's data (no HTTP) with quiet logs. It
// never creates a database: without --db the node's SQLite file must be in
// the data directory (a node on PostgreSQL keeps none there, and checking
// or rotating keys in a new empty database would report on, or change, a
// city that does not exist).
func openNodeForAdmin(ctx context.Context, data, db string, stderr io.Writer) (*node.Node, error) {
	if _, err := os.Stat(data); err != nil {
		return nil, fmt.Errorf("no node data at %s (start one with: yikatong serve --data %s) (%s 处没有节点数据；启动节点：yikatong serve --data %s)", data, data, data, data)
	}
	if db == "" {
		if _, err := os.Stat(filepath.Join(data, "yikatong.db")); err != nil {
			return nil, fmt.Errorf("%s holds no SQLite database (yikatong.db): for a node on PostgreSQL give its --db postgres://… (%s 中没有 SQLite 数据库（yikatong.db）：节点使用 PostgreSQL 时请给出其 --db postgres://…)", data, data)
		}
	}
	n, err := node.Open(ctx, node.Config{DataDir: data, DB: db, NoBackground: true, NoMigrate: true, Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	return n, err
}

func cmdTrust(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	const synopsis = "yikatong trust export [--data DIR] [--db URL]"
	if len(args) == 0 || args[0] != "export" {
		return subcommandUsage(args, synopsis, stdout, stderr)
	}
	fs := flag.NewFlagSet("trust export", flag.ContinueOnError)
	data, db := adminFlags(fs)
	if exit, ok := parseFlags(fs, synopsis, args[1:], stdout, stderr); !ok {
		return exit
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	n, err := openNodeForAdmin(ctx, *data, *db, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "trust export: %v\n", err)
		return 1
	}
	defer n.Close()
	b, err := n.TrustBundle(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "trust export: %v\n", err)
		return 1
	}
	stdout.Write(b)
	fmt.Fprintln(stdout)
	return 0
}

func cmdKeys(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	const synopsis = "yikatong keys rotate [--data DIR] [--db URL] [--alg SM2|EdDSA] [--announce 15m]"
	if len(args) == 0 || args[0] != "rotate" {
		return subcommandUsage(args, synopsis, stdout, stderr)
	}
	fs := flag.NewFlagSet("keys rotate", flag.ContinueOnError)
	data, db := adminFlags(fs)
	algName := fs.String("alg", "SM2", "algorithm of the new key: SM2 or EdDSA")
	announce := fs.Duration("announce", keys.DefaultAnnounce, "publish the new key in trust bundles this long before it signs (0: switch at once, for a compromised key)")
	if exit, ok := parseFlags(fs, synopsis, args[1:], stdout, stderr); !ok {
		return exit
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "keys rotate: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *announce < 0 {
		fmt.Fprintln(stderr, "keys rotate: --announce must not be negative")
		return 2
	}
	alg, err := ecode.ParseAlg(*algName)
	if err != nil {
		fmt.Fprintf(stderr, "keys rotate: %v\n", err)
		return 2
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	n, err := openNodeForAdmin(ctx, *data, *db, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "keys rotate: %v\n", err)
		return 1
	}
	defer n.Close()
	kid, at, err := rotateKeys(ctx, *data, n.DB, alg, *announce)
	if err != nil {
		fmt.Fprintf(stderr, "keys rotate: %v\n", err)
		return 1
	}
	// Audited as the API's rotation is, with the host's administrator as
	// the actor (the key is rotated: a failure to audit is only reported).
	if err := n.Auth.Audit(ctx, localAdmin(), "rotate_keys", kid, "active_from="+at.UTC().Format(time.RFC3339)); err != nil {
		fmt.Fprintf(stderr, "keys rotate: the rotation is done but could not be audited: %v\n", err)
	}
	fmt.Fprintf(stdout, "{\"kid\":%q,\"active_from\":%q}\n", kid, at.Format(time.RFC3339Nano))
	if *announce == 0 {
		fmt.Fprintln(stderr, "new signing key", kid, "is current now; running nodes pick it up within 15 s; old codes verify until they expire; terminals refuse its codes until they refresh their trust bundle")
	} else {
		fmt.Fprintln(stderr, "new signing key", kid, "is published in trust bundles now and signs from", at.Format(time.RFC3339), "(in", announce.String()+"); the old key signs until then and verifies for", keys.RetireGrace, "after it")
	}
	return 0
}
