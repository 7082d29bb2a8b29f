package node_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// readOnly makes dir read-only for this process: a read-only bind mount
// when running as root (whom file modes do not stop), else file modes.
func readOnly(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				os.Chmod(p, 0o500)
			}
			return nil
		})
		t.Cleanup(func() {
			filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					os.Chmod(p, 0o700)
				}
				return nil
			})
		})
		return
	}
	if err := syscall.Mount(dir, dir, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	if err := syscall.Mount("", dir, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Skipf("read-only remount: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "probe"), nil, 0o600); err == nil {
		t.Fatal("the directory is still writable")
	}
}

// TestOpsReadOnlyDataDirectory: deploy.md's simplest way to share the data
// directory between the processes of a PostgreSQL city is a read-only
// secret mount. A process starts on it and serves; a SQLite node, whose
// database must be written, refuses with one plain line.
func TestOpsReadOnlyDataDirectory(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	t.Run("postgres", func(t *testing.T) {
		if testing.Short() {
			t.Skip("PostgreSQL")
		}
		dsn := storetest.Postgres(t)
		dir := filepath.Join(t.TempDir(), "data")
		n, err := node.Open(ctx, node.Config{DataDir: dir, DB: dsn, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		n.Close()
		readOnly(t, dir)
		tn := nodetest.Start(t, nodetest.Options{Dir: dir, DB: dsn})
		var bundle struct {
			Keys []any `json:"keys"`
		}
		tn.Client("").JSON(t, "GET", "/v1/trust", nil, 200, &bundle)
		if len(bundle.Keys) != 1 {
			t.Fatalf("trust bundle keys: %v", bundle.Keys)
		}
	})
	t.Run("sqlite", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		n, err := node.Open(ctx, node.Config{DataDir: dir, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		n.Close()
		readOnly(t, dir)
		out, code := runBinary(t, "serve", "--addr", "127.0.0.1:0", "--data", dir)
		if code != 1 || strings.Contains(out, "goroutine") || strings.Count(strings.TrimSpace(out), "\n") > 0 || !strings.Contains(out, "cannot be written") {
			t.Fatalf("serve on a read-only SQLite data directory: exit %d\n%s", code, out)
		}
	})
}
