package vault

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The master key's temporary file is named so that a copy left by a crash
// (between writing it and removing it) is never mistaken for an ordinary
// data file: `yikatong backup` skips "*.tmp" and would otherwise ship a
// full copy of the master key in the backup archive instead of the secrets
// archive (cmd/yikatong/backup.go: isSecret, the ".tmp" skip).
func TestKeyTempFileName(t *testing.T) {
	var seen []string
	testHookKeyTemp = func(tmp string) {
		st, err := os.Stat(tmp)
		if err != nil {
			t.Error(err)
			return
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("temporary key file mode %v", st.Mode().Perm())
		}
		seen = append(seen, filepath.Base(tmp))
	}
	defer func() { testHookKeyTemp = nil }()
	open(t, t.TempDir())
	if len(seen) != 1 {
		t.Fatalf("temporary files %v", seen)
	}
	if name := seen[0]; !strings.HasSuffix(name, ".tmp") || strings.HasSuffix(name, ".key") || name == KeyFile {
		t.Fatalf("temporary key file %q: a backup would take it for a data file", name)
	}
}

// A key copy left in a temporary file by a crash is removed by the next
// Open; one just written by a process creating the key concurrently is not.
func TestOpenRemovesStaleKeyTemps(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	stale := []string{".master.key.tmp-123456789", ".master.key-987654321.tmp"}
	for _, n := range stale {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, bytes.Repeat([]byte{1}, keySize), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old)
	}
	fresh := filepath.Join(dir, ".master.key-111.tmp")
	os.WriteFile(fresh, bytes.Repeat([]byte{2}, keySize), 0o600)
	other := filepath.Join(dir, "notes.tmp")
	os.WriteFile(other, []byte("x"), 0o600)
	os.Chtimes(other, old, old)

	open(t, dir)
	for _, n := range stale {
		if _, err := os.Stat(filepath.Join(dir, n)); !os.IsNotExist(err) {
			t.Errorf("stale key copy %s left in place (%v)", n, err)
		}
	}
	for _, p := range []string{fresh, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed: %v", p, err)
		}
	}
}
