package node_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	_ "modernc.org/sqlite"
)

// TestServeDemoFirstStartRestartAndStop runs the real binary as the README
// does: `serve --demo` on an empty data dir serves /healthz and writes
// demo.json within 15 s, stops cleanly on SIGINT, and a second start reuses
// the data (same residents, the demo tokens still work).
func TestServeDemoFirstStartRestartAndStop(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	start := time.Now()
	p := nodetest.StartProcess(t, dir, "--demo")
	demoPath := filepath.Join(dir, "demo.json")
	for time.Since(start) < 15*time.Second {
		if _, err := os.Stat(demoPath); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	took := time.Since(start)
	if took > 15*time.Second {
		t.Fatalf("healthz + demo.json took %v", took)
	}
	t.Logf("first start with demo: %v", took)
	d1, err := node.ReadDemoFile(demoPath)
	if err != nil {
		t.Fatal(err)
	}
	if d1.BaseURL != p.URL || len(d1.Residents) < 3 || len(d1.Terminals) == 0 {
		t.Fatalf("demo.json: base %s residents %d terminals %d", d1.BaseURL, len(d1.Residents), len(d1.Terminals))
	}
	kinds := map[string]bool{}
	for _, term := range d1.Terminals {
		kinds[strings.SplitN(term.Scenario, ".", 2)[0]] = true
	}
	for _, want := range []string{"transit", "library", "medical"} {
		if !kinds[want] {
			t.Errorf("demo has no %s terminal: %v", want, kinds)
		}
	}
	info, err := os.Stat(filepath.Join(dir, "master.key"))
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("master key: %v %v", info, err)
	}
	if err := p.Terminate(); err != nil {
		t.Fatalf("SIGINT: %v\n%s", err, p.Stderr)
	}
	if !strings.Contains(p.Stderr.String(), "yikatong: stopped") {
		t.Fatalf("no clean stop: %s", p.Stderr)
	}

	// The offline tools work on the stopped node's data.
	out, code := runBinary(t, "trust", "export", "--data", dir)
	var bundle struct {
		Issuer string            `json:"issuer"`
		Keys   []json.RawMessage `json:"keys"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &bundle) != nil || bundle.Issuer != "CN-410100" || len(bundle.Keys) != 1 {
		t.Fatalf("trust export: exit %d: %.300s", code, out)
	}
	out, code = runBinary(t, "keys", "rotate", "--data", dir)
	if code != 0 || !strings.Contains(out, `"kid"`) {
		t.Fatalf("keys rotate: exit %d: %s", code, out)
	}
	out, _ = runBinary(t, "trust", "export", "--data", dir)
	if json.Unmarshal([]byte(strings.SplitN(out, "\n", 2)[0]), &bundle) != nil || len(bundle.Keys) != 2 {
		t.Fatalf("after rotation the bundle has %d keys: %.300s", len(bundle.Keys), out)
	}
	if out, code := runBinary(t, "id", "check", "11010519491231002x"); code != 0 || !strings.Contains(out, `"sex":"F"`) {
		t.Fatalf("id check: %d %s", code, out)
	}

	// Second start: the same city, residents and tokens.
	p2 := nodetest.StartProcess(t, dir, "--demo")
	d2, err := node.ReadDemoFile(demoPath)
	if err != nil {
		t.Fatal(err)
	}
	if d2.Residents[0].CardNumber != d1.Residents[0].CardNumber || d2.BaseURL != p2.URL {
		t.Fatalf("second start did not reuse the demo: %+v", d2.Residents[0])
	}
	req, _ := http.NewRequest("GET", p2.URL+"/v1/ledger/check", nil)
	req.Header.Set("Authorization", "Bearer "+d1.Staff["finance"].Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var chk struct {
		Accounts int64 `json:"accounts"`
		SumFen   int64 `json:"sum_fen"`
		Journal  bool  `json:"journal_ok"`
	}
	json.NewDecoder(resp.Body).Decode(&chk)
	if resp.StatusCode != 200 || chk.SumFen != 0 || !chk.Journal || chk.Accounts < 2000 {
		t.Fatalf("after restart: %d %+v", resp.StatusCode, chk)
	}
	if err := p2.Terminate(); err != nil {
		t.Fatal(err)
	}
}

// TestServeRefusesBadDatabaseURL: a wrong URL or password is a plain
// message and exit 1, not a stack trace.
func TestServeRefusesBadDatabaseURL(t *testing.T) {
	for _, url := range []string{"postgres://bob:sekret@127.0.0.1:1/city?sslmode=disable&connect_timeout=2", "postgres://%zz"} {
		out, code := runBinary(t, "serve", "--addr", "127.0.0.1:0", "--data", t.TempDir(), "--db", url)
		if code != 1 || strings.Contains(out, "goroutine") || strings.Contains(out, "sekret") || !strings.Contains(out, "PostgreSQL") {
			t.Errorf("url %q: exit %d\n%s", url, code, out)
		}
	}
}

// TestServeRefusesBadFlags: a flag value that cannot be meant is a usage
// error (exit 2) naming the flag, before anything is created.
func TestServeRefusesBadFlags(t *testing.T) {
	for _, tc := range []struct{ flag, value, want string }{
		{"--max-conns", "-3", "--max-conns -3"},
		{"--statement-timeout", "-1s", "--statement-timeout -1s"},
		{"--statement-timeout", "0s", "--statement-timeout 0s"},
		{"--log-level", "loud", "--log-level"},
	} {
		data := filepath.Join(t.TempDir(), "data")
		out, code := runBinary(t, "serve", "--addr", "127.0.0.1:0", "--data", data, tc.flag, tc.value)
		if code != 2 || !strings.Contains(out, tc.want) || strings.Contains(out, "goroutine") {
			t.Errorf("%s %s: exit %d\n%s", tc.flag, tc.value, code, out)
		}
		if _, err := os.Stat(data); !os.IsNotExist(err) {
			t.Errorf("%s %s: the data directory was created (%v)", tc.flag, tc.value, err)
		}
	}
}

// A data directory that belongs to a node whose database is elsewhere
// (PostgreSQL, another SQLite path) is refused without --db: starting
// would create an empty city signing codes with the real city's keys.
func TestOpenRefusesADataDirectoryWithoutItsDatabase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	n, err := node.Open(ctx, node.Config{DataDir: dir, DB: filepath.Join(t.TempDir(), "city.db"), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	if _, err := node.Open(ctx, node.Config{DataDir: dir, Logger: quiet}); err == nil || !strings.Contains(err.Error(), "holds no SQLite database") {
		t.Fatalf("reopened without its database: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "yikatong.db")); !os.IsNotExist(err) {
		t.Fatalf("an empty database was created (%v)", err)
	}
	// A node on the default SQLite file reopens as before.
	dir2 := t.TempDir()
	for i := 0; i < 2; i++ {
		n, err := node.Open(ctx, node.Config{DataDir: dir2, Logger: quiet})
		if err != nil {
			t.Fatalf("start %d: %v", i+1, err)
		}
		n.Close()
	}
}

// TestOpenRefusesAnotherMasterKey: a database opened beside another master
// key, or with none, is refused (a new key would make every resident's
// sealed data unreadable), also for a database from before the check
// value, which is then checked against a resident's sealed data.
func TestOpenRefusesAnotherMasterKey(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	open := func() error {
		n, err := node.Open(ctx, node.Config{DataDir: dir, Logger: quiet})
		if err == nil {
			n.Close()
		}
		return err
	}
	n, err := node.Open(ctx, node.Config{DataDir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	n.DemoResidents = 3
	if err := n.EnsureDemo(ctx, "http://127.0.0.1:1", filepath.Join(dir, "demo.json")); err != nil {
		t.Fatal(err)
	}
	n.Close()
	keyFile := filepath.Join(dir, "master.key")
	good, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	other := bytes.Clone(good)
	other[0] ^= 0xff
	check := func(what, want string) {
		t.Helper()
		if err := open(); err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: %v", what, err)
		}
	}
	os.WriteFile(keyFile, other, 0o600)
	check("another key", "not the key of this database")
	os.Remove(keyFile)
	check("no key", "has no master key")
	if _, err := os.Stat(keyFile); !os.IsNotExist(err) {
		t.Fatal("a new master key was created")
	}
	os.WriteFile(keyFile, good, 0o600)
	if err := open(); err != nil {
		t.Fatalf("the right key: %v", err)
	}

	// A database from before the check value: a resident's sealed data
	// tells the right key from another.
	forget := func() {
		db, err := sql.Open("sqlite", filepath.Join(dir, "yikatong.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if _, err := db.Exec(`DELETE FROM node_settings WHERE name = 'vault_check'`); err != nil {
			t.Fatal(err)
		}
	}
	forget()
	os.WriteFile(keyFile, other, 0o600)
	check("another key, no check value", "not the key of this database")
	os.WriteFile(keyFile, good, 0o600)
	forget()
	if err := open(); err != nil {
		t.Fatalf("the right key, no check value: %v", err)
	}
	os.WriteFile(keyFile, other, 0o600)
	check("another key, check value written again", "not the key of this database")
}
