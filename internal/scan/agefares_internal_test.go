package scan

import (
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/catalog"
)

// TestAgeClaimsPriceScenicTickets: another city's resident is priced by
// the age claims of their code or card answer, never the birth date. At a
// scenic spot (free from 70 and to 6, half from 60 to 69) the claims must
// tell 70+ from 65–69 and a child from an adult, or a visitor of 72 pays
// half and a child of 5 the full ticket.
func TestAgeClaimsPriceScenicTickets(t *testing.T) {
	var sc catalog.Scenario
	for _, s := range catalog.SeedScenarios() {
		if s.ID == "scenic.ticket" {
			sc = s
		}
	}
	if sc.ID == "" {
		t.Fatal("no scenic.ticket in the seed")
	}
	full := sc.DefaultAmountFen
	_, all := (&Service{}).fares(sc, full, full)
	for key, want := range map[string]int64{
		"local|":                    full,
		"local|child_6":             0,
		"local|senior_60":           full / 2,
		"local|senior_65":           full / 2,
		"local|senior_65,senior_70": 0,
	} {
		d, ok := all[key]
		if !ok || d.Amount != want {
			t.Errorf("%s: %+v (offered %v), want %d", key, d, ok, want)
		}
	}
	for flags, age := range map[string]int{"": 30, "child_6": 6, "senior_60": 60, "senior_65": 65, "senior_65,senior_70": 70} {
		var fl []string
		if flags != "" {
			fl = strings.Split(flags, ",")
		}
		if got := remoteAge(fl); got != age {
			t.Errorf("remoteAge(%q) = %d, want %d", flags, got, age)
		}
	}
}
