package scan_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// cardRemote is a home city "CN-999999" whose cards start with 9999: it
// records what it is asked and answers every card as a 60-64 local
// resident, charging the fare offered for those claims.
type cardRemote struct {
	mu    sync.Mutex
	asked []scan.RemoteCharge
}

func (*cardRemote) Admit(context.Context, scan.Identity, time.Time) error { return nil }
func (*cardRemote) CardIssuer(n string) (string, bool) {
	return "CN-999999", resident.CardRegion(n) == "9999"
}
func (r *cardRemote) Authorize(_ context.Context, _ string, req scan.RemoteCharge) (scan.RemoteResult, error) {
	r.mu.Lock()
	r.asked = append(r.asked, req)
	r.mu.Unlock()
	flags := []string{ecode.FlagSenior60}
	amount := req.AmountFen
	for _, f := range req.Fares {
		if f.Category == resident.CategoryLocal && slices.Equal(f.Flags, flags) {
			amount = f.AmountFen
		}
	}
	return scan.RemoteResult{Approved: true, Answered: true, WalletFen: amount, AmountFen: amount, Category: resident.CategoryLocal, Flags: flags}, nil
}

func foreignCard() string {
	body := "999999000000042"
	sum, double := 0, true
	for i := len(body) - 1; i >= 0; i-- {
		d := int(body[i] - '0')
		if double {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return body + string(rune('0'+(10-sum%10)%10))
}

// TestForeignCard: a card number this city does not know, whose prefix is
// a member's region code, is authorised by that member by number, with
// the fares for other claims; the answered claims price the scan. In an
// offline batch the record's key names the clearing message, and a
// re-sent record is not asked again.
func TestForeignCard(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		n := c.tn.Node
		ctx := context.Background()
		if _, err := n.Ledger.CreateAccount(ctx, ledger.Account{ID: ledger.ClearingID("CN-999999"), Kind: ledger.KindClearing, Floor: -1_000_000, Label: "peer"}); err != nil {
			t.Fatal(err)
		}
		remote := &cardRemote{}
		svc, err := scan.New(ctx, scan.Deps{DB: n.DB, Vault: n.Vault, Catalog: n.Catalog, Residents: n.Residents, Ledger: n.Ledger,
			Terminals: terminal.New(n.DB, nil, nil, nil), Registry: scan.NewRegistry(), City: n.City, Remote: remote})
		if err != nil {
			t.Fatal(err)
		}
		defer svc.Close()
		term := bareTerminal(t, n.DB, "trm_card", c.provider)
		card := foreignCard()
		r, err := svc.Scan(ctx, term, scan.Request{IdempotencyKey: "c1", Scenario: "transit.bus", CardNumber: card})
		if err != nil || r.Decision != scan.Accepted || r.ChargedFen == nil || *r.ChargedFen != 100 {
			t.Fatalf("foreign card: %+v %v", r, err)
		}
		q := remote.asked[0]
		if q.CardNumber != card || q.Subject != "" || q.AmountFen != 200 {
			t.Fatalf("asked %+v", q)
		}
		want := map[string]int64{"local|senior_60": 100, "local|senior_65": 0, "permanent_resident|senior_60": 100}
		got := map[string]int64{}
		for _, f := range q.Fares {
			k := f.Category + "|"
			for _, fl := range f.Flags {
				k += fl
			}
			got[k] = f.AmountFen
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("fares %v: %s = %d, want %d", q.Fares, k, got[k], v)
			}
		}
		if _, ok := got["local|"]; ok {
			t.Fatalf("the adult fare is the amount, not a fare: %v", q.Fares)
		}
		// An unknown number with no member's prefix stays unknown_holder.
		if r, _ := svc.Scan(ctx, term, scan.Request{IdempotencyKey: "c2", Scenario: "transit.bus", CardNumber: "4111111111111111"}); r.Reason != "unknown_holder" || len(remote.asked) != 1 {
			t.Fatalf("unknown card: %+v (asked %d)", r, len(remote.asked))
		}
		b := terminal.Batch{Terminal: term.ID, ID: "b1", CreatedAt: time.Now(), Records: []terminal.Record{
			{ID: "r1", Seq: 1, At: time.Now(), Scenario: "transit.bus", CardNumber: card},
		}}
		rep, err := svc.ApplyBatch(ctx, term, b)
		if err != nil || rep.Applied != 1 || rep.ChargedFen != 100 {
			t.Fatalf("batch: %+v %v", rep, err)
		}
		if q := remote.asked[1]; q.CTI != "card:trm_card:off:r1" || !q.Offline || q.CardNumber != card {
			t.Fatalf("batch record asked %+v", q)
		}
		if rep, err := svc.ApplyBatch(ctx, term, b); err != nil || rep.Duplicates != 1 || len(remote.asked) != 2 {
			t.Fatalf("re-sent: %+v %v (asked %d)", rep, err, len(remote.asked))
		}
		c.checkBooks(t, 200)
		bal, _ := n.Ledger.Balance(ctx, ledger.ClearingID("CN-999999"))
		if bal.Balance != -200 {
			t.Fatalf("clr:CN-999999 = %d, want -200", bal.Balance)
		}
	})
}

// bareTerminal stores a terminal of provider that scans transit.bus, for a
// scan.Service built without the node's handlers (no credentials).
func bareTerminal(t *testing.T, db *store.DB, id, provider string) terminal.Terminal {
	t.Helper()
	if _, err := db.W.ExecContext(context.Background(), `INSERT INTO terminals(id, provider_id, name, scenarios, public_key, disabled, created_at) VALUES ($1, $2, $3, $4, $5, 0, 0)`,
		id, provider, id, `["transit.bus"]`, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	return terminal.Terminal{ID: id, ProviderID: provider, Scenarios: []string{"transit.bus"}}
}
