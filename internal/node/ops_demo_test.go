package node_test

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	_ "modernc.org/sqlite"
)

// killDuringDemo starts `serve --demo` on an empty dir and SIGKILLs it as
// soon as the table named holds a row while demo.json is not yet written
// (the demo city half created: a Ctrl-C, an OOM kill, a power cut during
// the first start). It reports whether it hit that window.
func killDuringDemo(t *testing.T, dir, table string) bool {
	t.Helper()
	cmd := exec.Command(nodetest.Binary(t), "serve", "--addr", nodetest.FreeAddr(t), "--data", dir, "--demo", "--log-level", "warn")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	dbPath := filepath.Join(dir, "yikatong.db")
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "demo.json")); err == nil {
			return false // too late
		}
		if _, err := os.Stat(dbPath); err != nil {
			continue
		}
		db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro&_pragma=busy_timeout(1000)")
		if err != nil {
			continue
		}
		var n int
		err = db.QueryRow(`SELECT COUNT(*) FROM ` + table).Scan(&n)
		db.Close()
		if err == nil && n > 0 {
			cmd.Process.Kill()
			cmd.Wait()
			_, err := os.Stat(filepath.Join(dir, "demo.json"))
			return os.IsNotExist(err)
		}
	}
	return false
}

// TestOpsDemoInterruptedFirstStart: a first `serve --demo` killed while it
// created the demo city (a Ctrl-C, an OOM kill, a power cut) leaves a node
// without demo.json. The next `serve --demo` finishes the demo city: it
// serves, writes demo.json, and the city is whole (every resident enrolled
// with a card and funded once, every terminal there) with every credential
// of demo.json working.
func TestOpsDemoInterruptedFirstStart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped with -short")
	}
	for _, table := range []string{"staff_users", "residents", "ledger_journal", "terminals"} {
		t.Run(table, func(t *testing.T) {
			var dir string
			hit := false
			for try := 0; try < 5 && !hit; try++ {
				dir = filepath.Join(t.TempDir(), "data")
				hit = killDuringDemo(t, dir, table)
			}
			if !hit {
				t.Skip("could not stop the first start while it created the demo city")
			}
			p := nodetest.StartProcess(t, dir, "--demo")
			if _, err := os.Stat(filepath.Join(dir, "demo.json")); err != nil {
				t.Fatalf("the second start serves without demo.json: %v\n%s", err, p.Stderr)
			}
			if err := p.Terminate(); err != nil {
				t.Fatal(err)
			}
			if said := p.Stderr.String(); !strings.Contains(said, "sign-in details in") {
				t.Fatalf("the second start did not say where the sign-in details are:\n%s", said)
			}
			d, err := node.ReadDemoFile(filepath.Join(dir, "demo.json"))
			if err != nil {
				t.Fatal(err)
			}
			got := demoShape(t, demoEnv{dir: dir})
			const n = node.DefaultDemoResidents
			for k, want := range map[string]string{
				"residents": fmt.Sprint(n), "cards": fmt.Sprint(n), "cards active": fmt.Sprint(n), "residents no card": "0",
				"cards with PIN": fmt.Sprint(len(d.Residents)), "staff": "3", "providers": "8",
				"terminals": fmt.Sprint(len(d.Terminals)), "terminals enabled": fmt.Sprint(len(d.Terminals)),
				"tokens staff": "3", "tokens terminal": fmt.Sprint(len(d.Terminals)), "journal": fmt.Sprint(2 * n),
				"accounts resident_wallet":  fmt.Sprintf("%d holding %d", n, n*node.DemoWalletFen),
				"accounts resident_medical": fmt.Sprintf("%d holding %d", n, n*node.DemoMedicalFen),
				"ledger check":              "sum 0 journal ok true",
			} {
				if got[k] != want {
					t.Errorf("%s: %s, want %s", k, got[k], want)
				}
			}
			if len(d.Residents) != 8 || len(d.Terminals) != 11 || len(d.Staff) != 3 {
				t.Errorf("demo.json: %d residents, %d terminals, %d staff", len(d.Residents), len(d.Terminals), len(d.Staff))
			}
			if t.Failed() {
				t.FailNow()
			}
			checkDemoWorks(t, demoEnv{dir: dir})
		})
	}
}
