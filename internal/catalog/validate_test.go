package catalog

import (
	"slices"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/apperr"
)

func TestValidate(t *testing.T) {
	bus := func() Scenario { return seeded(t, "transit.bus") }
	hotel := func() Scenario { return seeded(t, "identity.hotel_checkin") }
	canteen := func() Scenario { return seeded(t, "campus.canteen") }
	outpatient := func() Scenario { return seeded(t, "medical.outpatient") }
	benefit := func() Scenario { return seeded(t, "subsidy.benefit") }

	cases := []struct {
		name  string
		s     Scenario
		field string // "" = valid
	}{
		{"bus as seeded", bus(), ""},
		{"custom item 13", Scenario{ID: "other.bike_share", Item: 13, NameZh: "共享单车", NameEn: "Bike share", Kind: KindCharge,
			DefaultAmountFen: 150, ViewFields: []string{"decision"}, Enabled: true}, ""},
		{"id empty", mod(bus(), func(s *Scenario) { s.ID = "" }), "id"},
		{"id one segment", mod(bus(), func(s *Scenario) { s.ID = "bus" }), "id"},
		{"id upper case", mod(bus(), func(s *Scenario) { s.ID = "Transit.Bus" }), "id"},
		{"id five segments", mod(bus(), func(s *Scenario) { s.ID = "a.b.c.d.e" }), "id"},
		{"id too long", mod(bus(), func(s *Scenario) { s.ID = "transit." + strings.Repeat("x", 60) }), "id"},
		{"id with space", mod(bus(), func(s *Scenario) { s.ID = "transit.bus 1" }), "id"},
		{"item 0", mod(bus(), func(s *Scenario) { s.Item = 0 }), "item"},
		{"item 14", mod(bus(), func(s *Scenario) { s.Item = 14 }), "item"},
		{"no zh name", mod(bus(), func(s *Scenario) { s.NameZh = "  " }), "name_zh"},
		{"no en name", mod(bus(), func(s *Scenario) { s.NameEn = "" }), "name_en"},
		{"name too long", mod(bus(), func(s *Scenario) { s.NameZh = strings.Repeat("长", 101) }), "name_zh"},
		{"name 100 characters", mod(bus(), func(s *Scenario) { s.NameZh = strings.Repeat("长", 100) }), ""},
		{"bad utf8", mod(bus(), func(s *Scenario) { s.NameEn = "\xff" }), "name_en"},
		{"unknown kind", mod(bus(), func(s *Scenario) { s.Kind = "refund" }), "kind"},
		{"negative fare", mod(bus(), func(s *Scenario) { s.DefaultAmountFen = -1 }), "default_amount_fen"},
		{"huge fare", mod(bus(), func(s *Scenario) { s.DefaultAmountFen = MaxAmountFen + 1 }), "default_amount_fen"},
		{"charge without amount", mod(bus(), func(s *Scenario) { s.DefaultAmountFen = 0 }), "default_amount_fen"},
		{"charge with both amounts", mod(bus(), func(s *Scenario) { s.AmountFromTerminal = true }), "default_amount_fen"},
		{"max on a fixed fare", mod(bus(), func(s *Scenario) { s.MaxAmountFen = 500 }), "max_amount_fen"},
		{"negative max", mod(canteen(), func(s *Scenario) { s.MaxAmountFen = -1 }), "max_amount_fen"},
		{"identify with a fare", mod(hotel(), func(s *Scenario) { s.DefaultAmountFen = 100 }), "default_amount_fen"},
		{"identify with terminal amount", mod(hotel(), func(s *Scenario) { s.AmountFromTerminal = true }), "amount_from_terminal"},
		{"identify with max", mod(hotel(), func(s *Scenario) { s.MaxAmountFen = 100 }), "max_amount_fen"},
		{"medical with a fixed amount", mod(outpatient(), func(s *Scenario) { s.AmountFromTerminal, s.DefaultAmountFen = false, 100 }), "amount_from_terminal"},
		{"medical with both", mod(outpatient(), func(s *Scenario) { s.DefaultAmountFen = 100 }), "default_amount_fen"},
		{"payout fixed amount", mod(benefit(), func(s *Scenario) { s.AmountFromTerminal, s.DefaultAmountFen = false, 10000 }), ""},
		{"unknown category", mod(bus(), func(s *Scenario) { s.Eligibility.Categories = []string{"local", "tourist"} }), "eligibility.categories[1]"},
		{"duplicate category", mod(bus(), func(s *Scenario) { s.Eligibility.Categories = []string{"local", "local"} }), "eligibility.categories[1]"},
		{"negative min age", mod(bus(), func(s *Scenario) { s.Eligibility.MinAge = -1 }), "eligibility.min_age"},
		{"min age 151", mod(bus(), func(s *Scenario) { s.Eligibility.MinAge = 151 }), "eligibility.min_age"},
		{"max below min", mod(bus(), func(s *Scenario) { s.Eligibility.MinAge, s.Eligibility.MaxAge = 18, 17 }), "eligibility.max_age"},
		{"max equal min", mod(bus(), func(s *Scenario) { s.Eligibility.MinAge, s.Eligibility.MaxAge = 18, 18 }), ""},
		{"bad flag", mod(bus(), func(s *Scenario) { s.Eligibility.RequireAnyFlag = []string{"Student"} }), "eligibility.require_any_flag[0]"},
		{"duplicate flag", mod(bus(), func(s *Scenario) { s.Eligibility.RequireAnyFlag = []string{"student", "student"} }), "eligibility.require_any_flag[1]"},
		{"concessions on identify", mod(hotel(), func(s *Scenario) { s.Concessions = bus().Concessions }), "concessions"},
		{"concessions on medical", mod(outpatient(), func(s *Scenario) { s.Concessions = bus().Concessions }), "concessions"},
		{"too many concessions", mod(bus(), func(s *Scenario) {
			for i := range MaxConcessions {
				s.Concessions = append(s.Concessions, Concession{ID: "c" + string(rune('a'+i)), NameZh: "优", NameEn: "c", MinAge: 1, PayPercent: 50})
			}
		}), "concessions"},
		{"concession without condition", mod(bus(), func(s *Scenario) { s.Concessions[1].MinAge, s.Concessions[1].MaxAge = 0, 0 }), "concessions[1]"},
		{"concession pays 100%", mod(bus(), func(s *Scenario) { s.Concessions[1].PayPercent = 100 }), "concessions[1].pay_percent"},
		{"concession pays -1%", mod(bus(), func(s *Scenario) { s.Concessions[0].PayPercent = -1 }), "concessions[0].pay_percent"},
		{"concession bad id", mod(bus(), func(s *Scenario) { s.Concessions[2].ID = "Free!" }), "concessions[2].id"},
		{"concession duplicate id", mod(bus(), func(s *Scenario) { s.Concessions[3].ID = s.Concessions[0].ID }), "concessions[3].id"},
		{"concession no name", mod(bus(), func(s *Scenario) { s.Concessions[0].NameEn = "" }), "concessions[0].name_en"},
		{"concession ages inverted", mod(bus(), func(s *Scenario) { s.Concessions[1].MinAge, s.Concessions[1].MaxAge = 64, 60 }), "concessions[1].max_age"},
		{"concession bad flag", mod(bus(), func(s *Scenario) { s.Concessions[2].AnyFlag = []string{"dis abled"} }), "concessions[2].any_flag[0]"},
		{"unknown view field", mod(bus(), func(s *Scenario) { s.ViewFields = []string{"decision", "full_id_number"} }), "view_fields[1]"},
		{"duplicate view field", mod(bus(), func(s *Scenario) { s.ViewFields = []string{"decision", "decision"} }), "view_fields[1]"},
		{"offline medical", mod(outpatient(), func(s *Scenario) { s.OfflineAllowed = true }), "offline_allowed"},
		{"offline payout", mod(benefit(), func(s *Scenario) { s.OfflineAllowed = true }), "offline_allowed"},
		{"credit on identify", mod(hotel(), func(s *Scenario) { s.CreditLimitFen = 100 }), "credit_limit_fen"},
		{"negative credit", mod(bus(), func(s *Scenario) { s.CreditLimitFen = -1 }), "credit_limit_fen"},
		{"credit too large", mod(bus(), func(s *Scenario) { s.CreditLimitFen = MaxCreditLimitFen + 1 }), "credit_limit_fen"},
		{"credit at the limit", mod(bus(), func(s *Scenario) { s.CreditLimitFen = MaxCreditLimitFen }), ""},
		{"PIN on identify", mod(hotel(), func(s *Scenario) { s.RequirePIN = true }), "require_pin"},
		{"PIN on payout", mod(benefit(), func(s *Scenario) { s.RequirePIN = true }), "require_pin"},
		{"negative PIN threshold", mod(canteen(), func(s *Scenario) { s.PINAboveFen = -1 }), "pin_above_fen"},
		{"PIN threshold without PIN", mod(bus(), func(s *Scenario) { s.PINAboveFen = 100 }), "pin_above_fen"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.s)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			e := apperr.As(err)
			if err == nil || e.Code != apperr.ValidationFailed || e.Field != tc.field {
				t.Fatalf("Validate = %v (field %q), want validation_failed on %q", err, e.Field, tc.field)
			}
			if en, zh := e.Text(); en == "" || zh == "" {
				t.Fatal("missing text")
			}
		})
	}
}

func mod(s Scenario, f func(*Scenario)) Scenario { s = s.Clone(); f(&s); return s }

func TestSeed(t *testing.T) {
	items := SeedItems()
	if len(items) != ItemCount {
		t.Fatalf("%d items", len(items))
	}
	for i, it := range items {
		if it.Number != i+1 || it.NameZh == "" || it.NameEn == "" || it.DescriptionZh == "" || it.DescriptionEn == "" {
			t.Errorf("item %d: %+v", i+1, it)
		}
	}
	ss := SeedScenarios()
	ids := map[string]bool{}
	perItem := map[int]int{}
	lastItem := 0
	for _, s := range ss {
		if err := Validate(s); err != nil {
			t.Errorf("%s: %v", s.ID, err)
		}
		if ids[s.ID] {
			t.Errorf("duplicate id %s", s.ID)
		}
		ids[s.ID] = true
		if s.Item < lastItem {
			t.Errorf("%s out of item order", s.ID)
		}
		lastItem = s.Item
		perItem[s.Item]++
		if !s.Enabled || !s.Seeded {
			t.Errorf("%s: enabled %v seeded %v", s.ID, s.Enabled, s.Seeded)
		}
		if !slices.Contains(s.ViewFields, "decision") {
			t.Errorf("%s: the decision is not visible", s.ID)
		}
	}
	for n := 1; n <= 12; n++ {
		if perItem[n] == 0 {
			t.Errorf("item %d has no scenario", n)
		}
	}
	if perItem[13] != 0 {
		t.Errorf("item 13 is seeded with %d scenarios", perItem[13])
	}

	// What the brief names, by kind.
	want := map[string]Kind{
		"social.pension_counter": KindIdentify, "social.insurance_counter": KindIdentify,
		"hr.employment_service": KindIdentify,
		"medical.outpatient":    KindMedical, "medical.registration": KindIdentify,
		"subsidy.benefit": KindPayout, "subsidy.farm": KindPayout,
		"identity.hotel_checkin": KindIdentify, "identity.exam_registration": KindIdentify,
		"transit.bus": KindCharge, "transit.trolleybus": KindCharge, "transit.metro_entry": KindAccess, "transit.metro_exit": KindCharge,
		"library.loan": KindIdentify, "museum.entry": KindAccess, "scenic.ticket": KindCharge,
		"campus.gate": KindAccess, "campus.canteen": KindCharge, "campus.fees": KindCharge, "campus.library_loan": KindIdentify, "campus.exam": KindIdentify,
		"bills.water": KindCharge, "bills.electricity": KindCharge, "bills.gas": KindCharge, "bills.heating": KindCharge, "bills.fine": KindCharge, "bills.union_dues": KindCharge,
		"finance.purchase": KindCharge, "finance.provident_withdrawal": KindPayout,
		"employer.door": KindAccess, "employer.attendance": KindIdentify, "employer.canteen": KindCharge, "employer.salary": KindPayout,
		"community.door": KindAccess, "community.parking": KindCharge, "community.property_fee": KindCharge, "community.housekeeping": KindCharge,
	}
	byID := map[string]Scenario{}
	for _, s := range ss {
		byID[s.ID] = s
	}
	for id, k := range want {
		if s, ok := byID[id]; !ok || s.Kind != k {
			t.Errorf("%s: kind %q, present %v; want %q", id, s.Kind, ok, k)
		}
	}
	bus := byID["transit.bus"]
	if bus.DefaultAmountFen != 200 || !bus.OfflineAllowed || bus.CreditLimitFen != 500 || bus.RequirePIN {
		t.Errorf("bus: %+v", bus)
	}
	if h := byID["identity.hotel_checkin"]; !slices.Equal(h.ViewFields, []string{"decision", "reason", "name", "masked_id_number", "category"}) {
		t.Errorf("hotel view fields %v", h.ViewFields)
	}
	if l := byID["library.loan"]; slices.Contains(l.ViewFields, "name") || !slices.Contains(l.ViewFields, "masked_name") {
		t.Errorf("library view fields %v", l.ViewFields)
	}
	for _, s := range ss {
		if s.Kind == KindPayout && !s.LocalOnly {
			t.Errorf("%s: payout open to other cities' cards", s.ID)
		}
	}
}
