package main

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/vault"
)

// TestNodeOpenMessagesBilingual: what a city's staff see when a node's
// data cannot be opened — another city's data, a data directory without
// its SQLite database, a master key others may read, the wrong master
// key — is said in Chinese as well as English, by serve and by the
// administrative commands.
func TestNodeOpenMessagesBilingual(t *testing.T) {
	dir := t.TempDir()
	n, err := node.Open(context.Background(), node.Config{DataDir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	serve := func(args ...string) (int, string) {
		return runCmd(t, append([]string{"serve", "--addr", "127.0.0.1:0", "--log-level", "error"}, args...)...)
	}
	expect := func(what string, code int, msg string, want ...string) {
		t.Helper()
		if code != 1 {
			t.Fatalf("%s: exit %d, want 1: %s", what, code, msg)
		}
		for _, w := range want {
			if !strings.Contains(msg, w) {
				t.Fatalf("%s: %q lacks %q", what, msg, w)
			}
		}
	}

	code, msg := serve("--data", dir, "--city", "CN-310000")
	expect("serve as another city", code, msg, "this data belongs to city "+node.DefaultCity+", not CN-310000", "此数据属于城市 "+node.DefaultCity+"，不是 CN-310000")

	// A data directory with the master key but not the SQLite database.
	keyOnly := t.TempDir()
	key, err := os.ReadFile(filepath.Join(dir, vault.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keyOnly, vault.KeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	code, msg = serve("--data", keyOnly)
	expect("serve without the SQLite database", code, msg, "holds no SQLite database", "没有 SQLite 数据库")
	code, msg = runCmd(t, "ledger", "check", "--data", t.TempDir())
	expect("ledger check without the SQLite database", code, msg, "holds no SQLite database", "没有 SQLite 数据库")

	// The master key readable by others.
	keyFile := filepath.Join(dir, vault.KeyFile)
	if err := os.Chmod(keyFile, 0o644); err != nil {
		t.Fatal(err)
	}
	code, msg = runCmd(t, "ledger", "check", "--data", dir)
	expect("ledger check, master key mode 0644", code, msg, "chmod 600", "可被其他用户访问", "执行 chmod 600")
	code, msg = serve("--data", dir)
	expect("serve, master key mode 0644", code, msg, "chmod 600", "可被其他用户访问")

	// Another master key.
	other := make([]byte, len(key))
	rand.Read(other)
	if err := os.WriteFile(keyFile, other, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(keyFile, 0o600); err != nil {
		t.Fatal(err)
	}
	code, msg = serve("--data", dir)
	expect("serve with another master key", code, msg, "is not the key of this database", "不是此数据库的密钥")
	code, msg = runCmd(t, "staff", "list", "--data", dir)
	expect("staff list with another master key", code, msg, "is not the key of this database", "不是此数据库的密钥")
}
