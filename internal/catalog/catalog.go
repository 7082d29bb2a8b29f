// Package catalog is the service catalogue of a city node: the 13 service
// items of the regulation (《郑州市居民服务一卡通规定》, in the regulation's
// order) and their scenarios — what a scan does at a bus gate, a library
// desk, a hospital cashier or a hotel front desk.
//
// Design decisions:
//
//   - Scenarios are data, not code. Eligibility rules, concessions and the
//     fields a provider may see are JSON documents in the database
//     (catalog_scenarios), checked by Validate and evaluated by two small pure
//     functions: Decide (may this holder use it, and what does it cost) and
//     View (what may the provider learn). Adding a scenario or changing a fare
//     or a concession is an hr_admin edit, never a release.
//   - Seeding is idempotent and additive. Open inserts the seeded items and
//     scenarios that are missing (ON CONFLICT DO NOTHING) and never touches
//     an existing row: staff edits survive restarts and upgrades, and a
//     scenario seeded by a newer version appears on the next start. Staff
//     cannot delete a scenario, only disable it, so scans referring to it in
//     the past stay meaningful.
//   - Data minimisation is enforced by a closed vocabulary of view fields
//     (Fields). There is no field for a full ID number, so no scenario —
//     seeded or created by staff — can declare one: validation refuses
//     unknown fields, and View drops any key that is not both declared and in
//     the vocabulary, even for a Scenario value that skipped validation.
//   - Scenario(ctx, id) is on the scan path, so it reads an in-memory
//     snapshot of all scenarios. Every change bumps a generation counter
//     (catalog_generation) in the same transaction; the local snapshot is
//     dropped at once, and other processes sharing a PostgreSQL database
//     notice the new generation within Options.RefreshInterval (one tiny
//     query at most that often; never one per scan).
//   - Amounts are int64 fen. Concessions are a pay percentage computed
//     without overflow and rounded down (in the holder's favour); when
//     several concessions match, the cheapest one wins, ties to the first
//     declared.
//   - A card that is not active never passes Decide: that is an invariant of
//     the system, not a rule staff can relax.
//
// The package depends only on internal/store and internal/apperr; the scan
// path (terminals) and the HTTP API call it.
package catalog

import (
	"slices"
	"time"
)

// Kind says what a scan does in a scenario.
type Kind string

// The scenario kinds.
const (
	// KindIdentify proves who the holder is (hotel check-in, library loan, exam hall).
	KindIdentify Kind = "identify"
	// KindAccess opens a door or gate (museum entry, campus gate, community door).
	KindAccess Kind = "access"
	// KindCharge takes money from the holder's wallet (fares, canteens, bills).
	KindCharge Kind = "charge"
	// KindMedical settles a medical bill: medical personal account first, then wallet.
	KindMedical Kind = "medical"
	// KindPayout pays money into the holder's wallet (subsidies, salary, provident fund).
	KindPayout Kind = "payout"
)

// Kinds lists every kind in a stable order.
var Kinds = []Kind{KindIdentify, KindAccess, KindCharge, KindMedical, KindPayout}

// Holder categories (who the regulation serves).
const (
	CategoryLocal             = "local"              // 本市户籍
	CategoryInsuredNonlocal   = "insured_nonlocal"   // 非本市户籍、在本市参保或享受公共服务
	CategoryPermanentResident = "permanent_resident" // 外国人永久居留身份证（五星卡）
)

// Categories lists every holder category.
var Categories = []string{CategoryLocal, CategoryInsuredNonlocal, CategoryPermanentResident}

// CardActive is the only card status that passes Decide.
const CardActive = "active"

// Limits.
const (
	// MaxAmountFen is the largest amount any scan may carry (10 billion yuan);
	// larger requests are refused with apperr.Overflow.
	MaxAmountFen int64 = 1_000_000_000_000
	// MaxCreditLimitFen bounds "ride first, pay later" credit (1,000 yuan).
	MaxCreditLimitFen int64 = 100_000
	// MaxAge bounds ages in rules and holders.
	MaxAge = 150
	// ItemCount is the number of service items in the regulation.
	ItemCount = 13
	// MaxConcessions bounds the concessions of one scenario.
	MaxConcessions = 16
)

// Item is one of the 13 service items of the regulation.
type Item struct {
	Number        int    `json:"number"`
	NameZh        string `json:"name_zh"`
	NameEn        string `json:"name_en"`
	DescriptionZh string `json:"description_zh"`
	DescriptionEn string `json:"description_en"`
}

// Eligibility says who may use a scenario. Zero values mean "no restriction".
type Eligibility struct {
	// Categories allowed; empty means every category.
	Categories []string `json:"categories,omitempty"`
	// MinAge is the minimum age in whole years (0 = none).
	MinAge int `json:"min_age,omitempty"`
	// MaxAge is the maximum age in whole years, inclusive (0 = none).
	MaxAge int `json:"max_age,omitempty"`
	// RequireAnyFlag: the holder must carry at least one of these flags
	// (e.g. "student", "teacher"); empty means no flag is needed.
	RequireAnyFlag []string `json:"require_any_flag,omitempty"`
}

// Concession reduces the amount of a charge for holders who match all its
// conditions (age range and/or one of the flags).
type Concession struct {
	// ID is a short slug, reported in Decision.Concession (e.g. "senior_65_free").
	ID     string `json:"id"`
	NameZh string `json:"name_zh"`
	NameEn string `json:"name_en"`
	// MinAge and MaxAge bound the holder's age, inclusive (0 = no bound).
	MinAge int `json:"min_age,omitempty"`
	MaxAge int `json:"max_age,omitempty"`
	// AnyFlag: the holder must carry one of these flags (empty = no flag condition).
	AnyFlag []string `json:"any_flag,omitempty"`
	// PayPercent is the share of the amount the holder pays: 0 = free, 50 = half.
	PayPercent int `json:"pay_percent"`
}

// Scenario says what a scan does at one kind of service point.
type Scenario struct {
	// ID is a stable slug such as "transit.bus"; it never changes.
	ID string `json:"id"`
	// Item is the service item number, 1..13; it never changes.
	Item   int    `json:"item"`
	NameZh string `json:"name_zh"`
	NameEn string `json:"name_en"`
	// Kind never changes once created.
	Kind Kind `json:"kind"`
	// DefaultAmountFen is the fixed amount (a fare) of a charge or payout.
	DefaultAmountFen int64 `json:"default_amount_fen"`
	// AmountFromTerminal: the terminal sends the amount (canteen, bill,
	// distance fare); exclusive with DefaultAmountFen.
	AmountFromTerminal bool `json:"amount_from_terminal"`
	// MaxAmountFen caps a terminal-sent amount (0 = only MaxAmountFen of the package).
	MaxAmountFen int64        `json:"max_amount_fen,omitempty"`
	Eligibility  Eligibility  `json:"eligibility"`
	Concessions  []Concession `json:"concessions"`
	// ViewFields are what the provider may see (see Fields).
	ViewFields []string `json:"view_fields"`
	// OfflineAllowed: a terminal may accept this scenario without the node.
	OfflineAllowed bool `json:"offline_allowed"`
	// CreditLimitFen: how far below zero the wallet may go for this charge
	// ("ride first, pay later"); 0 = no credit.
	CreditLimitFen int64 `json:"credit_limit_fen"`
	// LocalOnly: only holders whose home city is this city.
	LocalOnly bool `json:"local_only"`
	// RequirePIN with PINAboveFen: the holder's PIN is asked when the amount
	// is above PINAboveFen (0 = every payment).
	RequirePIN  bool  `json:"require_pin"`
	PINAboveFen int64 `json:"pin_above_fen"`
	Enabled     bool  `json:"enabled"`

	// Read-only, set by the store.
	Seeded    bool      `json:"seeded"`
	Version   int64     `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Clone returns a deep copy of s (the slices are not shared).
func (s Scenario) Clone() Scenario {
	s.Eligibility.Categories = slices.Clone(s.Eligibility.Categories)
	s.Eligibility.RequireAnyFlag = slices.Clone(s.Eligibility.RequireAnyFlag)
	s.ViewFields = slices.Clone(s.ViewFields)
	if s.Concessions != nil {
		cs := make([]Concession, len(s.Concessions))
		for i, c := range s.Concessions {
			c.AnyFlag = slices.Clone(c.AnyFlag)
			cs[i] = c
		}
		s.Concessions = cs
	}
	return s
}

// Moves reports whether scans in s move money (charge, medical, payout).
func (s Scenario) Moves() bool {
	return s.Kind == KindCharge || s.Kind == KindMedical || s.Kind == KindPayout
}
