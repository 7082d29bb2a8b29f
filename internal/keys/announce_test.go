package keys

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// fakeClock is a settable clock for Manager.SetClock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func kids(ks []ecode.PublicKey) []string {
	var out []string
	for _, k := range ks {
		out = append(out, k.KidString())
	}
	return out
}

// A pre-announced rotation publishes the new key at once, keeps signing
// with the old one until the activation time, then switches, in this
// process and in another one sharing the database, without a restart; the
// old key verifies until activation + RetireGrace.
func TestAnnouncedRotation(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		dir := t.TempDir()
		a, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
		if err != nil {
			t.Fatal(err)
		}
		clk := &fakeClock{t: time.Now()}
		a.SetClock(clk.Now)
		b, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
		if err != nil {
			t.Fatal(err)
		}
		b.SetClock(clk.Now)
		oldKid := a.Current().Public().KidString()
		t0 := clk.Now()

		const announce = 10 * time.Minute
		kid, at, err := a.RotateAnnounced(ctx, announce)
		if err != nil {
			t.Fatal(err)
		}
		if kid == oldKid {
			t.Fatal("rotation made no new key")
		}
		if want := t0.Add(announce).Truncate(time.Millisecond); !at.Equal(want) {
			t.Fatalf("activation %v, want %v", at, t0.Add(announce))
		}
		if err := b.Refresh(ctx); err != nil {
			t.Fatal(err)
		}

		// Published at once, by every process.
		for name, m := range map[string]*Manager{"a": a, "b": b} {
			pubs, err := m.PublicKeys(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := kids(pubs); len(got) != 2 || got[0] != oldKid || got[1] != kid {
				t.Fatalf("%s: published %v right after the announcement, want [%s %s]", name, got, oldKid, kid)
			}
			for _, k := range pubs {
				if k.KidString() == oldKid && !k.NotAfter.Equal(at.Add(RetireGrace)) {
					t.Fatalf("%s: old key's not_after %v, want activation + RetireGrace %v", name, k.NotAfter, at.Add(RetireGrace))
				}
				if k.KidString() == kid && !k.NotAfter.IsZero() {
					t.Fatalf("%s: the new key has a not_after", name)
				}
			}
			if p, pat, ok := m.Pending(); !ok || p != kid || !pat.Equal(at) {
				t.Fatalf("%s: Pending() = %s %v %v", name, p, pat, ok)
			}
		}

		// Before activation both processes still sign with the old key.
		for _, off := range []time.Duration{0, announce / 2, announce - time.Millisecond} {
			clk.Set(t0.Add(off))
			for name, m := range map[string]*Manager{"a": a, "b": b} {
				if got := m.Current().Public().KidString(); got != oldKid {
					t.Fatalf("%s at +%v signs with %s, want the old key %s", name, off, got, oldKid)
				}
			}
		}
		// A code signed just before activation.
		clk.Set(at.Add(-time.Second))
		oldCode := issue(t, a.Current(), clk.Now())

		// From activation on both switch, with no Refresh and no restart.
		for _, tm := range []time.Time{at, at.Add(time.Minute)} {
			clk.Set(tm)
			for name, m := range map[string]*Manager{"a": a, "b": b} {
				if got := m.Current().Public().KidString(); got != kid {
					t.Fatalf("%s at %v signs with %s, want the new key %s", name, tm, got, kid)
				}
				if _, _, ok := m.Pending(); ok {
					t.Fatalf("%s: still pending after activation", name)
				}
			}
		}
		// and after a Refresh past activation too (the old key is no
		// longer loaded).
		if err := b.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if got := b.Current().Public().KidString(); got != kid {
			t.Fatalf("b after refresh signs with %s", got)
		}
		newCode := issue(t, b.Current(), clk.Now())

		// The old key verifies until activation + RetireGrace, then leaves.
		pubs, err := a.PublicKeysAt(ctx, at.Add(RetireGrace-time.Millisecond))
		if err != nil || len(pubs) != 2 {
			t.Fatalf("just before activation + RetireGrace: %v, %v", kids(pubs), err)
		}
		if _, _, err := ecode.Verify(oldCode, keyMap(pubs), at.Add(30*time.Second)); err != nil {
			t.Fatalf("old code after activation: %v", err)
		}
		if _, _, err := ecode.Verify(newCode, keyMap(pubs), at.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		later, err := a.PublicKeysAt(ctx, at.Add(RetireGrace))
		if err != nil || len(later) != 1 || later[0].KidString() != kid {
			t.Fatalf("at activation + RetireGrace: %v, %v", kids(later), err)
		}
		if _, _, err := ecode.Verify(oldCode, keyMap(later), at.Add(30*time.Second)); apperr.CodeOf(err) != apperr.UnknownKey {
			t.Fatalf("old code after its key left: %v", err)
		}

		// A process started later (during or after) agrees.
		c, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
		if err != nil {
			t.Fatal(err)
		}
		c.SetClock(clk.Now)
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if got := c.Current().Public().KidString(); got != kid {
			t.Fatalf("a process started after activation signs with %s", got)
		}
	})
}

// A process (re)started while a rotation is pending signs with the old key
// and switches at activation.
func TestOpenDuringPendingRotation(t *testing.T) {
	ctx := context.Background()
	dsn := storetest.SQLite(t)
	dir := t.TempDir()
	a, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
	if err != nil {
		t.Fatal(err)
	}
	oldKid := a.Current().Public().KidString()
	kid, at, err := a.RotateAnnounced(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Current().Public().KidString(); got != oldKid {
		t.Fatalf("started during a pending rotation, signs with %s, want %s", got, oldKid)
	}
	b.SetClock(func() time.Time { return at })
	if got := b.Current().Public().KidString(); got != kid {
		t.Fatalf("at activation signs with %s, want %s", got, kid)
	}
}

// A second announced rotation while one is pending is refused; one at once
// (a compromised key) withdraws the pending key and switches now.
func TestSecondRotationWhilePending(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := openDB(t, dsn)
		m, err := Open(ctx, t.TempDir(), db, ecode.AlgSM2)
		if err != nil {
			t.Fatal(err)
		}
		oldKid := m.Current().Public().KidString()
		pending, at, err := m.RotateAnnounced(ctx, 15*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = m.RotateAnnounced(ctx, 15*time.Minute)
		if !errors.Is(err, ErrRotationPending) || !strings.Contains(err.Error(), pending) || !strings.Contains(err.Error(), at.Format(time.RFC3339)) {
			t.Fatalf("second announced rotation: %v", err)
		}
		if n := count(t, db, `SELECT COUNT(*) FROM issuer_keys`); n != 2 {
			t.Fatalf("%d issuer keys after a refused rotation", n)
		}
		if got := m.Current().Public().KidString(); got != oldKid {
			t.Fatalf("refused rotation changed the signer to %s", got)
		}

		// Emergency: at once.
		before := time.Now()
		kid, at0, err := m.RotateAnnounced(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if at0.After(time.Now()) || at0.Before(before.Truncate(time.Millisecond)) {
			t.Fatalf("activation %v of a rotation at once", at0)
		}
		if got := m.Current().Public().KidString(); got != kid {
			t.Fatalf("after a rotation at once signs with %s, want %s", got, kid)
		}
		if _, _, ok := m.Pending(); ok {
			t.Fatal("still pending")
		}
		pubs, err := m.PublicKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got := kids(pubs)
		if len(got) != 2 || got[0] != oldKid || got[1] != kid {
			t.Fatalf("published %v, want the old key (in its grace) and the new one; not the withdrawn %s", got, pending)
		}
		for _, k := range pubs {
			if k.KidString() == oldKid && k.NotAfter.After(time.Now().Add(RetireGrace)) {
				t.Fatalf("old key verifies until %v, beyond now + RetireGrace", k.NotAfter)
			}
		}
		if n := count(t, db, `SELECT COUNT(*) FROM issuer_keys WHERE retired_at IS NULL`); n != 1 {
			t.Fatalf("%d active keys", n)
		}
		// No rotation pending now: an announced one is accepted again.
		if _, _, err := m.RotateAnnounced(ctx, time.Minute); err != nil {
			t.Fatal(err)
		}
	})
}

// Rotate (announce 0) behaves as before: the new key signs at once and the
// old one verifies for RetireGrace.
func TestRotateAtOnceViaAnnounceZero(t *testing.T) {
	ctx := context.Background()
	m, err := Open(ctx, t.TempDir(), openDB(t, storetest.SQLite(t)), ecode.AlgSM2)
	if err != nil {
		t.Fatal(err)
	}
	old := m.Current().Public().KidString()
	before := time.Now()
	kid, at, err := m.RotateAnnounced(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.Current().Public().KidString() != kid || kid == old {
		t.Fatal("announce 0 did not switch at once")
	}
	pubs, err := m.PublicKeys(ctx)
	if err != nil || len(pubs) != 2 {
		t.Fatalf("%v, %v", kids(pubs), err)
	}
	if !pubs[0].NotAfter.Equal(at.Add(RetireGrace)) || at.Before(before.Truncate(time.Millisecond)) || at.After(time.Now()) {
		t.Fatalf("old key not_after %v, activation %v", pubs[0].NotAfter, at)
	}
	if _, _, err := m.RotateAnnounced(ctx, -time.Second); err == nil {
		t.Fatal("negative announce accepted")
	}
}

// A process whose keys directory has not received an announced key's
// file yet (a read-only secrets mount published after the rotation)
// starts and signs with the current key; once the file is there, a
// Refresh picks it up and it signs from its activation time.
func TestStartBeforeTheAnnouncedKeyFileArrives(t *testing.T) {
	ctx := context.Background()
	dsn := storetest.SQLite(t)
	dir, mount := t.TempDir(), t.TempDir()
	a, err := Open(ctx, dir, openDB(t, dsn), ecode.AlgSM2)
	if err != nil {
		t.Fatal(err)
	}
	copyDir := func() {
		t.Helper()
		entries, err := os.ReadDir(filepath.Join(dir, "keys"))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(mount, "keys"), 0o700)
		for _, e := range entries {
			b, err := os.ReadFile(filepath.Join(dir, "keys", e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(mount, "keys", e.Name()), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	copyDir() // the mount as published before the rotation
	oldKid := a.Current().Public().KidString()
	kid, at, err := a.RotateAnnounced(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, mount, openDB(t, dsn), ecode.AlgSM2)
	if err != nil {
		t.Fatalf("a process started before the announced key's file reached it: %v", err)
	}
	if got := b.Current().Public().KidString(); got != oldKid {
		t.Fatalf("signs with %s, want %s", got, oldKid)
	}
	copyDir() // the new key's file published
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	b.SetClock(func() time.Time { return at })
	if got := b.Current().Public().KidString(); got != kid {
		t.Fatalf("at activation signs with %s, want %s", got, kid)
	}
}
