package resident

import (
	"context"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/store/storetest"
)

func TestRegionCodeAndCardRegion(t *testing.T) {
	for city, want := range map[string]string{"CN-310000": "3100", "CN-330100": "3301", "CN-010000": "", "CN-31000": "", "Shanghai": "", "CN-31000X": ""} {
		if got := RegionCode(city); got != want {
			t.Errorf("RegionCode(%q) = %q, want %q", city, got, want)
		}
	}
	seen := map[string]bool{}
	for i := 0; i < 2000; i++ {
		n := newCardNumberIn("3100")
		if !ValidCardNumber(n) || !strings.HasPrefix(n, "3100") || seen[n] || CardRegion(n) != "3100" {
			t.Fatalf("card number %q", n)
		}
		seen[n] = true
	}
	if CardRegion("4111111111111112") != "" || CardRegion(" 4111 1111 1111 1111") != "4111" {
		t.Fatal("CardRegion")
	}
}

// TestCardIssuerPrefix: once a service knows its city, new cards carry the
// city's region code; cards issued before keep their numbers and work.
func TestCardIssuerPrefix(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		e := newEnv(t, dsn)
		ctx := context.Background()
		_, old := e.enrolWithCard(t, "")
		e.svc.SetCardIssuer("CN-330100")
		r, c := e.enrolWithCard(t, "")
		if !strings.HasPrefix(c.Number, "3301") || !ValidCardNumber(c.Number) {
			t.Fatalf("new card %s has no region prefix", c.Number)
		}
		if got, err := e.svc.Card(ctx, old.Number); err != nil || got.Status != StatusActive {
			t.Fatalf("the card issued before: %+v %v", got, err)
		}
		nc, err := e.svc.Replace(ctx, c.Number, "test")
		if err != nil || !strings.HasPrefix(nc.Number, "3301") || nc.ResidentID != r.ID {
			t.Fatalf("replacement %+v %v", nc, err)
		}
		other := New(e.db, e.svc.v, nil)
		other.SetCardIssuer("not-a-city")
		if other.cardPrefix() != "" || e.svc.cardPrefix() != "3301" {
			t.Fatal("prefixes are per service")
		}
	})
}
