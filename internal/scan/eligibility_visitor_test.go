package scan_test

import (
	"context"
	"testing"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// TestEligibilityVisitorAgeBandNotInvented: another city's resident's
// birth date stays at home, so this city does not know their age band. A
// hospital registering a visiting card must not be told "18-59" (the age
// remoteAge assumes for pricing when the card carries no claims): that
// may be a child or a 90-year-old. The home city and the rest of the
// view are still shown.
func TestEligibilityVisitorAgeBandNotInvented(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"medical.registration"})
		n := c.tn.Node
		ctx := context.Background()
		if _, err := n.Ledger.CreateAccount(ctx, ledger.Account{ID: ledger.ClearingID("CN-999999"), Kind: ledger.KindClearing, Floor: -1_000_000, Label: "peer"}); err != nil {
			t.Fatal(err)
		}
		svc, err := scan.New(ctx, scan.Deps{DB: n.DB, Vault: n.Vault, Catalog: n.Catalog, Residents: n.Residents, Ledger: n.Ledger,
			Terminals: terminal.New(n.DB, nil, nil, nil), Registry: scan.NewRegistry(), City: n.City, Remote: &cardRemote{}})
		if err != nil {
			t.Fatal(err)
		}
		defer svc.Close()
		term := bareTerminal(t, n.DB, "trm_hosp", c.provider)
		term.Scenarios = []string{"medical.registration"}

		r, err := svc.Scan(ctx, term, scan.Request{IdempotencyKey: "v1", Scenario: "medical.registration", CardNumber: foreignCard()})
		if err != nil || r.Decision != scan.Accepted {
			t.Fatalf("visitor at registration: %+v %v", r, err)
		}
		if band, ok := r.View["age_band"]; ok {
			t.Errorf("a visitor's age band was shown as %v, though their age is not known here", band)
		}
		if r.View["home_city"] != "CN-999999" {
			t.Errorf("home city: %+v", r.View)
		}
		// A resident of this city still gets theirs (born 30 years ago).
		local, err := svc.Scan(ctx, term, scan.Request{IdempotencyKey: "v2", Scenario: "medical.registration", CardNumber: c.people[0].card})
		if err != nil || local.Decision != scan.Accepted || local.View["age_band"] != "18-59" {
			t.Fatalf("local at registration: %+v %v", local, err)
		}
	})
}
