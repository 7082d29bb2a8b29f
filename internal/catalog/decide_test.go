package catalog

import (
	"math"
	"math/big"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
)

func seeded(t testing.TB, id string) Scenario {
	t.Helper()
	for _, s := range SeedScenarios() {
		if s.ID == id {
			return s
		}
	}
	t.Fatalf("no seeded scenario %s", id)
	return Scenario{}
}

func adult() Holder {
	return Holder{Category: CategoryLocal, Age: 30, CardStatus: CardActive, Local: true}
}

func with(h Holder, f func(*Holder)) Holder { f(&h); return h }

func age(n int) func(*Holder)            { return func(h *Holder) { h.Age = n } }
func flags(fs ...string) func(*Holder)   { return func(h *Holder) { h.Flags = fs } }
func category(c string) func(*Holder)    { return func(h *Holder) { h.Category = c } }
func visitor() func(*Holder)             { return func(h *Holder) { h.Local = false } }
func cardStatus(st string) func(*Holder) { return func(h *Holder) { h.CardStatus = st } }

func disabled(s Scenario) Scenario { s.Enabled = false; return s }

func ageRule(minAge, maxAge int) Scenario {
	return Scenario{ID: "test.age", Item: 13, NameZh: "年龄测试", NameEn: "Age test", Kind: KindIdentify,
		Eligibility: Eligibility{MinAge: minAge, MaxAge: maxAge}, Enabled: true}
}

func TestDecide(t *testing.T) {
	bus := seeded(t, "transit.bus")
	scenic := seeded(t, "scenic.ticket")
	canteen := seeded(t, "campus.canteen")
	outpatient := seeded(t, "medical.outpatient")
	purchase := seeded(t, "finance.purchase")
	fees := seeded(t, "campus.fees")
	benefit := seeded(t, "subsidy.benefit")
	farm := seeded(t, "subsidy.farm")
	hotel := seeded(t, "identity.hotel_checkin")
	gate := seeded(t, "campus.gate")
	museum := seeded(t, "museum.entry")
	metroExit := seeded(t, "transit.metro_exit")
	unknownKind := ageRule(0, 0)
	unknownKind.Kind = "teleport"
	noFare := bus
	noFare.DefaultAmountFen = 0

	type want struct {
		eligible   bool
		reason     apperr.Code
		rule       string
		amount     int64
		concession string
		pin        bool
	}
	ok := func(amount int64, concession string) want {
		return want{eligible: true, amount: amount, concession: concession}
	}
	okPIN := func(amount int64) want { return want{eligible: true, amount: amount, pin: true} }
	no := func(code apperr.Code, rule string) want { return want{reason: code, rule: rule} }

	cases := []struct {
		name string
		s    Scenario
		h    Holder
		amt  int64
		want want
	}{
		// transit concessions and age boundaries
		{"bus adult", bus, adult(), 0, ok(200, "")},
		{"bus adult sends the fare", bus, adult(), 200, ok(200, "")},
		{"bus age 0", bus, with(adult(), age(0)), 0, ok(200, "")},
		{"bus age 59", bus, with(adult(), age(59)), 0, ok(200, "")},
		{"bus age 60 half", bus, with(adult(), age(60)), 0, ok(100, "senior_60_half")},
		{"bus age 64 half", bus, with(adult(), age(64)), 0, ok(100, "senior_60_half")},
		{"bus age 65 free", bus, with(adult(), age(65)), 0, ok(0, "senior_65_free")},
		{"bus age 150 free", bus, with(adult(), age(150)), 0, ok(0, "senior_65_free")},
		{"bus student half", bus, with(adult(), flags("student")), 0, ok(100, "student_half")},
		{"bus disabled free", bus, with(adult(), flags("disabled")), 0, ok(0, "disabled_free")},
		{"bus student 66 gets the cheaper senior concession", bus, with(with(adult(), age(66)), flags("student")), 0, ok(0, "senior_65_free")},
		{"bus student 62: tie goes to the first declared", bus, with(with(adult(), age(62)), flags("student")), 0, ok(100, "senior_60_half")},
		{"bus unknown flag ignored", bus, with(adult(), flags("vip")), 0, ok(200, "")},
		{"bus visitor, same treatment as a local", bus, with(with(adult(), visitor()), age(70)), 0, ok(0, "senior_65_free")},
		{"bus insured non-local", bus, with(adult(), category(CategoryInsuredNonlocal)), 0, ok(200, "")},
		{"bus permanent resident", bus, with(adult(), category(CategoryPermanentResident)), 0, ok(200, "")},
		{"bus wrong fare", bus, adult(), 300, no(apperr.InvalidAmount, RuleAmount)},
		{"bus negative fare", bus, adult(), -200, no(apperr.InvalidAmount, RuleAmount)},
		{"bus overflow", bus, adult(), math.MaxInt64, no(apperr.Overflow, RuleAmount)},
		{"bus with no configured fare", noFare, adult(), 0, no(apperr.ValidationFailed, "default_amount_fen")},
		{"metro exit distance fare, 62 half", metroExit, with(adult(), age(62)), 700, ok(350, "senior_60_half")},
		{"metro exit odd fare rounds down for the holder", metroExit, with(adult(), age(62)), 301, ok(150, "senior_60_half")},
		{"metro exit needs an amount", metroExit, adult(), 0, no(apperr.InvalidAmount, RuleAmount)},
		{"metro exit above its maximum", metroExit, adult(), 2001, no(apperr.InvalidAmount, RuleAmount)},

		// scenic spot
		{"scenic 59", scenic, with(adult(), age(59)), 0, ok(6000, "")},
		{"scenic 60 half", scenic, with(adult(), age(60)), 0, ok(3000, "senior_60_half")},
		{"scenic 69 half", scenic, with(adult(), age(69)), 0, ok(3000, "senior_60_half")},
		{"scenic 70 free", scenic, with(adult(), age(70)), 0, ok(0, "senior_70_free")},
		{"scenic child 6 free", scenic, with(adult(), age(6)), 0, ok(0, "child_free")},
		{"scenic child 7 pays", scenic, with(adult(), age(7)), 0, ok(6000, "")},
		{"scenic veteran", scenic, with(adult(), flags("veteran")), 0, ok(0, "veteran_free")},

		// terminal amounts and PIN thresholds
		{"canteen 5000 no PIN", canteen, with(adult(), flags("student")), 5000, ok(5000, "")},
		{"canteen 5001 PIN", canteen, adult(), 5001, okPIN(5001)},
		{"canteen at its maximum", canteen, adult(), 10000, okPIN(10000)},
		{"canteen above its maximum", canteen, adult(), 10001, no(apperr.InvalidAmount, RuleAmount)},
		{"canteen missing amount", canteen, adult(), 0, no(apperr.InvalidAmount, RuleAmount)},
		{"canteen negative amount", canteen, adult(), -1, no(apperr.InvalidAmount, RuleAmount)},
		{"fees always ask for the PIN", fees, with(adult(), flags("student")), 1, okPIN(1)},
		{"fees need the student flag", fees, adult(), 1, no(apperr.NotEligible, RuleFlags)},
		{"purchase at the package maximum", purchase, adult(), MaxAmountFen, okPIN(MaxAmountFen)},
		{"purchase one above the package maximum", purchase, adult(), MaxAmountFen + 1, no(apperr.Overflow, RuleAmount)},
		{"purchase 20000 no PIN", purchase, adult(), 20000, ok(20000, "")},
		{"purchase 20001 PIN", purchase, adult(), 20001, okPIN(20001)},

		// medical
		{"outpatient", outpatient, adult(), 12345, ok(12345, "")},
		{"outpatient large bill asks the PIN", outpatient, adult(), 20001, okPIN(20001)},
		{"outpatient cross-city visitor", outpatient, with(with(adult(), visitor()), category(CategoryInsuredNonlocal)), 5000, ok(5000, "")},
		{"outpatient no concessions for seniors", outpatient, with(adult(), age(80)), 5000, ok(5000, "")},
		{"outpatient missing amount", outpatient, adult(), 0, no(apperr.InvalidAmount, RuleAmount)},

		// payouts, categories, local-only
		{"benefit local", benefit, adult(), 10000, ok(10000, "")},
		{"benefit insured non-local of this city", benefit, with(adult(), category(CategoryInsuredNonlocal)), 10000, ok(10000, "")},
		{"benefit insured non-local visitor: local only", benefit, with(with(adult(), category(CategoryInsuredNonlocal)), visitor()), 10000, no(apperr.NotEligible, RuleLocal)},
		{"benefit local-hukou visitor from another city: local only", benefit, with(adult(), visitor()), 10000, no(apperr.NotEligible, RuleLocal)},
		{"farm subsidy local", farm, adult(), 10000, ok(10000, "")},
		{"farm subsidy insured non-local: category", farm, with(adult(), category(CategoryInsuredNonlocal)), 10000, no(apperr.NotEligible, RuleCategory)},
		{"farm subsidy permanent resident: category", farm, with(adult(), category(CategoryPermanentResident)), 10000, no(apperr.NotEligible, RuleCategory)},
		{"payout missing amount", benefit, adult(), 0, no(apperr.InvalidAmount, RuleAmount)},
		{"unknown holder category", hotel, with(adult(), category("tourist")), 0, no(apperr.NotEligible, RuleCategory)},
		{"empty holder category", hotel, with(adult(), category("")), 0, no(apperr.NotEligible, RuleCategory)},

		// identify and access
		{"hotel check-in", hotel, with(adult(), category(CategoryPermanentResident)), 0, ok(0, "")},
		{"hotel check-in with an amount", hotel, adult(), 1, no(apperr.InvalidAmount, RuleAmount)},
		{"museum free entry", museum, with(adult(), age(70)), 0, ok(0, "")},
		{"campus gate without flag", gate, adult(), 0, no(apperr.NotEligible, RuleFlags)},
		{"campus gate teacher", gate, with(adult(), flags("x", "teacher")), 0, ok(0, "")},

		// card status and disabled scenario
		{"suspended card", bus, with(adult(), cardStatus("suspended")), 0, no(apperr.CardNotActive, RuleCard)},
		{"lost card", hotel, with(adult(), cardStatus("lost")), 0, no(apperr.CardNotActive, RuleCard)},
		{"no card status", hotel, with(adult(), cardStatus("")), 0, no(apperr.CardNotActive, RuleCard)},
		{"disabled scenario", disabled(bus), adult(), 0, no(apperr.ScenarioDisabled, RuleEnabled)},
		{"disabled scenario is reported before the card", disabled(bus), with(adult(), cardStatus("lost")), 0, no(apperr.ScenarioDisabled, RuleEnabled)},

		// age rules
		{"min 18: 17", ageRule(18, 60), with(adult(), age(17)), 0, no(apperr.NotEligible, RuleMinAge)},
		{"min 18: 18", ageRule(18, 60), with(adult(), age(18)), 0, ok(0, "")},
		{"max 60: 60", ageRule(18, 60), with(adult(), age(60)), 0, ok(0, "")},
		{"max 60: 61", ageRule(18, 60), with(adult(), age(61)), 0, no(apperr.NotEligible, RuleMaxAge)},
		{"no bounds: 0", ageRule(0, 0), with(adult(), age(0)), 0, ok(0, "")},
		{"negative age", ageRule(0, 0), with(adult(), age(-1)), 0, no(apperr.ValidationFailed, "age")},
		{"age 151", ageRule(0, 0), with(adult(), age(151)), 0, no(apperr.ValidationFailed, "age")},
		{"unknown kind", unknownKind, adult(), 0, no(apperr.ValidationFailed, "kind")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.s.Clone()
			d := Decide(tc.s, tc.h, tc.amt)
			got := want{d.Eligible, d.Reason, d.Rule, d.Amount, d.Concession, d.PINRequired}
			if got != tc.want {
				t.Fatalf("Decide = %+v, want %+v (detail %q)", got, tc.want, d.Detail)
			}
			if !reflect.DeepEqual(before, tc.s) {
				t.Fatal("Decide changed the scenario")
			}
			if d.Eligible {
				if d.Err() != nil {
					t.Fatal("Err() of an eligible decision is not nil")
				}
				if d.Amount < 0 || d.Amount > d.BaseAmount {
					t.Fatalf("amount %d outside [0, base %d]", d.Amount, d.BaseAmount)
				}
				if d.Concession == "" && d.Amount != d.BaseAmount {
					t.Fatalf("amount %d differs from base %d without a concession", d.Amount, d.BaseAmount)
				}
				return
			}
			e := d.Err()
			if e == nil || e.Code != tc.want.reason || d.Amount != 0 {
				t.Fatalf("Err() = %v, amount %d", e, d.Amount)
			}
			if en, zh := e.Text(); en == "" || zh == "" {
				t.Fatal("refusal without both texts")
			}
			if tc.want.reason == apperr.ValidationFailed && e.Field != tc.want.rule {
				t.Fatalf("field = %q, want %q", e.Field, tc.want.rule)
			}
		})
	}
}

// The concession arithmetic is exact floor(amount*pct/100) for every
// amount up to the maximum, without overflow.
func TestApplyPercent(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	amounts := []int64{0, 1, 99, 100, 101, 199, 301, MaxAmountFen, MaxAmountFen - 1, math.MaxInt64, math.MaxInt64 - 1}
	for range 2000 {
		amounts = append(amounts, r.Int64N(MaxAmountFen+1), r.Int64())
	}
	for _, a := range amounts {
		for pct := 0; pct <= 100; pct++ {
			want := new(big.Int).Mul(big.NewInt(a), big.NewInt(int64(pct)))
			want.Quo(want, big.NewInt(100))
			if got := applyPercent(a, pct); !want.IsInt64() || got != want.Int64() {
				t.Fatalf("applyPercent(%d, %d) = %d, want %s", a, pct, got, want)
			}
		}
	}
}

// Invariant over random holders: a charge never costs more than its base,
// free concessions cost zero, and the amount is always one a matching
// concession (or none) gives.
func TestDecideRandomHoldersInvariants(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	flagPool := []string{"student", "disabled", "veteran", "teacher", "vip"}
	statuses := []string{CardActive, CardActive, CardActive, "suspended", "lost"}
	var charges []Scenario
	for _, s := range SeedScenarios() {
		if s.Kind == KindCharge && len(s.Concessions) > 0 {
			charges = append(charges, s)
		}
	}
	for range 20000 {
		s := charges[r.IntN(len(charges))]
		h := Holder{Category: Categories[r.IntN(3)], Age: r.IntN(MaxAge + 1), CardStatus: statuses[r.IntN(len(statuses))], Local: r.IntN(2) == 0}
		for _, f := range flagPool {
			if r.IntN(4) == 0 {
				h.Flags = append(h.Flags, f)
			}
		}
		amt := int64(0)
		if s.AmountFromTerminal {
			amt = 1 + r.Int64N(max(s.MaxAmountFen, 1))
		}
		d := Decide(s, h, amt)
		if h.CardStatus != CardActive {
			if d.Eligible || d.Reason != apperr.CardNotActive {
				t.Fatalf("inactive card accepted: %+v", d)
			}
			continue
		}
		if !d.Eligible {
			t.Fatalf("%s refused %+v: %+v", s.ID, h, d)
		}
		best := d.BaseAmount
		for _, c := range s.Concessions {
			if concessionMatches(c, h) {
				best = min(best, applyPercent(d.BaseAmount, c.PayPercent))
			}
		}
		if d.Amount != best {
			t.Fatalf("%s %+v: amount %d, cheapest matching is %d", s.ID, h, d.Amount, best)
		}
	}
}

func TestSplitMedical(t *testing.T) {
	cases := []struct{ amount, balance, med, wallet int64 }{
		{10000, 50000, 10000, 0},
		{10000, 10000, 10000, 0},
		{10000, 9999, 9999, 1},
		{10000, 0, 0, 10000},
		{10000, -500, 0, 10000},
		{0, 100, 0, 0},
		{-5, 100, 0, 0},
		{MaxAmountFen, math.MaxInt64, MaxAmountFen, 0},
	}
	for _, c := range cases {
		m, w := SplitMedical(c.amount, c.balance)
		if m != c.med || w != c.wallet {
			t.Errorf("SplitMedical(%d, %d) = %d, %d; want %d, %d", c.amount, c.balance, m, w, c.med, c.wallet)
		}
		if c.amount > 0 && m+w != c.amount {
			t.Errorf("split does not add up")
		}
	}
}

func TestAgeBand(t *testing.T) {
	cases := map[int]string{-1: "", 0: "0-13", 13: "0-13", 14: "14-17", 17: "14-17", 18: "18-59", 59: "18-59",
		60: "60-64", 64: "60-64", 65: "65-69", 69: "65-69", 70: "70+", 150: "70+"}
	for a, want := range cases {
		if got := AgeBand(a); got != want {
			t.Errorf("AgeBand(%d) = %q, want %q", a, got, want)
		}
	}
}
