package catalog

import (
	"context"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func openDB(t *testing.T, dsn string) *store.DB { return storetest.Open(t, dsn) }

func mustOpen(t *testing.T, db *store.DB) *Catalog {
	t.Helper()
	c, err := Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// comparable strips what the store sets.
func comparable(s Scenario) Scenario {
	s.Version, s.CreatedAt, s.UpdatedAt, s.Seeded = 0, time.Time{}, time.Time{}, false
	if s.Concessions == nil {
		s.Concessions = []Concession{}
	}
	if s.ViewFields == nil {
		s.ViewFields = []string{}
	}
	return s
}

func count(t *testing.T, db *store.DB, table string) int {
	t.Helper()
	var n int
	if err := db.R.QueryRow(`SELECT COUNT(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func generation(t *testing.T, db *store.DB) int64 {
	t.Helper()
	var g int64
	if err := db.R.QueryRow(`SELECT generation FROM catalog_generation WHERE id = 1`).Scan(&g); err != nil {
		t.Fatal(err)
	}
	return g
}

func TestSeedingAndRestart(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := openDB(t, dsn)
		c := mustOpen(t, db)

		items, err := c.Items(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(items, SeedItems()) {
			t.Fatalf("items = %+v", items)
		}
		all, err := c.Scenarios(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		seed := SeedScenarios()
		if len(all) != len(seed) {
			t.Fatalf("%d scenarios stored, %d seeded", len(all), len(seed))
		}
		for i := range seed {
			if !reflect.DeepEqual(comparable(all[i]), comparable(seed[i])) {
				t.Fatalf("stored scenario %d differs:\n got %+v\nwant %+v", i, all[i], seed[i])
			}
			if !all[i].Seeded || all[i].Version != 1 || all[i].CreatedAt.IsZero() {
				t.Fatalf("%s: seeded %v version %d created %v", all[i].ID, all[i].Seeded, all[i].Version, all[i].CreatedAt)
			}
		}
		transit, err := c.Scenarios(ctx, 6)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, s := range transit {
			ids = append(ids, s.ID)
		}
		if !slices.Equal(ids, []string{"transit.bus", "transit.trolleybus", "transit.metro_entry", "transit.metro_exit"}) {
			t.Fatalf("item 6 = %v", ids)
		}
		if other, err := c.Scenarios(ctx, 13); err != nil || len(other) != 0 || other == nil {
			t.Fatalf("item 13 = %v, %v (want an empty, non-nil list)", other, err)
		}
		if _, err := c.Scenarios(ctx, 14); apperr.CodeOf(err) != apperr.ValidationFailed {
			t.Fatalf("item 14: %v", err)
		}
		if _, err := c.Scenario(ctx, "transit.hovercraft"); apperr.CodeOf(err) != apperr.NotFound {
			t.Fatalf("unknown scenario: %v", err)
		}

		// A staff edit, then a restart: the edit survives, nothing is duplicated,
		// and an unchanged catalogue is not even rewritten.
		bus, err := c.Scenario(ctx, "transit.bus")
		if err != nil {
			t.Fatal(err)
		}
		bus.DefaultAmountFen = 250
		bus.Concessions = bus.Concessions[:2]
		if _, err := c.UpdateScenario(ctx, bus); err != nil {
			t.Fatal(err)
		}
		gen := generation(t, db)
		c2 := mustOpen(t, db)
		mustOpen(t, db)
		if g := generation(t, db); g != gen {
			t.Fatalf("reopening changed the generation %d -> %d", gen, g)
		}
		if n := count(t, db, "catalog_scenarios"); n != len(seed) {
			t.Fatalf("%d scenario rows after reopening", n)
		}
		if n := count(t, db, "catalog_items"); n != ItemCount {
			t.Fatalf("%d item rows after reopening", n)
		}
		bus2, err := c2.Scenario(ctx, "transit.bus")
		if err != nil {
			t.Fatal(err)
		}
		if bus2.DefaultAmountFen != 250 || len(bus2.Concessions) != 2 || bus2.Version != 2 || !bus2.Seeded {
			t.Fatalf("after restart: %+v", bus2)
		}
	})
}

// A later version seeds more scenarios: they appear, edits stay.
func TestSeedAddsNewScenarios(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := openDB(t, dsn)
		full := SeedScenarios()
		old := full[:len(full)-3]
		c, err := open(ctx, db, Options{}, seedItems, old)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Scenario(ctx, full[len(full)-1].ID); apperr.CodeOf(err) != apperr.NotFound {
			t.Fatalf("not yet seeded: %v", err)
		}
		if _, err := c.SetEnabled(ctx, "transit.bus", false); err != nil {
			t.Fatal(err)
		}
		c2 := mustOpen(t, db)
		all, err := c2.Scenarios(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != len(full) {
			t.Fatalf("%d scenarios, want %d", len(all), len(full))
		}
		for _, s := range full[len(full)-3:] {
			got, err := c2.Scenario(ctx, s.ID)
			if err != nil || !reflect.DeepEqual(comparable(got), comparable(s)) {
				t.Fatalf("new seed %s: %+v, %v", s.ID, got, err)
			}
		}
		if bus, _ := c2.Scenario(ctx, "transit.bus"); bus.Enabled {
			t.Fatal("upgrade re-enabled a scenario staff disabled")
		}
		// The new ones are listed in their item, in seed order.
		community, _ := c2.Scenarios(ctx, 12)
		if community[len(community)-1].ID != "community.housekeeping" {
			t.Fatalf("item 12 order: %v", community)
		}
	})
}

// Several processes starting at once against one database.
func TestConcurrentOpen(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		var dbs []*store.DB
		for range 3 {
			dbs = append(dbs, openDB(t, dsn))
		}
		var wg sync.WaitGroup
		errs := make(chan error, len(dbs))
		for _, db := range dbs {
			wg.Go(func() {
				_, err := Open(context.Background(), db)
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if n := count(t, dbs[0], "catalog_scenarios"); n != len(SeedScenarios()) {
			t.Fatalf("%d scenario rows", n)
		}
	})
}

func bikeShare() Scenario {
	return Scenario{ID: "other.bike_share", Item: 13, NameZh: "公共自行车", NameEn: "Public bicycle", Kind: KindCharge,
		DefaultAmountFen: 150, ViewFields: []string{"decision", "charged_fen", "concession"},
		Concessions:    []Concession{{ID: "senior_65_free", NameZh: "老人免费", NameEn: "Seniors free", MinAge: 65}},
		OfflineAllowed: true, CreditLimitFen: 300, Enabled: true}
}

func TestCreateUpdateEnable(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := openDB(t, dsn)
		c := mustOpen(t, db)

		created, err := c.CreateScenario(ctx, bikeShare())
		if err != nil {
			t.Fatal(err)
		}
		if created.Seeded || created.Version != 1 || !reflect.DeepEqual(comparable(created), comparable(bikeShare())) {
			t.Fatalf("created %+v", created)
		}
		got, err := c.Scenario(ctx, "other.bike_share")
		if err != nil || !reflect.DeepEqual(got, created) {
			t.Fatalf("Scenario = %+v, %v", got, err)
		}
		if other, _ := c.Scenarios(ctx, 13); len(other) != 1 || other[0].ID != "other.bike_share" {
			t.Fatalf("item 13 = %v", other)
		}
		if d := Decide(got, Holder{Category: CategoryLocal, Age: 70, CardStatus: CardActive, Local: true}, 0); !d.Eligible || d.Amount != 0 || d.Concession != "senior_65_free" {
			t.Fatalf("decision on a staff-created scenario: %+v", d)
		}
		if _, err := c.CreateScenario(ctx, bikeShare()); apperr.CodeOf(err) != apperr.AlreadyExists {
			t.Fatalf("duplicate create: %v", err)
		}
		if _, err := c.CreateScenario(ctx, mod(seeded(t, "transit.bus"), func(s *Scenario) {})); apperr.CodeOf(err) != apperr.AlreadyExists {
			t.Fatalf("create over a seeded id: %v", err)
		}
		bad := mod(bikeShare(), func(s *Scenario) { s.ID = "other.peeker"; s.ViewFields = []string{"decision", "full_id_number"} })
		if _, err := c.CreateScenario(ctx, bad); apperr.CodeOf(err) != apperr.ValidationFailed || apperr.As(err).Field != "view_fields[1]" {
			t.Fatalf("create with full_id_number: %v", err)
		}
		if _, err := c.Scenario(ctx, "other.peeker"); apperr.CodeOf(err) != apperr.NotFound {
			t.Fatal("refused scenario was stored")
		}

		// Update: validation, immutable item and kind, optimistic version.
		upd := got
		upd.DefaultAmountFen = 200
		upd.ViewFields = append(upd.ViewFields, "masked_name")
		after, err := c.UpdateScenario(ctx, upd)
		if err != nil {
			t.Fatal(err)
		}
		if after.Version != 2 || after.DefaultAmountFen != 200 || !slices.Contains(after.ViewFields, "masked_name") || !after.CreatedAt.Equal(created.CreatedAt) {
			t.Fatalf("after update %+v", after)
		}
		if cached, _ := c.Scenario(ctx, upd.ID); cached.DefaultAmountFen != 200 || cached.Version != 2 {
			t.Fatalf("cache not invalidated: %+v", cached)
		}
		if _, err := c.UpdateScenario(ctx, upd); apperr.CodeOf(err) != apperr.Conflict {
			t.Fatalf("stale version: %v", err)
		}
		upd.Version = 0 // last writer wins when no version is given
		if _, err := c.UpdateScenario(ctx, upd); err != nil {
			t.Fatal(err)
		}
		if _, err := c.UpdateScenario(ctx, mod(upd, func(s *Scenario) {
			s.Kind = KindPayout
			s.Concessions = nil
			s.CreditLimitFen = 0
			s.OfflineAllowed = false
		})); apperr.As(err).Field != "kind" {
			t.Fatalf("kind change: %v", err)
		}
		if _, err := c.UpdateScenario(ctx, mod(upd, func(s *Scenario) { s.Item = 12 })); apperr.As(err).Field != "item" {
			t.Fatalf("item change: %v", err)
		}
		if _, err := c.UpdateScenario(ctx, mod(upd, func(s *Scenario) { s.ViewFields = []string{"id_number"} })); apperr.As(err).Field != "view_fields[0]" {
			t.Fatalf("update with id_number: %v", err)
		}
		if _, err := c.UpdateScenario(ctx, mod(upd, func(s *Scenario) { s.ID = "other.nothing" })); apperr.CodeOf(err) != apperr.NotFound {
			t.Fatalf("update unknown: %v", err)
		}
		// Seeded scenarios can be edited too.
		scenic, _ := c.Scenario(ctx, "scenic.ticket")
		scenic.DefaultAmountFen = 8000
		if s, err := c.UpdateScenario(ctx, scenic); err != nil || !s.Seeded || s.DefaultAmountFen != 8000 {
			t.Fatalf("seeded edit: %+v, %v", s, err)
		}

		// SetEnabled.
		off, err := c.SetEnabled(ctx, "transit.bus", false)
		if err != nil || off.Enabled {
			t.Fatalf("disable: %+v, %v", off, err)
		}
		bus, _ := c.Scenario(ctx, "transit.bus")
		if d := Decide(bus, Holder{Category: CategoryLocal, Age: 30, CardStatus: CardActive, Local: true}, 0); d.Reason != apperr.ScenarioDisabled {
			t.Fatalf("disabled bus decided %+v", d)
		}
		if list, _ := c.Scenarios(ctx, 6); list[0].ID != "transit.bus" || list[0].Enabled {
			t.Fatal("disabled scenario not listed as disabled")
		}
		if on, err := c.SetEnabled(ctx, "transit.bus", true); err != nil || !on.Enabled {
			t.Fatalf("enable: %+v, %v", on, err)
		}
		if _, err := c.SetEnabled(ctx, "transit.nothing", true); apperr.CodeOf(err) != apperr.NotFound {
			t.Fatalf("enable unknown: %v", err)
		}

		// Everything staff made survives a restart.
		c2 := mustOpen(t, db)
		s, err := c2.Scenario(ctx, "other.bike_share")
		if err != nil || s.DefaultAmountFen != 200 || s.Version != 3 {
			t.Fatalf("after restart: %+v, %v", s, err)
		}
		if s, _ := c2.Scenario(ctx, "scenic.ticket"); s.DefaultAmountFen != 8000 {
			t.Fatal("seeded edit lost on restart")
		}
	})
}

// What Scenario returns is a copy: changing it does not change the cache.
func TestScenarioReturnsCopies(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		c := mustOpen(t, openDB(t, dsn))
		s, _ := c.Scenario(ctx, "identity.hotel_checkin")
		s.ViewFields[0] = "photo_ref"
		s.ViewFields = append(s.ViewFields, "balance_fen")
		b, _ := c.Scenario(ctx, "transit.bus")
		b.Concessions[0].PayPercent = 99
		list, _ := c.Scenarios(ctx, 6)
		list[0].Concessions[1].AnyFlag = []string{"x"}
		if s2, _ := c.Scenario(ctx, "identity.hotel_checkin"); s2.ViewFields[0] != "decision" || len(s2.ViewFields) != 5 {
			t.Fatalf("cache changed: %v", s2.ViewFields)
		}
		if b2, _ := c.Scenario(ctx, "transit.bus"); b2.Concessions[0].PayPercent != 0 || b2.Concessions[1].AnyFlag != nil {
			t.Fatalf("cache changed: %+v", b2.Concessions)
		}
	})
}

// Another process's change is seen once the refresh interval has passed,
// and not before (the cache does not hit the database per scan).
func TestCacheAcrossProcesses(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		var clock atomic.Int64
		clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
		now := func() time.Time { return time.Unix(0, clock.Load()) }
		writer := mustOpen(t, openDB(t, dsn))
		readerDB := openDB(t, dsn)
		reader, err := OpenWith(ctx, readerDB, Options{RefreshInterval: time.Second, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := reader.Scenario(ctx, "transit.bus"); b.DefaultAmountFen != 200 {
			t.Fatal(b)
		}
		bus, _ := writer.Scenario(ctx, "transit.bus")
		bus.DefaultAmountFen = 300
		if _, err := writer.UpdateScenario(ctx, bus); err != nil {
			t.Fatal(err)
		}
		clock.Add(int64(500 * time.Millisecond))
		if b, _ := reader.Scenario(ctx, "transit.bus"); b.DefaultAmountFen != 200 {
			t.Fatalf("reader hit the database within the refresh interval: %d", b.DefaultAmountFen)
		}
		clock.Add(int64(600 * time.Millisecond))
		if b, _ := reader.Scenario(ctx, "transit.bus"); b.DefaultAmountFen != 300 {
			t.Fatalf("reader did not notice the change: %d", b.DefaultAmountFen)
		}
		// Creating and disabling are noticed the same way.
		if _, err := writer.CreateScenario(ctx, bikeShare()); err != nil {
			t.Fatal(err)
		}
		clock.Add(int64(1100 * time.Millisecond))
		if _, err := reader.Scenario(ctx, "other.bike_share"); err != nil {
			t.Fatalf("reader did not notice the new scenario: %v", err)
		}
		if _, err := writer.SetEnabled(ctx, "museum.entry", false); err != nil {
			t.Fatal(err)
		}
		clock.Add(int64(1100 * time.Millisecond))
		if m, _ := reader.Scenario(ctx, "museum.entry"); m.Enabled {
			t.Fatal("reader did not notice the disabled scenario")
		}
		// With the database gone, the cached snapshot still answers within
		// the interval; after it, the failure is reported, not stale data.
		readerDB.Close()
		clock.Add(int64(100 * time.Millisecond))
		if b, err := reader.Scenario(ctx, "transit.bus"); err != nil || b.DefaultAmountFen != 300 {
			t.Fatalf("cached read: %v", err)
		}
		clock.Add(int64(2 * time.Second))
		if _, err := reader.Scenario(ctx, "transit.bus"); apperr.CodeOf(err) != apperr.Unavailable {
			t.Fatalf("read with the database closed: %v", err)
		}
	})
}

// Readers racing with writers always see whole scenarios and never go back
// to an older version.
func TestConcurrentReadsAndWrites(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		c := mustOpen(t, openDB(t, dsn))
		var wg sync.WaitGroup
		stop := make(chan struct{})
		errs := make(chan string, 8)
		for range 4 {
			wg.Go(func() {
				var last int64
				for {
					select {
					case <-stop:
						return
					default:
					}
					s, err := c.Scenario(ctx, "transit.bus")
					if err != nil {
						errs <- err.Error()
						return
					}
					if s.Version < last {
						errs <- "version went back"
						return
					}
					if s.DefaultAmountFen != 100+s.Version {
						if s.Version != 1 || s.DefaultAmountFen != 200 {
							errs <- "torn scenario"
							return
						}
					}
					last = s.Version
				}
			})
		}
		for range 20 {
			s, err := c.Scenario(ctx, "transit.bus")
			if err != nil {
				t.Fatal(err)
			}
			s.DefaultAmountFen = 100 + s.Version + 1
			if _, err := c.UpdateScenario(ctx, s); err != nil {
				t.Fatal(err)
			}
		}
		close(stop)
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatal(e)
		}
		if s, _ := c.Scenario(ctx, "transit.bus"); s.Version != 21 || s.DefaultAmountFen != 121 {
			t.Fatalf("final %+v", s)
		}
	})
}

func BenchmarkScenarioCached(b *testing.B) {
	ctx := context.Background()
	db, err := store.Open(ctx, storetest.SQLite(b), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	c, err := Open(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	h := Holder{Category: CategoryLocal, Age: 62, CardStatus: CardActive, Local: true}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s, err := c.Scenario(ctx, "transit.bus")
			if err != nil {
				b.Fatal(err)
			}
			if d := Decide(s, h, 0); d.Amount != 100 {
				b.Fatal(d)
			}
		}
	})
}
