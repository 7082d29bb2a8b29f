package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/resident"
)

// TestServeDemoRefusesRealCity: `serve --demo` on a data directory that
// holds a city's data but no demo city does not start: it says why, in
// English and Chinese, and writes no demo.json.
func TestServeDemoRefusesRealCity(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	n, err := node.Open(ctx, node.Config{DataDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.Residents.Enrol(ctx, resident.EnrolInput{Name: "王芳", IDNumber: "11010519491231002X", Category: resident.CategoryLocal}); err != nil {
		t.Fatal(err)
	}
	n.Close()
	var stdout, stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"serve", "--addr", "127.0.0.1:0", "--data", dir, "--demo", "--log-level", "error"}, strings.NewReader(""), &stdout, &stderr)
	}()
	var code int
	select {
	case code = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("serve --demo on a city's data directory did not refuse (it serves)")
	}
	said := stderr.String()
	if code != 1 || !strings.Contains(said, "not a demo city") || !strings.Contains(said, "演示城市") || strings.Contains(said, "sign-in details in") {
		t.Fatalf("exit %d:\n%s", code, said)
	}
	if _, err := os.Stat(filepath.Join(dir, "demo.json")); !os.IsNotExist(err) {
		t.Fatalf("demo.json: %v", err)
	}
}
