package node_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// TestMoneyTopUpsCollectDebtOnce: two residents owe offline rides; many
// top-ups (each also retried at once under its key, as after a timeout)
// and finance's sweeps run together. Debt is collected exactly once:
// never more than a ride's debt, never more than the wallet held, and in
// the end (after one more sweep) everything owed that the top-ups could
// pay is paid; the wallets hold the rest; the credit account holds minus
// what is still owed; the books balance.
func TestMoneyTopUpsCollectDebtOnce(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		tn := nodetest.Start(t, nodetest.Options{DB: dsn, Demo: true, DemoResidents: 2})
		d := tn.Demo
		op := tn.Client(d.Staff["operator"].Token)
		fin := tn.Client(d.Staff["finance"].Token)
		var bus *moneyBus
		for _, trm := range d.Terminals {
			if trm.Scenario == "transit.bus" {
				bus = &moneyBus{trm.ID, trm.Token, trm.BatchKey}
			}
		}
		key, err := terminal.ParseBatchKey(bus.key)
		if err != nil {
			t.Fatal(err)
		}
		type debtor struct {
			id      string
			topups  int64
			wantOwe int64
		}
		var debtors []*debtor
		for i := range 2 {
			num := idnum.Generate(rand.New(rand.NewPCG(uint64(i+40), 3)), idnum.KindCitizen, "410105", time.Now().AddDate(-25, 0, -i), "F")
			res, card, err := tn.Node.Enrol(ctx, auth.Principal{Kind: auth.KindStaff, Subject: "test", Role: auth.RoleHRAdmin},
				resident.EnrolInput{Name: "并发欠款", IDNumber: num, Category: resident.CategoryLocal}, true, "246810")
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			var recs []terminal.Record
			for j := range 2 {
				recs = append(recs, terminal.Record{ID: fmt.Sprintf("cd-%d-%d", i, j), Seq: int64(10*i + j + 1), At: now.Add(time.Duration(j-3) * time.Minute), Scenario: "transit.bus", CardNumber: card.Number})
			}
			sb, err := terminal.SignBatch(terminal.Batch{Terminal: bus.id, ID: fmt.Sprintf("cd-%d", i), CreatedAt: now, Records: recs}, key)
			if err != nil {
				t.Fatal(err)
			}
			tn.Client(bus.token).JSON(t, "POST", "/v1/terminals/"+bus.id+"/batches", sb, 200, nil)
			debtors = append(debtors, &debtor{id: res.ID})
		}
		owedOf := func(id string) int64 {
			var v apiDebts
			fin.JSON(t, "GET", "/v1/residents/"+id+"/debts", nil, 200, &v)
			return v.OwedFen
		}
		var totalDebt int64
		for _, dd := range debtors {
			o := owedOf(dd.id)
			if o != 400 {
				t.Fatalf("%s owes %d after two rides on an empty wallet, want 400", dd.id, o)
			}
			totalDebt += o
		}

		// Resident 0 tops up less than owed (3 × 110), resident 1 more (4 × 150).
		amounts := [][]int64{{110, 110, 110}, {150, 150, 150, 150}}
		var wg sync.WaitGroup
		for i, dd := range debtors {
			for j, a := range amounts[i] {
				dd.topups += a
				for range 2 { // sent twice at once: the second is a retry
					wg.Add(1)
					go func() {
						defer wg.Done()
						body := map[string]any{"idempotency_key": fmt.Sprintf("ct-%d-%d", i, j), "resident_id": dd.id, "amount_fen": a}
						if r := op.Do(t, "POST", "/v1/topups", body); r.Status != 200 {
							t.Errorf("top-up: %d %s", r.Status, r.Body)
						}
					}()
				}
			}
		}
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if r := fin.Do(t, "POST", "/v1/debts/collect", nil); r.Status != 200 {
					t.Errorf("sweep: %d %s", r.Status, r.Body)
				}
			}()
		}
		wg.Wait()
		fin.JSON(t, "POST", "/v1/debts/collect", nil, 200, nil) // what contention left

		var stillOwed int64
		for _, dd := range debtors {
			want := max(400-dd.topups, 0)
			if o := owedOf(dd.id); o != want {
				t.Errorf("%s owes %d after top-ups of %d, want %d", dd.id, o, dd.topups, want)
			}
			stillOwed += want
			if w := moneyBal(t, tn, ledger.WalletID(dd.id)); w != max(dd.topups-400, 0) {
				t.Errorf("%s: wallet %d after top-ups of %d against 400 owed", dd.id, w, dd.topups)
			}
			// No ride's collections exceed its debt; their numbers run 1, 2, …
			rows, err := tn.DB.R.QueryContext(ctx, `SELECT s.debt_fen, COALESCE(SUM(c.amount_fen), 0), COUNT(c.seq), COALESCE(MAX(c.seq), 0)
				FROM scans s LEFT JOIN scan_debt_collections c ON c.terminal_id = s.terminal_id AND c.idem_key = s.idem_key
				WHERE s.resident_id = $1 AND s.debt_fen > 0 GROUP BY s.terminal_id, s.idem_key, s.debt_fen`, dd.id)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var debt, got, n, maxSeq int64
				rows.Scan(&debt, &got, &n, &maxSeq)
				if got > debt || n != maxSeq {
					t.Errorf("%s: a ride of debt %d collected %d in %d collections numbered up to %d", dd.id, debt, got, n, maxSeq)
				}
			}
			rows.Close()
		}
		if c := moneyBal(t, tn, scan.CreditAccount); c != -stillOwed {
			t.Errorf("%s holds %d, residents still owe %d", scan.CreditAccount, c, stillOwed)
		}
		var chk struct {
			SumFen    int64 `json:"sum_fen"`
			JournalOK bool  `json:"journal_ok"`
			Problems  []any `json:"problems"`
		}
		fin.JSON(t, "GET", "/v1/ledger/check", nil, 200, &chk)
		if chk.SumFen != 0 || !chk.JournalOK || len(chk.Problems) != 0 {
			t.Fatalf("check: %+v", chk)
		}
	})
}

type moneyBus struct{ id, token, key string }

func moneyBal(t *testing.T, tn *nodetest.Node, acct string) int64 {
	t.Helper()
	a, err := tn.Ledger.Balance(context.Background(), acct)
	if err != nil {
		t.Fatal(err)
	}
	return a.Balance
}
