package node_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

type apiTransfer struct {
	ID        string `json:"id"`
	AmountFen int64  `json:"amount_fen"`
	Replayed  bool   `json:"replayed"`
}

type apiAccount struct {
	BalanceFen int64 `json:"balance_fen"`
}

// TestLedgerAndSubsidiesOverHTTP: top-ups are idempotent, refunds are
// bounded reversals, statements page, and a subsidy list pays each line
// exactly once however often it is uploaded; the books balance throughout.
func TestLedgerAndSubsidiesOverHTTP(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 30})
	d := tn.Demo
	fin := tn.Client(d.Staff["finance"].Token)
	hr := tn.Client(d.Staff["hr_admin"].Token)
	op := tn.Client(d.Staff["operator"].Token)
	r0, r1, r2 := d.Residents[0], d.Residents[1], d.Residents[2]
	wallet := func(r node.DemoResident) int64 {
		var a apiAccount
		fin.JSON(t, "GET", "/v1/accounts/w:"+r.ResidentID, nil, 200, &a)
		return a.BalanceFen
	}
	if wallet(r0) != node.DemoWalletFen {
		t.Fatalf("demo wallet %d", wallet(r0))
	}

	// Top-ups: retries are safe, a changed retry is refused, bad amounts too.
	top := map[string]any{"idempotency_key": "t-1", "card_number": r0.CardNumber, "amount_fen": 5000}
	var t1, t2 apiTransfer
	op.JSON(t, "POST", "/v1/topups", top, 200, &t1)
	op.JSON(t, "POST", "/v1/topups", top, 200, &t2)
	if t1.ID != t2.ID || !t2.Replayed || t1.Replayed {
		t.Fatalf("retry: %+v then %+v", t1, t2)
	}
	top["amount_fen"] = 6000
	if r := op.Do(t, "POST", "/v1/topups", top); r.Code() != "idempotency_conflict" {
		t.Fatalf("changed retry: %d %s", r.Status, r.Body)
	}
	for _, bad := range []map[string]any{
		{"idempotency_key": "t-2", "card_number": r0.CardNumber, "amount_fen": 0},
		{"idempotency_key": "t-2", "card_number": r0.CardNumber, "amount_fen": -5},
	} {
		if r := op.Do(t, "POST", "/v1/topups", bad); r.Code() != "invalid_amount" {
			t.Fatalf("amount %v: %s", bad["amount_fen"], r.Body)
		}
	}
	if r := op.Do(t, "POST", "/v1/topups", map[string]any{"idempotency_key": "t-3", "card_number": "4111111111111111", "amount_fen": 1}); r.Status != 404 {
		t.Fatalf("unknown card: %s", r.Body)
	}
	if r := hr.Do(t, "POST", "/v1/topups", top); r.Code() != "forbidden" {
		t.Fatalf("hr top-up: %s", r.Body)
	}
	if got := wallet(r0); got != node.DemoWalletFen+5000 {
		t.Fatalf("after one top-up and retries: %d", got)
	}

	// A refund is a reversal, bounded by the original.
	var rev apiTransfer
	fin.JSON(t, "POST", "/v1/transfers/"+t1.ID+"/reversal", map[string]any{"idempotency_key": "r-1", "amount_fen": 3000, "reason": "duplicate top-up"}, 200, &rev)
	if r := fin.Do(t, "POST", "/v1/transfers/"+t1.ID+"/reversal", map[string]any{"idempotency_key": "r-2", "amount_fen": 2001, "reason": "again"}); r.Code() != "reversal_exceeds" {
		t.Fatalf("over-reversal: %s", r.Body)
	}
	if got := wallet(r0); got != node.DemoWalletFen+2000 {
		t.Fatalf("after reversal: %d", got)
	}

	// The resident pages through their own statement.
	var lt struct{ Token string }
	tn.Client("").JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": r0.CardNumber, "pin": r0.PIN}, 200, &lt)
	res := tn.Client(lt.Token)
	var seen []string
	cursor := ""
	for page := 0; page < 10; page++ {
		var st struct {
			Entries []struct {
				ID       string `json:"id"`
				DeltaFen int64  `json:"delta_fen"`
			} `json:"entries"`
			Next string `json:"next"`
		}
		res.JSON(t, "GET", "/v1/accounts/w:"+r0.ResidentID+"/statement?limit=1&cursor="+cursor, nil, 200, &st)
		for _, e := range st.Entries {
			seen = append(seen, fmt.Sprintf("%s:%d", e.ID, e.DeltaFen))
		}
		if st.Next == "" {
			break
		}
		cursor = st.Next
	}
	if len(seen) != 3 || !strings.HasSuffix(seen[1], ":5000") || !strings.HasSuffix(seen[2], ":-3000") {
		t.Fatalf("statement pages: %v", seen)
	}
	if r := res.Do(t, "GET", "/v1/accounts/w:"+r1.ResidentID+"/statement", nil); r.Code() != "forbidden" {
		t.Fatalf("another resident's statement: %s", r.Body)
	}

	// Subsidies: finance funds, hr uploads, each line paid once.
	fin.JSON(t, "POST", "/v1/subsidies", map[string]string{"id": "farm-2026", "label": "2026 惠农补贴"}, 201, nil)
	fin.JSON(t, "POST", "/v1/subsidies/farm-2026/funding", map[string]any{"idempotency_key": "f-1", "amount_fen": 30000}, 200, nil)
	if r := hr.Do(t, "POST", "/v1/subsidies/farm-2026/funding", map[string]any{"idempotency_key": "f-2", "amount_fen": 1}); r.Code() != "forbidden" {
		t.Fatalf("hr funding: %s", r.Body)
	}
	list := strings.Join([]string{
		"id_or_card,amount_fen,reference",
		r1.IDNumber + ",10000,A-1",
		r2.CardNumber + ",15000,A-2",
		"11010519491231002X,100,A-3", // not enrolled here
		r1.CardNumber + ",abc,A-4",   // bad amount
		r2.CardNumber + ",9000,A-5",  // exceeds what is left
		r1.IDNumber + ",10000,A-1",   // same line twice in one list
		`x"y,100,A-6`,                // broken CSV quoting: only this line is refused
	}, "\n")
	type report struct {
		Paid        int   `json:"paid"`
		AlreadyPaid int   `json:"already_paid"`
		Refused     int   `json:"refused"`
		PaidFen     int64 `json:"paid_fen"`
		Lines       []struct {
			Reference, Status, Reason, Person string
		}
	}
	var rep1, rep2 report
	hr.JSON(t, "POST", "/v1/subsidies/farm-2026/payouts", list, 200, &rep1)
	hr.JSON(t, "POST", "/v1/subsidies/farm-2026/payouts", list, 200, &rep2)
	if rep1.Paid != 2 || rep1.PaidFen != 25000 || rep2.Paid != 0 || rep2.AlreadyPaid < 2 {
		t.Fatalf("payout reports: first %+v second %+v", rep1, rep2)
	}
	reasons := map[string]string{}
	for _, l := range rep1.Lines {
		reasons[l.Reference] = l.Reason
		if strings.Contains(l.Person, r1.IDNumber) || strings.Contains(l.Person, r2.CardNumber) {
			t.Fatalf("report shows an unmasked identifier: %+v", l)
		}
	}
	if reasons["A-3"] != "unknown_person" || reasons["A-4"] != "bad_amount" || reasons["A-5"] != "programme_exhausted" || rep1.Refused != 4 {
		t.Fatalf("refusal reasons: %v", reasons)
	}
	if wallet(r1) != node.DemoWalletFen+10000 || wallet(r2) != node.DemoWalletFen+15000 {
		t.Fatalf("wallets after two uploads: %d %d", wallet(r1), wallet(r2))
	}
	var prog apiAccount
	hr.JSON(t, "GET", "/v1/subsidies/farm-2026", nil, 200, &prog)
	if prog.BalanceFen != 5000 {
		t.Fatalf("programme left %d", prog.BalanceFen)
	}
	// A list drawn up before a card was replaced (补换) still pays the
	// person by the old card number; a person whose only card is cancelled
	// is refused, by card number and by ID number alike.
	hr.JSON(t, "POST", "/v1/cards/"+r1.CardNumber+"/replace", nil, 200, nil)
	hr.JSON(t, "POST", "/v1/cards/"+r2.CardNumber+"/cancel", nil, 200, nil)
	var rep3 report
	hr.JSON(t, "POST", "/v1/subsidies/farm-2026/payouts", strings.Join([]string{
		r1.CardNumber + ",1000,B-1",
		r2.CardNumber + ",1000,B-2",
		r2.IDNumber + ",1000,B-3",
	}, "\n"), 200, &rep3)
	if rep3.Paid != 1 || rep3.Lines[0].Status != "paid" || rep3.Lines[1].Reason != "cancelled_card" || rep3.Lines[2].Reason != "cancelled_card" {
		t.Fatalf("payouts after a replacement and a cancellation: %+v", rep3)
	}
	if wallet(r1) != node.DemoWalletFen+11000 {
		t.Fatalf("wallet after a payout by the replaced card: %d", wallet(r1))
	}
	var chk struct {
		SumFen    int64 `json:"sum_fen"`
		JournalOK bool  `json:"journal_ok"`
	}
	fin.JSON(t, "GET", "/v1/ledger/check", nil, 200, &chk)
	if chk.SumFen != 0 || !chk.JournalOK {
		t.Fatalf("ledger check %+v", chk)
	}
}
