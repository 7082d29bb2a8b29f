package node_test

import (
	"slices"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
)

// TestAgeFlagsAreOfferedClaimSets: for every age, the age claims a home
// city answers a physical card's cross-city charge with are exactly one
// of the claim sets the visited city offers fares for (the fares are
// matched exactly), and they say 70+, 65+, 60+ or 6 and under.
func TestAgeFlagsAreOfferedClaimSets(t *testing.T) {
	at := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	sets := scan.AgeClaimSets()
	for age := 0; age <= 110; age++ {
		r := resident.Resident{BirthDate: at.AddDate(-age, 0, -1)}
		fl := node.AgeFlags(r, at)
		if !slices.ContainsFunc(sets, func(s []string) bool { return slices.Equal(s, fl) }) {
			t.Fatalf("age %d: claims %v are not among the offered sets %v", age, fl, sets)
		}
		var want []string
		switch {
		case age >= 70:
			want = []string{"senior_65", "senior_70"}
		case age >= 65:
			want = []string{"senior_65"}
		case age >= 60:
			want = []string{"senior_60"}
		case age <= 6:
			want = []string{"child_6"}
		}
		if !slices.Equal(fl, want) {
			t.Fatalf("age %d: %v, want %v", age, fl, want)
		}
	}
}
