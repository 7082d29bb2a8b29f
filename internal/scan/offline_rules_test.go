package scan_test

import (
	"context"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// TestOfflineRidesUseTheRulesOfTheirTime: the bus fare is raised and the
// seniors' free ride withdrawn while a terminal is offline. When its batch
// is uploaded, the rides before the change cost what they cost then (the
// adult's fare as the terminal recorded it, the 70-year-old's nothing),
// and the rides after it the new fare.
func TestOfflineRidesUseTheRulesOfTheirTime(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		adult, elder := c.people[0], c.people[1]
		before := time.Now().Add(-20 * time.Minute).Truncate(time.Millisecond)
		sc, err := c.tn.Catalog.Scenario(ctx, "transit.bus")
		if err != nil {
			t.Fatal(err)
		}
		oldFare := sc.DefaultAmountFen
		sc.DefaultAmountFen = oldFare + 100
		sc.Concessions = nil
		if _, err := c.tn.Catalog.UpdateScenario(ctx, sc); err != nil {
			t.Fatal(err)
		}
		after := time.Now().Truncate(time.Millisecond)
		rep := upload(t, c, "fare-change", []terminal.Record{
			{ID: "old-adult", Seq: 1, At: before, Scenario: "transit.bus", CardNumber: adult.card, AmountFen: oldFare},
			{ID: "old-elder", Seq: 2, At: before.Add(time.Second), Scenario: "transit.bus", CardNumber: elder.card},
			{ID: "new-adult", Seq: 3, At: after, Scenario: "transit.bus", CardNumber: adult.card},
			{ID: "new-elder", Seq: 4, At: after.Add(time.Millisecond), Scenario: "transit.bus", CardNumber: elder.card},
		})
		want := map[string]int64{"old-adult": oldFare, "old-elder": 0, "new-adult": oldFare + 100, "new-elder": oldFare + 100}
		for _, it := range rep.Items {
			if it.Status != scan.StatusApplied || it.Decision != scan.Accepted || it.ChargedFen != want[it.ID] {
				t.Errorf("%s: %+v; want applied, charged %d", it.ID, it, want[it.ID])
			}
		}
		if len(rep.Items) != len(want) {
			t.Fatalf("%d records reported, want %d", len(rep.Items), len(want))
		}
		c.checkBooks(t, 3*oldFare+200)
	})
}
