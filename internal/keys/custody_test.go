package keys

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// A rotation whose commit is reported as failed although it happened (a
// connection lost during COMMIT, a request cancelled at that instant) must
// not delete the new key's file: the registry names it as the current key,
// and without its file no process of the node could start again.
func TestRotateAmbiguousCommitKeepsKeyFile(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		dir := t.TempDir()
		m, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
		if err != nil {
			t.Fatal(err)
		}
		old := m.Current().Public().KidString()
		registerTx = func(ctx context.Context, db *store.DB, fn func(*sql.Tx) error) error {
			if err := db.Tx(ctx, fn); err != nil {
				return err
			}
			return errors.New("driver: bad connection (during COMMIT)")
		}
		kid, rerr := m.Rotate(ctx)
		registerTx = func(ctx context.Context, db *store.DB, fn func(*sql.Tx) error) error { return db.Tx(ctx, fn) }
		// The rotation did happen: the registry says so.
		if rerr != nil {
			t.Errorf("Rotate: %v (the new key is registered)", rerr)
		} else if m.Current().Public().KidString() != kid {
			t.Errorf("Rotate returned %s but signs with %s", kid, m.Current().Public().KidString())
		}
		// The node starts again, on the key the registry made current.
		m2, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
		if err != nil {
			t.Fatalf("node cannot start after an interrupted rotation: %v", err)
		}
		if kid := m2.Current().Public().KidString(); kid == old {
			t.Fatalf("current key %s is still the old one", kid)
		}
		// and the running process picks it up too
		if err := m.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// A rotation that really failed (nothing registered) leaves no key file.
func TestRotateFailedRemovesKeyFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	m, err := Open(ctx, dir, openDB(t, storetest.SQLite(t)), ecode.AlgSM2)
	if err != nil {
		t.Fatal(err)
	}
	registerTx = func(ctx context.Context, db *store.DB, fn func(*sql.Tx) error) error {
		return errors.New("database is down")
	}
	defer func() {
		registerTx = func(ctx context.Context, db *store.DB, fn func(*sql.Tx) error) error { return db.Tx(ctx, fn) }
	}()
	if _, err := m.Rotate(ctx); err == nil {
		t.Fatal("Rotate reported no error")
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "keys"))
	if len(entries) != 2 {
		t.Fatalf("keys dir holds %d files after a failed rotation, want 2", len(entries))
	}
}

// A keys directory that cannot be made private (a read-only mount whose
// directory others may enter) must not hand out key files that others can
// read: the node refuses, as the vault refuses such a master key.
func TestSharedKeysDirRefusesReadableKeys(t *testing.T) {
	ctx := context.Background()
	dsn := storetest.SQLite(t)
	dir := t.TempDir()
	m, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
	if err != nil {
		t.Fatal(err)
	}
	kdir := filepath.Join(dir, "keys")
	issuer := filepath.Join(kdir, "issuer-"+m.Current().Public().KidString()+".key")
	chmod = func(string, os.FileMode) error { return &os.PathError{Op: "chmod", Path: kdir, Err: syscall.EROFS} }
	defer func() { chmod = os.Chmod }()
	if err := os.Chmod(kdir, 0o755); err != nil {
		t.Fatal(err)
	}

	// Files 0600 (or 0400) in an open directory: nobody else can read them.
	if _, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2); err != nil {
		t.Fatalf("private files in a read-only directory: %v", err)
	}
	for _, f := range []string{filepath.Join(kdir, "node.key"), issuer} {
		os.Chmod(f, 0o644)
		_, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
		if err == nil {
			t.Fatalf("started with %s readable by others in a directory others can enter", filepath.Base(f))
		}
		if !strings.Contains(err.Error(), filepath.Base(f)) {
			t.Fatalf("error does not name the file: %v", err)
		}
		os.Chmod(f, 0o600)
	}
	// In a private directory, a file's own mode exposes nothing (existing
	// deployments with 0644 files under a 0700 directory keep starting).
	chmod = os.Chmod
	os.Chmod(issuer, 0o644)
	if _, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2); err != nil {
		t.Fatalf("0644 file in a private directory: %v", err)
	}
}

// Temporary key files end in ".tmp" (never ".key"), so a copy left by a
// crash is never taken for a key, nor backed up with the ordinary data; the
// next Open removes stale ones.
func TestKeyTempFiles(t *testing.T) {
	ctx := context.Background()
	var seen []string
	testHookKeyTemp = func(tmp string) {
		st, err := os.Stat(tmp)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("temporary key file %s: %v %v", tmp, st, err)
		}
		seen = append(seen, filepath.Base(tmp))
	}
	defer func() { testHookKeyTemp = nil }()
	dir := t.TempDir()
	dsn := storetest.SQLite(t)
	if _, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 2 {
		t.Fatalf("temporary files %v", seen)
	}
	for _, n := range seen {
		if !strings.HasSuffix(n, ".tmp") || strings.Contains(n, ".key.tmp-") {
			t.Fatalf("temporary key file %q: a backup would take it for a data file", n)
		}
	}
	testHookKeyTemp = nil

	kdir := filepath.Join(dir, "keys")
	old := time.Now().Add(-time.Hour)
	stale := []string{"node.key.tmp-0123456789abcdef", "issuer-0011223344556677.key.tmp-0123456789abcdef", ".node.key.0123456789abcdef.tmp"}
	for _, n := range stale {
		p := filepath.Join(kdir, n)
		os.WriteFile(p, []byte("-----BEGIN PRIVATE KEY-----"), 0o600)
		os.Chtimes(p, old, old)
	}
	fresh := filepath.Join(kdir, ".issuer-0011223344556677.key.fedcba9876543210.tmp")
	os.WriteFile(fresh, nil, 0o600)
	if _, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2); err != nil {
		t.Fatal(err)
	}
	for _, n := range stale {
		if _, err := os.Stat(filepath.Join(kdir, n)); !os.IsNotExist(err) {
			t.Errorf("stale key copy %s left in place (%v)", n, err)
		}
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a fresh temporary file (another process's key being written) was removed: %v", err)
	}
}
