package scan

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/terminal"
)

// Remote is the extension point through which the scan path accepts codes
// and physical cards issued by other cities of the region
// (internal/federation implements it). Without one (Deps.Remote nil), such
// codes are declined unknown_issuer and such cards unknown_holder. The YK1
// verifier learns the peers' keys through its KeySource; Remote does the
// rest. A Remote that also implements CardIssuers accepts other cities'
// physical cards.
type Remote interface {
	// Admit checks a verified foreign code or card before anything is
	// decided: the issuing city must be a trusted peer (unknown_issuer)
	// and the card token (a code's subject) or the card number (a
	// physical card, by its deny-list hash) must not be on its deny list
	// as of at (revoked).
	Admit(ctx context.Context, id Identity, at time.Time) error
	// Authorize asks the home city to charge its resident (or, if it cannot
	// be reached and req.OfflineAllowed, accepts under the card's risk
	// limit and queues the charge). Declines are a result with Approved
	// false and a Reason; errors are for this node's own failures.
	Authorize(ctx context.Context, homeCity string, req RemoteCharge) (RemoteResult, error)
}

// CardIssuers is implemented by a Remote that can tell which member city
// issued a physical card number this city does not know: new cards carry
// their issuing region's code as prefix (resident.CardRegion), as the chip
// of a real social security card carries its issuing region. ok is false
// for a number no member issues.
type CardIssuers interface {
	CardIssuer(number string) (city string, ok bool)
}

// RemoteCharge is a charge on another city's resident.
type RemoteCharge struct {
	// CTI is the code's one-use nonce; the clearing message id derives
	// from it, so a retried scan asks the home city the same question. A
	// physical card has no nonce: CTI is then "card:" + terminal + ":" +
	// the scan's idempotency key (an offline record's "off:<id>"), or
	// empty when the key is not known (the Remote then draws a fresh id).
	CTI     string
	Subject string // the card token (the code's sub); never a name or ID number
	// CardNumber is set instead of Subject for a physical card.
	CardNumber string
	AmountFen  int64
	Medical    bool // settle from the medical personal account first
	Scenario   string
	Terminal   string
	// Key is the scan's idempotency key at Terminal (an offline record's
	// "off:<id>"): the sender checks later that the scan it authorised
	// was booked (its row in the scans table exists), and voids the
	// home city's charge if it never was.
	Key      string
	Provider string
	PIN      string
	// OfflineAllowed: the scenario lets B accept without the home city.
	OfflineAllowed bool
	// At is when the scan was made.
	At time.Time
	// Offline: the scan was made by an offline terminal and uploaded in a
	// batch; the home city judges the card's status as of At (a card
	// reported lost after the scan is still charged, as for local cards).
	Offline bool
	// Fares are the lower prices this city's scenario gives to holders
	// with other claims than the ones AmountFen was priced for (a physical
	// card carries no claims: AmountFen is the adult price). The home city
	// charges the fare its resident's claims match and answers the claims.
	Fares []Fare
}

// Fare is the price of a scan for a holder with the given claims (category
// and concession flags, as an e-code would carry them).
type Fare struct {
	Category  string   `json:"category"`
	Flags     []string `json:"flags,omitempty"`
	AmountFen int64    `json:"amount_fen"`
}

// RemoteResult is the home city's answer (or the offline acceptance).
type RemoteResult struct {
	Approved bool
	Reason   apperr.Code
	// Queued: accepted without the home city's answer; the charge waits in
	// the outbox.
	Queued                bool
	MedicalFen, WalletFen int64
	// Answered: the home city answered, and AmountFen is what it charged
	// (for a physical card, one of the request's Fares may be lower than
	// the amount asked, down to 0). Category and Flags are the holder's
	// claims as the home city answered them for a physical card ("" when
	// it did not).
	Answered  bool
	AmountFen int64
	Category  string
	Flags     []string
}

// remoteAge is the age assumed for another city's resident, whose birth
// date stays at home: the code's age flags say 70+, 65+, 60+ or 6 and
// under; otherwise an adult. The flags follow the seeded concessions'
// limits (6, 60, 65, 70): a scenario with other limits treats other
// cities' residents by the nearest flag below (a limit of 14 sees a child
// of 6 and under, and an adult otherwise).
func remoteAge(flags []string) int {
	age := 30
	for _, f := range flags {
		switch f {
		case ecode.FlagSenior70:
			return 70
		case ecode.FlagSenior65:
			age = max(age, 65)
		case ecode.FlagSenior60:
			age = max(age, 60)
		case ecode.FlagChild6:
			if age == 30 {
				age = 6
			}
		}
	}
	return age
}

// cardIssuer is the member city that issued card number n ("" if none or
// no Remote resolves cards).
func (s *Service) cardIssuer(n string) string {
	ci, ok := s.Remote.(CardIssuers)
	if !ok {
		return ""
	}
	city, ok := ci.CardIssuer(n)
	if !ok || city == s.City {
		return ""
	}
	return city
}

// foreign reports whether e is a verified code, or a card number unknown
// here, of another city that a Remote can handle.
func (s *Service) foreign(e eval) bool {
	if s.Remote == nil {
		return false
	}
	switch code := apperr.CodeOf(e.err); {
	case e.id.Scheme == SchemeYK1:
		return e.id.Token != "" && e.id.Issuer != "" && e.id.Issuer != s.City && code == apperr.UnknownIssuer
	case e.id.Scheme == SchemeCard:
		return e.id.CardNumber != "" && code == apperr.UnknownHolder && s.cardIssuer(e.id.CardNumber) != ""
	}
	return false
}

// Claims assumed for another city's physical card until its home city
// answers: a card carries no claims, so the holder counts as an adult
// (no concession flags) resident of their home city.
const defaultRemoteCategory = resident.CategoryLocal

// remoteOpts are the offline batch's options for evaluateRemoteKey.
type remoteOpts struct {
	offline bool // an uploaded offline record (RemoteCharge.Offline)
}

// evaluateRemoteKey is evaluate for another city's code or card: equal
// treatment (同城待遇) — this city's scenario rules and concessions applied
// to the category and flags the code claims (a physical card: an adult,
// unless the home city answers other claims and charges one of the Fares
// offered) — and the money asked of the home city. Nothing personal of the
// holder is known here: the resident in the eval carries only the claimed
// category. key is the scan's idempotency key ("" if unknown), which
// names a physical card's clearing message.
func (s *Service) evaluateRemoteKey(ctx context.Context, sc catalog.Scenario, t terminal.Terminal, id Identity, key string, amount int64, pin string, at time.Time, o remoteOpts) (e eval) {
	card := id.Scheme == SchemeCard
	if card {
		id.Issuer, id.Category, id.Flags = s.cardIssuer(id.CardNumber), defaultRemoteCategory, nil
	}
	e.id = id
	e.res = resident.Resident{Category: id.Category}
	e.card = resident.Card{Status: resident.StatusActive}
	if e.err = s.Remote.Admit(ctx, id, at); e.err != nil {
		return e
	}
	e.age = remoteAge(id.Flags)
	e.dec = catalog.Decide(sc, catalog.Holder{Category: id.Category, Age: e.age, Flags: id.Flags, CardStatus: resident.StatusActive, Local: false}, amount)
	if !e.dec.Eligible {
		e.err = e.dec.Err()
		return e
	}
	if e.dec.Amount <= 0 || !sc.Moves() {
		return e
	}
	if sc.Kind == catalog.KindPayout {
		e.err = apperr.Newf(apperr.NotEligible, "pay-outs go to this city's own residents", "发放仅限本市居民")
		return e
	}
	if e.dec.PINRequired && pin == "" && !o.offline {
		e.err = apperr.New(apperr.PINRequired)
		return e
	}
	req := RemoteCharge{CTI: id.CTI, Subject: id.Token, AmountFen: e.dec.Amount,
		Medical: sc.Kind == catalog.KindMedical, Scenario: sc.ID, Terminal: t.ID, Key: key, Provider: t.ProviderID, PIN: pin,
		OfflineAllowed: sc.OfflineAllowed, At: at, Offline: o.offline}
	var fares map[string]catalog.Decision
	if card {
		req.Subject, req.CardNumber, req.CTI = "", id.CardNumber, ""
		if key != "" {
			req.CTI = "card:" + t.ID + ":" + key
		}
		req.Fares, fares = s.fares(sc, amount, e.dec.Amount)
	}
	r, err := s.Remote.Authorize(ctx, id.Issuer, req)
	if err != nil {
		e.err = err
		return e
	}
	if !r.Approved {
		if r.Reason == "" {
			r.Reason = apperr.HomeUnreachable
		}
		e.err = apperr.New(r.Reason)
		return e
	}
	if card && r.Category != "" {
		// The home city answered its resident's claims (and charged the
		// fare they match): the scan is priced and shown as for them.
		e.res.Category, e.id.Category, e.id.Flags, e.age = r.Category, r.Category, r.Flags, remoteAge(r.Flags)
		if d, ok := fares[fareKey(r.Category, r.Flags)]; ok && d.Amount == r.AmountFen {
			e.dec = d
		}
	}
	if r.Answered && r.AmountFen != e.dec.Amount {
		// Whatever the home city charged is what its clearing account for
		// us was credited with: book exactly that, so the two mirror.
		e.dec.Amount, e.dec.Concession = r.AmountFen, ""
	}
	e.medical, e.wallet = r.MedicalFen, r.WalletFen
	if e.dec.Amount <= 0 {
		return e // a free fare for the holder's claims: nothing moved at home
	}
	// The home city owes us the fare: our clearing account for it pays the
	// provider.
	e.plan = []leg{{Debit: ledger.ClearingID(id.Issuer), Credit: ledger.ReceivableID(t.ProviderID), Amount: e.dec.Amount, Kind: "fed_charge"}}
	return e
}

// remoteFlagSets are the concession claims an e-code can carry about age
// (node.AgeFlags gives one of them for every age), each sorted.
var remoteFlagSets = [][]string{nil, {ecode.FlagSenior60}, {ecode.FlagSenior65}, {ecode.FlagSenior65, ecode.FlagSenior70}, {ecode.FlagChild6}}

// AgeClaimSets returns the age claim sets another city offers fares for
// (a copy): a home city's answer for a physical card must be one of them.
func AgeClaimSets() [][]string {
	out := make([][]string, len(remoteFlagSets))
	for i, fl := range remoteFlagSets {
		out[i] = slices.Clone(fl)
	}
	return out
}

func fareKey(category string, flags []string) string {
	return category + "|" + strings.Join(flags, ",")
}

// fares prices the scenario for every claim set a home city could answer
// (category × age flags) and returns those cheaper than base, the price
// without claims, and every eligible decision by fareKey.
func (s *Service) fares(sc catalog.Scenario, amount, base int64) ([]Fare, map[string]catalog.Decision) {
	var out []Fare
	all := map[string]catalog.Decision{}
	for _, cat := range catalog.Categories {
		for _, fl := range remoteFlagSets {
			d := catalog.Decide(sc, catalog.Holder{Category: cat, Age: remoteAge(fl), Flags: fl, CardStatus: resident.StatusActive, Local: false}, amount)
			if !d.Eligible {
				continue
			}
			all[fareKey(cat, fl)] = d
			if d.Amount < base {
				out = append(out, Fare{Category: cat, Flags: fl, AmountFen: d.Amount})
			}
		}
	}
	return out, all
}
