package node_test

import (
	"database/sql"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// TestOpsDemoInterruptedFirstStart: a first `serve --demo` stopped while it
// created the demo city leaves a node without demo.json. The next
// `serve --demo` must not claim that demo.json holds the sign-in details
// when it wrote none: it either writes it, or says plainly that it did
// not and why.
func TestOpsDemoInterruptedFirstStart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped with -short")
	}
	for _, table := range []string{"residents", "staff_users"} {
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
			addr := nodetest.FreeAddr(t)
			cmd := exec.Command(nodetest.Binary(t), "serve", "--addr", addr, "--data", dir, "--demo", "--log-level", "warn")
			var out syncBuffer
			cmd.Stdout, cmd.Stderr = &out, &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			serving := false
		wait:
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				select {
				case <-done:
					break wait
				default:
				}
				if strings.Contains(out.String(), "serving on") || time.Now().After(deadline) {
					serving = true
					cmd.Process.Signal(os.Interrupt)
					<-done
					break wait
				}
			}
			_, statErr := os.Stat(filepath.Join(dir, "demo.json"))
			said := out.String()
			switch {
			case statErr == nil:
				// written: fine
			case strings.Contains(said, "sign-in details in"):
				t.Fatalf("serve says the sign-in details are in demo.json, which it did not write (serving: %v):\n%s", serving, said)
			case strings.Contains(said, "goroutine "):
				t.Fatalf("a stack trace:\n%s", said)
			case !strings.Contains(said, "demo.json"):
				t.Fatalf("no demo.json and no word about it (serving: %v):\n%s", serving, said)
			}
			t.Logf("serving %v:\n%s", serving, said)
		})
	}
}
