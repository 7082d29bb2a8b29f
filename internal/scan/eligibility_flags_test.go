package scan_test

import (
	"context"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// TestHolderFlagsOnlineAndOffline: a resident's holder flags price the
// bus fare online by card and code; offline, a card's ride is priced
// with the flags stored when the batch arrives and a code's with the
// flags it claimed (the node signed them, a minute at most before the
// ride), so a disability removed after the ride does not charge it.
func TestHolderFlagsOnlineAndOffline(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		p := c.people[0] // 30 years old, no flags
		n := 0
		online := func(body map[string]any) answer {
			t.Helper()
			n++
			body["idempotency_key"], body["scenario"] = "online-"+string(rune('a'+n)), "transit.bus"
			a, r := c.scan(t, body)
			if a.Decision != "accepted" {
				t.Fatalf("scan %v: %s", body, r.Body)
			}
			return a
		}
		if a := online(map[string]any{"card_number": p.card}); a.View["charged_fen"] != 200.0 {
			t.Fatalf("no flags: %v", a.View)
		}
		if _, err := c.tn.SetResidentFlags(ctx, sys, p.id, []string{"disabled"}); err != nil {
			t.Fatal(err)
		}
		for _, body := range []map[string]any{{"card_number": p.card}, {"code": code(t, c.tn.Node, p.card)}} {
			if a := online(body); a.View["charged_fen"] != 0.0 || a.View["concession"] != "disabled_free" {
				t.Fatalf("disabled, %v: %v", body, a.View)
			}
		}

		// Offline: a card's ride and a code issued while disabled, then the
		// flag removed before the batch arrives.
		rideAt := time.Now().Truncate(time.Millisecond)
		held := code(t, c.tn.Node, p.card)
		cardRide := terminal.Record{ID: "card-disabled", Seq: 1, At: rideAt, Scenario: "transit.bus", CardNumber: p.card}
		if rep := upload(t, c, "flags-1", []terminal.Record{cardRide}); rep.Items[0].Status != scan.StatusApplied || rep.Items[0].ChargedFen != 0 {
			t.Fatalf("offline card ride while disabled: %+v", rep.Items)
		}
		if _, err := c.tn.SetResidentFlags(ctx, sys, p.id, nil); err != nil {
			t.Fatal(err)
		}
		rep := upload(t, c, "flags-2", []terminal.Record{
			{ID: "code-held", Seq: 2, At: rideAt.Add(time.Second), Scenario: "transit.bus", Code: held},
			{ID: "card-after", Seq: 3, At: rideAt.Add(2 * time.Second), Scenario: "transit.bus", CardNumber: p.card},
		})
		want := map[string]int64{"code-held": 0, "card-after": 200}
		for _, it := range rep.Items {
			if it.Status != scan.StatusApplied || it.ChargedFen != want[it.ID] {
				t.Errorf("%s: %+v, want applied, charged %d", it.ID, it, want[it.ID])
			}
		}
		if len(rep.Items) != 2 {
			t.Fatalf("%d records reported", len(rep.Items))
		}
		if a := online(map[string]any{"code": code(t, c.tn.Node, p.card)}); a.View["charged_fen"] != 200.0 {
			t.Fatalf("a new code after removal: %v", a.View)
		}
		c.checkBooks(t, 600)
	})
}
