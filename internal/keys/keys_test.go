package keys

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func openDB(t *testing.T, dsn string) *store.DB { return storetest.Open(t, dsn) }

func count(t *testing.T, db *store.DB, q string) int {
	t.Helper()
	var n int
	if err := db.R.QueryRowContext(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func keyMap(ks []ecode.PublicKey) ecode.KeyMap {
	m := ecode.KeyMap{}
	for _, k := range ks {
		m.Add("CN-410100", k)
	}
	return m
}

func issue(t *testing.T, s ecode.Signer, at time.Time) string {
	t.Helper()
	code, err := ecode.Issue(s, ecode.Claims{Issuer: "CN-410100", Subject: "tok", IssuedAt: at, Category: ecode.CategoryLocal})
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func TestFirstStartCreatesThenReuses(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := openDB(t, dsn)
		dir := t.TempDir()
		m, err := Open(ctx, dir, db, ecode.AlgSM2)
		if err != nil {
			t.Fatal(err)
		}
		cur := m.Current()
		if cur == nil || cur.Alg() != ecode.AlgSM2 || m.NodeSigner().Alg() != ecode.AlgSM2 {
			t.Fatal("want SM2 issuer and node keys")
		}
		kid := cur.Public().KidString()
		if got := mode(t, filepath.Join(dir, "keys")); got != 0o700 {
			t.Fatalf("keys dir mode %o", got)
		}
		for _, f := range []string{"node.key", "issuer-" + kid + ".key"} {
			if got := mode(t, filepath.Join(dir, "keys", f)); got != 0o600 {
				t.Fatalf("%s mode %o", f, got)
			}
		}
		entries, _ := os.ReadDir(filepath.Join(dir, "keys"))
		if len(entries) != 2 {
			t.Fatalf("keys dir holds %d files, want 2 (no temp files left)", len(entries))
		}
		if n := count(t, db, `SELECT COUNT(*) FROM issuer_keys`); n != 1 {
			t.Fatalf("%d issuer keys", n)
		}
		if n := count(t, db, `SELECT COUNT(*) FROM node_keys`); n != 1 {
			t.Fatalf("%d node keys", n)
		}

		// A second start reuses everything, even when asked for another algorithm.
		m2, err := Open(ctx, dir, db, ecode.AlgEdDSA)
		if err != nil {
			t.Fatal(err)
		}
		if m2.Current().Public().KidString() != kid || m2.NodePublicKey().KidString() != m.NodePublicKey().KidString() {
			t.Fatal("second start made new keys")
		}
		if n := count(t, db, `SELECT COUNT(*) FROM issuer_keys`); n != 1 {
			t.Fatalf("%d issuer keys after restart", n)
		}
		// and a code from the first process verifies with the registry
		pubs, err := m2.PublicKeys(ctx)
		if err != nil || len(pubs) != 1 {
			t.Fatalf("%d keys, %v", len(pubs), err)
		}
		now := time.Now()
		if _, _, err := ecode.Verify(issue(t, m.Current(), now), keyMap(pubs), now); err != nil {
			t.Fatal(err)
		}
	})
}

func TestEd25519Option(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, storetest.SQLite(t))
	m, err := Open(ctx, t.TempDir(), db, ecode.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	if m.Current().Alg() != ecode.AlgEdDSA || m.NodeSigner().Alg() != ecode.AlgSM2 {
		t.Fatal("want an Ed25519 issuer key and an SM2 node key")
	}
}

func TestRotationKeepsOldCodesUntilNotAfter(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := openDB(t, dsn)
		m, err := Open(ctx, t.TempDir(), db, ecode.AlgSM2)
		if err != nil {
			t.Fatal(err)
		}
		old := m.Current()
		now := time.Now()
		oldCode := issue(t, old, now)
		before := time.Now()
		kid, err := m.Rotate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		after := time.Now()
		if kid == old.Public().KidString() || m.Current().Public().KidString() != kid {
			t.Fatal("rotation did not switch the current key")
		}
		pubs, err := m.PublicKeysAt(ctx, after)
		if err != nil || len(pubs) != 2 {
			t.Fatalf("after rotation %d keys, %v", len(pubs), err)
		}
		var na time.Time
		for _, k := range pubs {
			if k.KidString() == kid && !k.NotAfter.IsZero() {
				t.Fatal("current key has a not_after")
			}
			if k.KidString() == old.Public().KidString() {
				na = k.NotAfter
			}
		}
		if na.Before(before.Add(RetireGrace).Truncate(time.Millisecond)) || na.After(after.Add(RetireGrace)) {
			t.Fatalf("not_after %v, want now + %v", na, RetireGrace)
		}
		// The old code still verifies with the published keys; a new code too.
		if _, _, err := ecode.Verify(oldCode, keyMap(pubs), now.Add(10*time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ecode.Verify(issue(t, m.Current(), now), keyMap(pubs), now); err != nil {
			t.Fatal(err)
		}
		// After not_after the old key has left; the new one stays.
		later, err := m.PublicKeysAt(ctx, na.Add(time.Millisecond))
		if err != nil || len(later) != 1 || later[0].KidString() != kid {
			t.Fatalf("after not_after: %d keys, %v", len(later), err)
		}
		_, _, err = ecode.Verify(oldCode, keyMap(later), now)
		if apperr.CodeOf(err) != apperr.UnknownKey {
			t.Fatalf("old code after not_after: %v", err)
		}
		// Exactly one active key.
		if n := count(t, db, `SELECT COUNT(*) FROM issuer_keys WHERE retired_at IS NULL`); n != 1 {
			t.Fatalf("%d active keys", n)
		}
	})
}

func TestTwoProcessesAgreeAfterRefresh(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		dir := t.TempDir()
		a, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
		if err != nil {
			t.Fatal(err)
		}
		b, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
		if err != nil {
			t.Fatal(err)
		}
		if a.Current().Public().KidString() != b.Current().Public().KidString() {
			t.Fatal("two processes started with different keys")
		}
		kid, err := a.Rotate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if b.Current().Public().KidString() == kid {
			t.Fatal("b switched without refreshing?")
		}
		if err := b.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if b.Current().Public().KidString() != kid {
			t.Fatal("b does not use the rotated key after Refresh")
		}
		// b's codes verify against a's published keys and vice versa
		pa, _ := a.PublicKeys(ctx)
		pb, _ := b.PublicKeys(ctx)
		now := time.Now()
		if _, _, err := ecode.Verify(issue(t, b.Current(), now), keyMap(pa), now); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ecode.Verify(issue(t, a.Current(), now), keyMap(pb), now); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConcurrentFirstStartMakesOneKey(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		openDB(t, dsn) // migrate once
		dir := t.TempDir()
		const n = 4
		ms := make([]*Manager, n)
		errs := make([]error, n)
		dbs := make([]*store.DB, n)
		for i := range dbs {
			dbs[i] = openDB(t, dsn)
		}
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				ms[i], errs[i] = Open(ctx, dir, dbs[i], ecode.AlgSM2)
			}(i)
		}
		wg.Wait()
		for i := 0; i < n; i++ {
			if errs[i] != nil {
				t.Fatalf("process %d: %v", i, errs[i])
			}
		}
		for i := 1; i < n; i++ {
			if ms[i].Current().Public().KidString() != ms[0].Current().Public().KidString() ||
				ms[i].NodePublicKey().KidString() != ms[0].NodePublicKey().KidString() {
				t.Fatalf("process %d disagrees", i)
			}
		}
		if c := count(t, dbs[0], `SELECT COUNT(*) FROM issuer_keys`); c != 1 {
			t.Fatalf("%d issuer keys", c)
		}
		entries, _ := os.ReadDir(filepath.Join(dir, "keys"))
		if len(entries) != 2 {
			names := []string{}
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Fatalf("keys dir holds %v, want node.key and one issuer key", names)
		}
	})
}

func TestForeignDataDirRejected(t *testing.T) {
	ctx := context.Background()
	dsn := storetest.SQLite(t)
	if _, err := Open(ctx, t.TempDir(), openDB(t, dsn), ecode.AlgSM2); err != nil {
		t.Fatal(err)
	}
	// Same database, a different (empty) data directory: the registered keys'
	// files are not there.
	if _, err := Open(ctx, t.TempDir(), openDB(t, dsn), ecode.AlgSM2); err == nil {
		t.Fatal("opened with a data directory that lacks the registered keys")
	}
}
