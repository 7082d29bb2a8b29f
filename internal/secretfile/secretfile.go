// Package secretfile handles what the key holders (internal/keys,
// internal/vault) leave beside their secret files: temporary copies a
// crashed process left while writing one.
package secretfile

import (
	"os"
	"path/filepath"
	"time"
)

// StaleAge is how old a temporary secret file must be before it is
// removed: far longer than writing one takes, so another process writing
// a key at the same moment never loses its file.
const StaleAge = 5 * time.Minute

// RemoveStaleTemps deletes the regular files in dir whose names match one
// of patterns (filepath.Match) and that are older than StaleAge: each is a
// full copy of a secret. Errors are ignored: a read-only directory holds
// none this process could have left.
func RemoveStaleTemps(dir string, patterns ...string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !e.Type().IsRegular() || !matchAny(e.Name(), patterns) {
			continue
		}
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > StaleAge {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

func matchAny(name string, patterns []string) bool {
	for _, p := range patterns {
		if ok, _ := filepath.Match(p, name); ok {
			return true
		}
	}
	return false
}
