package node_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

type apiDebts struct {
	ResidentID string `json:"resident_id"`
	OwedFen    int64  `json:"owed_fen"`
	Debts      []struct {
		Scan         string `json:"scan"`
		DebtFen      int64  `json:"debt_fen"`
		CollectedFen int64  `json:"collected_fen"`
		OwedFen      int64  `json:"owed_fen"`
	} `json:"debts"`
}

// TestDebtsOverHTTP: offline rides on an empty wallet become debt that the
// resident and finance/operator staff see (not hr_admin, not another
// resident); a counter top-up collects it (a statement line, metrics);
// money that reached the wallet without its collection (the node stopped
// in between) is collected by the sweep when the node starts again.
func TestDebtsOverHTTP(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		tn := nodetest.Start(t, nodetest.Options{DB: dsn, Demo: true, DemoResidents: 5})
		d := tn.Demo
		fin := tn.Client(d.Staff["finance"].Token)
		op := tn.Client(d.Staff["operator"].Token)
		hr := tn.Client(d.Staff["hr_admin"].Token)
		var bus *struct{ id, token, key string }
		for _, trm := range d.Terminals {
			if trm.Scenario == "transit.bus" {
				bus = &struct{ id, token, key string }{trm.ID, trm.Token, trm.BatchKey}
			}
		}
		if bus == nil {
			t.Fatal("no bus terminal in the demo")
		}
		// A resident with an empty wallet rides twice offline (2 × 200 on credit).
		num := idnum.Generate(rand.New(rand.NewPCG(9, 9)), idnum.KindCitizen, "410105", time.Now().AddDate(-30, 0, -3), "M")
		res, card, err := tn.Node.Enrol(ctx, auth.Principal{Kind: auth.KindStaff, Subject: "test", Role: auth.RoleHRAdmin},
			resident.EnrolInput{Name: "李欠款", IDNumber: num, Category: resident.CategoryLocal}, true, "246810")
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := tn.Ledger.OpenResidentAccounts(ctx, res.ID); err != nil {
			t.Fatal(err)
		}
		key, err := terminal.ParseBatchKey(bus.key)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		recs := []terminal.Record{
			{ID: "debt-a", Seq: 1, At: now.Add(-2 * time.Minute), Scenario: "transit.bus", CardNumber: card.Number},
			{ID: "debt-b", Seq: 2, At: now.Add(-time.Minute), Scenario: "transit.bus", CardNumber: card.Number},
		}
		sb, err := terminal.SignBatch(terminal.Batch{Terminal: bus.id, ID: "debts-1", CreatedAt: now, Records: recs}, key)
		if err != nil {
			t.Fatal(err)
		}
		tn.Client(bus.token).JSON(t, "POST", "/v1/terminals/"+bus.id+"/batches", sb, 200, nil)

		var login struct{ Token string }
		tn.Client("").JSON(t, "POST", "/v1/auth/resident", map[string]any{"card_number": card.Number, "pin": "246810"}, 200, &login)
		me := tn.Client(login.Token)
		owedMe := func(c *nodetest.Client) int64 {
			var v struct {
				OwedFen int64 `json:"owed_fen"`
			}
			c.JSON(t, "GET", "/v1/me", nil, 200, &v)
			return v.OwedFen
		}
		if o := owedMe(me); o != 400 {
			t.Fatalf("me: owed %d, want 400", o)
		}
		path := "/v1/residents/" + res.ID + "/debts"
		var dv apiDebts
		me.JSON(t, "GET", path, nil, 200, &dv)
		if dv.OwedFen != 400 || len(dv.Debts) != 2 || dv.Debts[0].OwedFen != 200 {
			t.Fatalf("own debts: %+v", dv)
		}
		fin.JSON(t, "GET", path, nil, 200, &dv)
		op.JSON(t, "GET", path, nil, 200, &dv)
		if r := hr.Do(t, "GET", path, nil); r.Code() != "forbidden" {
			t.Fatalf("hr_admin: %d %s", r.Status, r.Body)
		}
		var other struct{ Token string }
		tn.Client("").JSON(t, "POST", "/v1/auth/resident", map[string]any{"card_number": d.Residents[0].CardNumber, "pin": d.Residents[0].PIN}, 200, &other)
		if r := tn.Client(other.Token).Do(t, "GET", path, nil); r.Code() != "forbidden" {
			t.Fatalf("another resident: %d %s", r.Status, r.Body)
		}
		if r := fin.Do(t, "GET", "/v1/residents/res_nobody/debts", nil); r.Status != 404 {
			t.Fatalf("unknown resident: %d %s", r.Status, r.Body)
		}

		// A counter top-up of 150 pays the older ride in part.
		top := map[string]any{"idempotency_key": "debt-top-1", "resident_id": res.ID, "amount_fen": 150}
		op.JSON(t, "POST", "/v1/topups", top, 200, nil)
		op.JSON(t, "POST", "/v1/topups", top, 200, nil) // retried: nothing more
		if o := owedMe(me); o != 250 {
			t.Fatalf("owed %d after 150, want 250", o)
		}
		var st struct {
			Entries []struct {
				Kind     string            `json:"kind"`
				DeltaFen int64             `json:"delta_fen"`
				Meta     map[string]string `json:"meta"`
			} `json:"entries"`
		}
		me.JSON(t, "GET", "/v1/accounts/"+ledger.WalletID(res.ID)+"/statement", nil, 200, &st)
		var lines []string
		for _, e := range st.Entries {
			lines = append(lines, fmt.Sprintf("%s:%d:%s", e.Kind, e.DeltaFen, e.Meta["kind"]))
		}
		if got := strings.Join(lines, " "); got != "topup:150: debt_collection:-150:debt_collection" {
			t.Fatalf("statement: %s", got)
		}
		metrics := string(tn.Client("").Do(t, "GET", "/metrics", nil).Body)
		var probes, probeQueries int
		for _, l := range strings.Split(metrics, "\n") {
			fmt.Sscanf(l, "yikatong_debt_probes_total %d", &probes)
			fmt.Sscanf(l, "yikatong_debt_probe_queries_total %d", &probeQueries)
		}
		if !strings.Contains(metrics, "yikatong_debt_collections_total 1\n") || !strings.Contains(metrics, "yikatong_debt_collected_fen_total 150\n") ||
			probeQueries < 1 || probes < probeQueries {
			t.Fatalf("metrics:\n%s", metrics)
		}

		// Money arrives and the node stops before collecting it.
		if _, err := tn.Ledger.TopUp(ctx, "bank-batch:"+res.ID, ledger.WalletID(res.ID), 1000, nil); err != nil {
			t.Fatal(err)
		}
		if o := owedMe(me); o != 250 {
			t.Fatalf("owed %d", o)
		}
		tn.Stop()
		tn = nodetest.Start(t, nodetest.Options{DB: dsn, Dir: tn.Dir})
		me = tn.Client(login.Token)
		deadline := time.Now().Add(10 * time.Second)
		for owedMe(me) != 0 {
			if time.Now().After(deadline) {
				t.Fatal("the start-up sweep did not collect the debt")
			}
			time.Sleep(20 * time.Millisecond)
		}
		var wa struct {
			BalanceFen int64 `json:"balance_fen"`
		}
		me.JSON(t, "GET", "/v1/accounts/"+ledger.WalletID(res.ID), nil, 200, &wa)
		if wa.BalanceFen != 750 {
			t.Fatalf("wallet %d, want 750", wa.BalanceFen)
		}
		var sweep struct {
			Collections int64 `json:"collections"`
		}
		tn.Client(d.Staff["finance"].Token).JSON(t, "POST", "/v1/debts/collect", nil, 200, &sweep)
		if sweep.Collections != 0 {
			t.Fatalf("a second sweep collected: %+v", sweep)
		}
		if r := tn.Client(d.Staff["operator"].Token).Do(t, "POST", "/v1/debts/collect", nil); r.Code() != "forbidden" {
			t.Fatalf("operator sweep: %s", r.Body)
		}
		var chk struct {
			SumFen    int64 `json:"sum_fen"`
			JournalOK bool  `json:"journal_ok"`
		}
		tn.Client(d.Staff["finance"].Token).JSON(t, "GET", "/v1/ledger/check", nil, 200, &chk)
		if chk.SumFen != 0 || !chk.JournalOK {
			t.Fatalf("check: %+v", chk)
		}
	})
}
