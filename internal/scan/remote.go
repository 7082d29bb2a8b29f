package scan

import (
	"context"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/terminal"
)

// Remote is the extension point through which the scan path accepts codes
// issued by other cities of the region (internal/federation implements
// it). Without one (Deps.Remote nil), such codes are declined
// unknown_issuer. The YK1 verifier learns the peers' keys through its
// KeySource; Remote does the rest.
type Remote interface {
	// Admit checks a verified foreign code before anything is decided: the
	// issuing city must be a trusted peer (unknown_issuer) and the card
	// token must not be on its deny list as of at (revoked).
	Admit(ctx context.Context, id Identity, at time.Time) error
	// Authorize asks the home city to charge its resident (or, if it cannot
	// be reached and req.OfflineAllowed, accepts under the card's risk
	// limit and queues the charge). Declines are a result with Approved
	// false and a Reason; errors are for this node's own failures.
	Authorize(ctx context.Context, homeCity string, req RemoteCharge) (RemoteResult, error)
}

// RemoteCharge is a charge on another city's resident.
type RemoteCharge struct {
	// CTI is the code's one-use nonce; the clearing message id derives
	// from it, so a retried scan asks the home city the same question.
	CTI       string
	Subject   string // the card token (the code's sub); never a name or ID number
	AmountFen int64
	Medical   bool // settle from the medical personal account first
	Scenario  string
	Terminal  string
	Provider  string
	PIN       string
	// OfflineAllowed: the scenario lets B accept without the home city.
	OfflineAllowed bool
	At             time.Time
}

// RemoteResult is the home city's answer (or the offline acceptance).
type RemoteResult struct {
	Approved bool
	Reason   apperr.Code
	// Queued: accepted without the home city's answer; the charge waits in
	// the outbox.
	Queued                bool
	MedicalFen, WalletFen int64
}

// remoteAge is the age assumed for another city's resident, whose birth
// date stays at home: the code's senior flags say 60+ or 65+; otherwise an
// adult. Scenarios with an upper age limit therefore treat other cities'
// residents without flags as adults.
func remoteAge(flags []string) int {
	age := 30
	for _, f := range flags {
		switch f {
		case ecode.FlagSenior65:
			return 65
		case ecode.FlagSenior60:
			age = 60
		}
	}
	return age
}

// foreign reports whether e is a verified code of another city that a
// Remote can handle.
func (s *Service) foreign(e eval) bool {
	return s.Remote != nil && e.id.Scheme == SchemeYK1 && e.id.Token != "" && e.id.Issuer != "" && e.id.Issuer != s.City &&
		apperr.CodeOf(e.err) == apperr.UnknownIssuer
}

// evaluateRemote is evaluate for another city's code: equal treatment
// (同城待遇) — this city's scenario rules and concessions applied to the
// category and flags the code claims — and the money asked of the home
// city. Nothing personal of the holder is known here: the resident in
// the eval carries only the claimed category.
func (s *Service) evaluateRemote(ctx context.Context, sc catalog.Scenario, t terminal.Terminal, id Identity, amount int64, pin string, at time.Time) (e eval) {
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
	if e.dec.PINRequired && pin == "" {
		e.err = apperr.New(apperr.PINRequired)
		return e
	}
	r, err := s.Remote.Authorize(ctx, id.Issuer, RemoteCharge{CTI: id.CTI, Subject: id.Token, AmountFen: e.dec.Amount,
		Medical: sc.Kind == catalog.KindMedical, Scenario: sc.ID, Terminal: t.ID, Provider: t.ProviderID, PIN: pin,
		OfflineAllowed: sc.OfflineAllowed, At: at})
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
	e.medical, e.wallet = r.MedicalFen, r.WalletFen
	// The home city owes us the fare: our clearing account for it pays the
	// provider.
	e.plan = []leg{{Debit: ledger.ClearingID(id.Issuer), Credit: ledger.ReceivableID(t.ProviderID), Amount: e.dec.Amount, Kind: "fed_charge"}}
	return e
}
