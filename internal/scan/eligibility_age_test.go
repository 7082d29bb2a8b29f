package scan_test

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// eligClock is a settable clock for a node under test.
type eligClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *eligClock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *eligClock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

// eligSetupAt is setup with the node's eligClock at clk and no residents.
func eligSetupAt(t testing.TB, dsn string, clk *eligClock, scenarios []string) *city {
	t.Helper()
	return newCity(t, nodetest.Options{DB: dsn, Now: clk.Now}, scenarios)
}

var eligCST = time.FixedZone("CST", 8*3600)

// TestEligibilityAgeInBeijingTime: a resident's 65th birthday starts at
// 00:00 Beijing time (16:00 UTC the day before), and someone born on
// 29 February turns a year older on 1 March in a common year. The bus
// fare follows, to the second, for a card and for an e-code.
func TestEligibilityAgeInBeijingTime(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		clk := &eligClock{t: time.Date(2024, 2, 27, 12, 0, 0, 0, eligCST)}
		c := eligSetupAt(t, dsn, clk, []string{"transit.bus"})
		rng := rand.New(rand.NewPCG(7, 8))
		leap := enrol(t, c.tn.Node, rng, resident.CategoryLocal, time.Date(1964, 2, 29, 0, 0, 0, 0, time.UTC), 10_000, 0)
		leap60 := enrol(t, c.tn.Node, rng, resident.CategoryLocal, time.Date(1960, 2, 29, 0, 0, 0, 0, time.UTC), 10_000, 0)
		plain65 := enrol(t, c.tn.Node, rng, resident.CategoryLocal, time.Date(1959, 3, 1, 0, 0, 0, 0, time.UTC), 10_000, 0)
		plain := enrol(t, c.tn.Node, rng, resident.CategoryLocal, time.Date(1964, 3, 1, 0, 0, 0, 0, time.UTC), 10_000, 0)

		cases := []struct {
			name string
			p    person
			at   time.Time
			fare float64
		}{
			// 2024 is a leap year: born 1964-02-29 turns 60 on 2024-02-29.
			{"leap day, last second at 59", leap, time.Date(2024, 2, 28, 23, 59, 59, 0, eligCST), 200},
			{"leap day, first second at 60", leap, time.Date(2024, 2, 29, 0, 0, 0, 0, eligCST), 100},
			// Born 1960-02-29: 2025 is a common year, 65 on 1 March.
			{"common year, 28 Feb still 64", leap60, time.Date(2025, 2, 28, 23, 59, 59, 0, eligCST), 100},
			{"common year, 1 Mar 65", leap60, time.Date(2025, 3, 1, 0, 0, 0, 0, eligCST), 0},
			// Born 1964-03-01: 60 at 00:00 Beijing time on 2024-03-01.
			{"59 until midnight Beijing time", plain, time.Date(2024, 2, 29, 23, 59, 59, 0, eligCST), 200},
			{"60 at midnight Beijing time (16:00 UTC)", plain, time.Date(2024, 2, 29, 16, 0, 0, 0, time.UTC), 100},
			// Born 1959-03-01: 65 at 00:00 Beijing time on 2024-03-01.
			{"64 at 15:59:59 UTC", plain65, time.Date(2024, 2, 29, 15, 59, 59, 0, time.UTC), 100},
			{"65 at 16:00 UTC", plain65, time.Date(2024, 2, 29, 16, 0, 0, 0, time.UTC), 0},
		}
		for i, tc := range cases {
			clk.Set(tc.at)
			for j, via := range []string{"card_number", "code"} {
				body := map[string]any{"idempotency_key": fmt.Sprintf("age-%d-%d", i, j), "scenario": "transit.bus"}
				if via == "code" {
					body["code"] = code(t, c.tn.Node, tc.p.card)
				} else {
					body["card_number"] = tc.p.card
				}
				a, r := c.scan(t, body)
				if a.Decision != "accepted" || a.View["charged_fen"] != tc.fare {
					t.Errorf("%s (%s): %s, want fare %v", tc.name, via, r.Body, tc.fare)
				}
			}
		}
	})
}
