package catalog

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestScenarioAt: each edit keeps the version it replaces with the instant
// it stopped being in force, and ScenarioAt answers the version in force
// at any instant: before the first edit the first version, between two
// edits the one between, after the last the current one; a version
// disabled later is still enabled for an instant before that.
func TestScenarioAt(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		var mu sync.Mutex
		clock := time.Date(2026, 11, 2, 8, 0, 0, 0, time.UTC)
		now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
		set := func(at time.Time) { mu.Lock(); clock = at; mu.Unlock() }
		c, err := OpenWith(ctx, openDB(t, dsn), Options{Now: now, RefreshInterval: -1})
		if err != nil {
			t.Fatal(err)
		}
		t0 := now()
		s := bikeShare()
		s.DefaultAmountFen = 100
		if _, err := c.CreateScenario(ctx, s); err != nil {
			t.Fatal(err)
		}
		t1, t2, t3 := t0.Add(time.Hour), t0.Add(2*time.Hour), t0.Add(3*time.Hour)
		set(t1)
		s.DefaultAmountFen = 150
		if _, err := c.UpdateScenario(ctx, s); err != nil {
			t.Fatal(err)
		}
		set(t2)
		s.DefaultAmountFen = 200
		if _, err := c.UpdateScenario(ctx, s); err != nil {
			t.Fatal(err)
		}
		set(t3)
		if _, err := c.SetEnabled(ctx, s.ID, false); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			at      time.Time
			fare    int64
			enabled bool
		}{
			{t0.Add(-time.Hour), 100, true}, // before the scenario existed: its first version
			{t0, 100, true},
			{t1.Add(-time.Millisecond), 100, true},
			{t1, 150, true},
			{t2.Add(time.Minute), 200, true},
			{t3.Add(-time.Millisecond), 200, true},
			{t3, 200, false},
			{t3.Add(24 * time.Hour), 200, false},
		} {
			got, err := c.ScenarioAt(ctx, s.ID, tc.at)
			if err != nil {
				t.Fatal(err)
			}
			if got.DefaultAmountFen != tc.fare || got.Enabled != tc.enabled {
				t.Errorf("at %s: fare %d enabled %v, want %d %v", tc.at.Sub(t0), got.DefaultAmountFen, got.Enabled, tc.fare, tc.enabled)
			}
		}
		if n := count(t, c.db, "catalog_scenario_history"); n != 3 {
			t.Fatalf("%d past versions kept, want 3", n)
		}
		// A past version is a copy: changing it changes nothing kept.
		old, _ := c.ScenarioAt(ctx, s.ID, t0)
		old.ViewFields = append(old.ViewFields[:0], "tampered")
		if again, _ := c.ScenarioAt(ctx, s.ID, t0); len(again.ViewFields) > 0 && again.ViewFields[0] == "tampered" {
			t.Fatal("ScenarioAt hands out the cached version itself")
		}
		if _, err := c.ScenarioAt(ctx, "no.such", t0); apperr.CodeOf(err) != apperr.NotFound {
			t.Fatalf("unknown scenario: %v", err)
		}
	})
}
