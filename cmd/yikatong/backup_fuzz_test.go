package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/vault"
)

// FuzzReadArchive feeds restore's archive readers arbitrary bytes: they
// never panic, and what they accept is what its manifest says, under safe
// names only.
func FuzzReadArchive(f *testing.F) {
	archive := func(manifest any, files map[string]string, extra ...string) []byte {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		mb, _ := json.Marshal(manifest)
		tw.WriteHeader(&tar.Header{Name: backupManifest, Mode: 0o600, Size: int64(len(mb)), Typeflag: tar.TypeReg})
		tw.Write(mb)
		for name, body := range files {
			tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(body)), Typeflag: tar.TypeReg})
			tw.Write([]byte(body))
		}
		for _, n := range extra {
			tw.WriteHeader(&tar.Header{Name: n, Mode: 0o600, Typeflag: tar.TypeReg})
		}
		tw.Close()
		zw.Close()
		return buf.Bytes()
	}
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	db, key := "SQLite format 3\x00", "0123456789abcdef0123456789abcdef"
	f.Add(archive(backupManifestV1{Format: backupFormat, Database: "sqlite",
		Files:   []backupFile{{Name: backupSQLite, Size: int64(len(db)), SHA256: sum(db)}},
		Secrets: []backupFile{{Name: backupDataDir + vault.KeyFile, Size: int64(len(key)), SHA256: sum(key)}}},
		map[string]string{backupSQLite: db}))
	f.Add(archive(backupManifestV1{Format: secretsFormat,
		Files: []backupFile{{Name: backupDataDir + vault.KeyFile, Size: int64(len(key)), SHA256: sum(key)}}},
		map[string]string{backupDataDir + vault.KeyFile: key}))
	f.Add(archive(backupManifestV1{Format: backupFormat}, nil, "data/../../x"))
	f.Add([]byte("not gzip"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(dir, "in.tar.gz")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		check := func(files map[string][]byte, man *backupManifestV1) {
			if len(files) != len(man.Files)+1 {
				t.Fatalf("accepted %d files for a manifest of %d", len(files), len(man.Files))
			}
			for name, body := range files {
				if !safeArchiveName(name) {
					t.Fatalf("accepted the unsafe name %q", name)
				}
				if name == backupManifest {
					continue
				}
				found := false
				for _, mf := range man.Files {
					if mf.Name == name {
						h := sha256.Sum256(body)
						found = hex.EncodeToString(h[:]) == mf.SHA256 && mf.Size == int64(len(body))
					}
				}
				if !found {
					t.Fatalf("accepted %q, which its manifest does not list as it is", name)
				}
			}
		}
		if files, man, err := readBackup(p); err == nil {
			check(files, man)
			for _, s := range man.Secrets {
				if !strings.HasPrefix(s.Name, backupDataDir) || !safeArchiveName(s.Name) {
					t.Fatalf("accepted the secret name %q", s.Name)
				}
			}
		}
		if files, err := readSecrets(p); err == nil {
			for name := range files {
				if name != backupManifest && (!strings.HasPrefix(name, backupDataDir) || !safeArchiveName(name)) {
					t.Fatalf("secrets accepted %q", name)
				}
			}
		}
	})
}
