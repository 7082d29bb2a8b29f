package federation

import (
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/scan"
)

// TestFares: the home city charges the lowest of the visited city's fares
// whose claims are exactly its resident's, never more than asked, and a
// message's fares are bounded.
func TestFares(t *testing.T) {
	c := Charge{ID: "CN-310000.x", Mode: ModeOnline, Subject: CardSubject + "3301000000000001", AmountFen: 200, Scenario: "transit.bus", CreatedAt: time.Now(),
		Fares: []scan.Fare{
			{Category: "local", Flags: []string{"senior_60"}, AmountFen: 100},
			{Category: "local", Flags: []string{"senior_65"}, AmountFen: 0},
			{Category: "permanent_resident", Flags: []string{"senior_60"}, AmountFen: 100},
		}}
	for _, tc := range []struct {
		cat   string
		flags []string
		want  int64
	}{
		{"local", nil, 200},
		{"local", []string{"senior_60"}, 100},
		{"local", []string{"senior_65"}, 0},
		{"insured_nonlocal", []string{"senior_65"}, 200}, // no fare for these claims
		{"local", []string{"senior_60", "student"}, 200}, // claims must match exactly
	} {
		if got := (&claims{category: tc.cat, flags: tc.flags}).fare(c); got != tc.want {
			t.Errorf("fare for %s %v = %d, want %d", tc.cat, tc.flags, got, tc.want)
		}
	}
	if !validCharge("CN-310000", c) {
		t.Fatal("a valid charge with fares refused")
	}
	for _, a := range []int64{200, 100, 0} {
		if !amountOK(a, c) {
			t.Errorf("amount %d is one of the charge's", a)
		}
	}
	if amountOK(150, c) {
		t.Error("amount 150 is not one of the charge's")
	}
	bad := c
	bad.Fares = []scan.Fare{{Category: "local", AmountFen: 300}} // more than asked
	if validCharge("CN-310000", bad) {
		t.Error("a fare above the amount asked accepted")
	}
	bad.Fares = make([]scan.Fare, 33)
	if validCharge("CN-310000", bad) {
		t.Error("33 fares accepted")
	}
}
