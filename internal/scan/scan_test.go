package scan_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/catalog"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

type person struct {
	id, card, idNumber, pin string
}

type city struct {
	tn       *nodetest.Node
	op       *nodetest.Client
	provider string
	term     string
	tc       *nodetest.Client
	batchKey string
	people   []person
}

var sys = auth.Principal{Kind: auth.KindStaff, Subject: "test", Role: auth.RoleHRAdmin}

// enrol enrols a resident born on birth and funds the wallet and medical account.
func enrol(t testing.TB, n *node.Node, rng *rand.Rand, category string, birth time.Time, walletFen, medicalFen int64) person {
	t.Helper()
	ctx := context.Background()
	kind, region := idnum.KindCitizen, "410105"
	if category == resident.CategoryPermanentResident {
		kind, region = "permanent_resident", "41"
	}
	num := idnum.Generate(rng, kind, region, birth, "F")
	if num == "" {
		t.Fatalf("no id number for %s", kind)
	}
	res, card, err := n.Enrol(ctx, sys, resident.EnrolInput{Name: "张小" + fmt.Sprint(rng.IntN(1000)), IDNumber: num, Category: category}, true, "135790")
	if err != nil {
		t.Fatal(err)
	}
	w, m, err := n.Ledger.OpenResidentAccounts(ctx, res.ID)
	if err != nil {
		t.Fatal(err)
	}
	if walletFen > 0 {
		if _, err := n.Ledger.TopUp(ctx, "top:"+res.ID, w, walletFen, nil); err != nil {
			t.Fatal(err)
		}
	}
	if medicalFen > 0 {
		if _, err := n.Ledger.Transfer(ctx, ledger.TransferRequest{Key: "med:" + res.ID, Debit: ledger.AccountMedicalFund, Credit: m, Amount: medicalFen, Kind: "medical"}); err != nil {
			t.Fatal(err)
		}
	}
	return person{id: res.ID, card: card.Number, idNumber: num, pin: "135790"}
}

func operator(t testing.TB, tn *nodetest.Node) *nodetest.Client {
	t.Helper()
	ctx := context.Background()
	tn.Auth.PasswordIterations = 1000
	if _, err := tn.Auth.CreateStaff(ctx, "op", "Operator", auth.RoleOperator, "operator-pass", ""); err != nil {
		t.Fatal(err)
	}
	tok, _, err := tn.Auth.LoginStaff(ctx, "op", "operator-pass", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return tn.Client(tok)
}

func setup(t testing.TB, dsn string, scenarios []string) *city {
	t.Helper()
	c := newCity(t, nodetest.Options{DB: dsn}, scenarios)
	tn := c.tn
	rng := rand.New(rand.NewPCG(1, 2))
	now := time.Now()
	c.people = []person{
		enrol(t, tn.Node, rng, resident.CategoryLocal, now.AddDate(-30, 0, -3), 10_000, 5_000),
		enrol(t, tn.Node, rng, resident.CategoryLocal, now.AddDate(-70, 0, -3), 10_000, 0),
		enrol(t, tn.Node, rng, resident.CategoryPermanentResident, now.AddDate(-40, 0, -3), 300, 0),
	}
	return c
}

// newCity starts a node with o and a provider serving scenarios with one
// terminal, and no residents.
func newCity(t testing.TB, o nodetest.Options, scenarios []string) *city {
	t.Helper()
	tn := nodetest.Start(t, o)
	c := &city{tn: tn, op: operator(t, tn)}
	var p terminal.Provider
	c.op.JSON(t, "POST", "/v1/providers", map[string]any{"name": "郑州公交", "kind": "transit", "scenarios": scenarios}, 201, &p)
	c.provider = p.ID
	c.onboard(t, "gate 1")
	return c
}

// onboard onboards a terminal of c's provider (its scenarios) named name
// and makes it c's terminal.
func (c *city) onboard(t testing.TB, name string) {
	t.Helper()
	var tc struct {
		Terminal    terminal.Terminal    `json:"terminal"`
		Credentials terminal.Credentials `json:"credentials"`
	}
	c.op.JSON(t, "POST", "/v1/providers/"+c.provider+"/terminals", map[string]any{"name": name}, 201, &tc)
	c.term, c.batchKey = tc.Terminal.ID, tc.Credentials.BatchKey
	c.tc = c.tn.Client(tc.Credentials.Token)
}

// gates onboards n more terminals of c's provider and returns c as seen
// from each: upload and signBatch through gates[i] go through its
// terminal. A terminal's uploads run one at a time (scan.ApplyBatch), so
// tests that race uploads give each its own terminal.
func (c *city) gates(t testing.TB, n int) []*city {
	t.Helper()
	out := make([]*city, n)
	for i := range out {
		g := *c
		g.onboard(t, fmt.Sprintf("gate %d", i+2))
		out[i] = &g
	}
	return out
}

func code(t testing.TB, n *node.Node, card string) string {
	t.Helper()
	c, _, err := n.IssueCode(context.Background(), card)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type answer struct {
	Decision   string         `json:"decision"`
	Reason     string         `json:"reason"`
	ChargedFen *int64         `json:"charged_fen"`
	View       map[string]any `json:"view"`
}

func (c *city) scan(t testing.TB, body map[string]any) (answer, nodetest.Response) {
	t.Helper()
	r := c.tc.Do(t, "POST", "/v1/scans", body)
	var a answer
	if r.Status == 200 {
		r.Decode(t, &a)
	}
	return a, r
}

// checkBooks asserts the ledger balances and the provider's account equals
// the sum of accepted charges minus payouts.
func (c *city) checkBooks(t testing.TB, wantProvider int64) {
	t.Helper()
	ctx := context.Background()
	chk, err := c.tn.Ledger.Check(ctx)
	if err != nil || !chk.OK() {
		t.Fatalf("ledger check: %+v %v", chk, err)
	}
	a, err := c.tn.Ledger.Balance(ctx, ledger.ReceivableID(c.provider))
	if err != nil {
		t.Fatal(err)
	}
	if a.Balance != wantProvider {
		t.Fatalf("provider balance %d, want %d (sum of accepted charges)", a.Balance, wantProvider)
	}
}

func TestOnlineScans(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus", "library.loan", "medical.outpatient"})
		adult, senior, foreigner := c.people[0], c.people[1], c.people[2]
		n := c.tn.Node
		var charged int64

		// A YK1 code at the bus: accepted, 2 yuan.
		yk := code(t, n, adult.card)
		body := map[string]any{"idempotency_key": "k1", "scenario": "transit.bus", "code": yk}
		a, r1 := c.scan(t, body)
		if a.Decision != "accepted" || a.ChargedFen == nil || *a.ChargedFen != 200 {
			t.Fatalf("bus scan: %s", r1.Body)
		}
		charged += 200
		// Same key, same body: the same answer, no second charge.
		if _, r2 := c.scan(t, body); string(r2.Body) != string(r1.Body) {
			t.Fatalf("retry answered differently:\n%s\n%s", r1.Body, r2.Body)
		}
		// Same key, other body: idempotency_conflict.
		if _, r := c.scan(t, map[string]any{"idempotency_key": "k1", "scenario": "transit.bus", "card_number": adult.card}); r.Status != 409 || r.Code() != "idempotency_conflict" {
			t.Fatalf("conflict: %d %s", r.Status, r.Body)
		}
		// Same code, new key: replayed.
		if a, r := c.scan(t, map[string]any{"idempotency_key": "k2", "scenario": "transit.bus", "code": yk}); a.Decision != "declined" || a.Reason != "replayed" {
			t.Fatalf("replay: %s", r.Body)
		}
		// Senior rides free (concession), by card number.
		if a, r := c.scan(t, map[string]any{"idempotency_key": "k3", "scenario": "transit.bus", "card_number": senior.card}); a.Decision != "accepted" || *a.ChargedFen != 0 || a.View["concession"] != "senior_65_free" {
			t.Fatalf("senior: %s", r.Body)
		}
		// Library: identify only; the view holds a masked name.
		if a, r := c.scan(t, map[string]any{"idempotency_key": "k4", "scenario": "library.loan", "code": code(t, n, foreigner.card)}); a.Decision != "accepted" || a.ChargedFen != nil || !strings.Contains(fmt.Sprint(a.View["masked_name"]), "*") {
			t.Fatalf("library: %s", r.Body)
		}
		// Medical: the medical account (50 yuan) pays first, the wallet the rest.
		a, r := c.scan(t, map[string]any{"idempotency_key": "k5", "scenario": "medical.outpatient", "card_number": adult.card, "amount_fen": 8_000})
		if a.Decision != "accepted" || a.View["medical_paid_fen"] != float64(5_000) || a.View["wallet_paid_fen"] != float64(3_000) {
			t.Fatalf("medical: %s", r.Body)
		}
		charged += 8_000
		// Insufficient funds: declined, nothing moves.
		if a, r := c.scan(t, map[string]any{"idempotency_key": "k6", "scenario": "medical.outpatient", "card_number": foreigner.card, "amount_fen": 1_000}); a.Decision != "declined" || a.Reason != "insufficient_funds" {
			t.Fatalf("poor: %s", r.Body)
		}
		// Unknown scheme, malformed code, bad card number.
		for body, want := range map[string]string{"ZZ9:abc": "unsupported_scheme", "YK1:@@@": "malformed", "hello": "malformed", "1234567812345678": "malformed"} {
			a, r := c.scan(t, map[string]any{"idempotency_key": "bad-" + body, "scenario": "transit.bus", "code": body})
			if want == "malformed" && body == "1234567812345678" {
				a, r = c.scan(t, map[string]any{"idempotency_key": "bad-card", "scenario": "transit.bus", "card_number": body})
			}
			if a.Decision != "declined" || a.Reason != want {
				t.Errorf("code %q: %s, want %s", body, r.Body, want)
			}
		}
		// The caller's own errors are problems.
		if _, r := c.scan(t, map[string]any{"idempotency_key": "k7", "scenario": "hr.talent_service", "card_number": adult.card}); r.Status != 403 || r.Code() != "forbidden" {
			t.Errorf("foreign scenario: %d %s", r.Status, r.Body)
		}
		if _, r := c.scan(t, map[string]any{"scenario": "transit.bus", "card_number": adult.card}); r.Status != 422 {
			t.Errorf("no key: %d %s", r.Status, r.Body)
		}
		if r := c.tn.Client("yk_nope").Do(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "x", "scenario": "transit.bus", "card_number": adult.card}); r.Status != 401 {
			t.Errorf("unknown terminal token: %d", r.Status)
		}
		if r := c.op.Do(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "x", "scenario": "transit.bus", "card_number": adult.card}); r.Status != 403 {
			t.Errorf("operator scanning: %d", r.Status)
		}
		// A lost card: its codes are revoked, the card itself not active.
		ykLost := code(t, n, senior.card)
		if _, err := n.Residents.ReportLost(context.Background(), senior.card, "test"); err != nil {
			t.Fatal(err)
		}
		if a, r := c.scan(t, map[string]any{"idempotency_key": "k8", "scenario": "transit.bus", "code": ykLost}); a.Decision != "declined" || a.Reason != "revoked" {
			t.Errorf("lost card's code: %s", r.Body)
		}
		if a, r := c.scan(t, map[string]any{"idempotency_key": "k9", "scenario": "transit.bus", "card_number": senior.card}); a.Decision != "declined" || a.Reason != "card_not_active" {
			t.Errorf("lost card: %s", r.Body)
		}
		// Another city's code: unknown issuer.
		other, _ := ecode.GenerateSM2()
		foreign, _ := ecode.Issue(other, ecode.Claims{Issuer: "CN-330100", Subject: "tok", Category: "local"})
		if a, r := c.scan(t, map[string]any{"idempotency_key": "k10", "scenario": "transit.bus", "code": foreign}); a.Decision != "declined" || a.Reason != "unknown_issuer" {
			t.Errorf("foreign code: %s", r.Body)
		}

		// Concurrent retries of one key charge once.
		yk2 := code(t, n, adult.card)
		var wg sync.WaitGroup
		bodies := make([]string, 16)
		for i := range bodies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, r := c.scan(t, map[string]any{"idempotency_key": "race", "scenario": "transit.bus", "code": yk2})
				bodies[i] = string(r.Body)
			}()
		}
		wg.Wait()
		for _, b := range bodies[1:] {
			if b != bodies[0] {
				t.Fatalf("concurrent retries answered differently: %s vs %s", b, bodies[0])
			}
		}
		charged += 200
		c.checkBooks(t, charged)

		// Disabling the terminal takes effect at once.
		c.op.JSON(t, "POST", "/v1/terminals/"+c.term+"/disable", nil, 200, nil)
		if _, r := c.scan(t, map[string]any{"idempotency_key": "k11", "scenario": "transit.bus", "card_number": adult.card}); r.Status != 401 {
			t.Fatalf("disabled terminal: %d %s", r.Status, r.Body)
		}
		c.checkBooks(t, charged)
	})
}

func TestTC1Scheme(t *testing.T) {
	c := setup(t, storetest.SQLite(t), []string{"transit.bus"})
	adult := c.people[0]
	issuer, _ := ecode.GenerateEd25519()
	c.op.JSON(t, "POST", "/v1/code-issuers", map[string]any{"issuer": "zzmetro", "key": issuer.Public().JWK()}, 204, nil)
	// Bindings nothing could use are refused: an unregistered issuer, a
	// card that does not exist.
	if r := c.op.Do(t, "POST", "/v1/code-bindings", map[string]any{"issuer": "nope", "account": "acct-1", "card_number": adult.card}); r.Code() != "unknown_issuer" {
		t.Fatalf("unknown issuer: %d %s", r.Status, r.Body)
	}
	if r := c.op.Do(t, "POST", "/v1/code-bindings", map[string]any{"issuer": "zzmetro", "account": "acct-1", "card_number": "4101999999999991"}); r.Status != 404 {
		t.Fatalf("unknown card: %d %s", r.Status, r.Body)
	}
	c.op.JSON(t, "POST", "/v1/code-bindings", map[string]any{"issuer": "zzmetro", "account": "acct-1", "card_number": adult.card}, 204, nil)
	tc, err := scan.IssueTC1(issuer, "zzmetro", "acct-1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if a, r := c.scan(t, map[string]any{"idempotency_key": "t1", "scenario": "transit.bus", "code": tc}); a.Decision != "accepted" || *a.ChargedFen != 200 {
		t.Fatalf("TC1: %s", r.Body)
	}
	if a, r := c.scan(t, map[string]any{"idempotency_key": "t2", "scenario": "transit.bus", "code": tc}); a.Reason != "replayed" {
		t.Fatalf("TC1 replay: %s", r.Body)
	}
	unbound, _ := scan.IssueTC1(issuer, "zzmetro", "acct-2", time.Now())
	if a, r := c.scan(t, map[string]any{"idempotency_key": "t3", "scenario": "transit.bus", "code": unbound}); a.Reason != "unknown_holder" {
		t.Fatalf("unbound: %s", r.Body)
	}
	forged := tc[:len(tc)-4] + "AAAA"
	if a, r := c.scan(t, map[string]any{"idempotency_key": "t4", "scenario": "transit.bus", "code": forged}); a.Reason != "bad_signature" && a.Reason != "malformed" {
		t.Fatalf("forged: %s", r.Body)
	}
	other, _ := ecode.GenerateEd25519()
	stranger, _ := scan.IssueTC1(other, "othermetro", "acct-1", time.Now())
	if a, r := c.scan(t, map[string]any{"idempotency_key": "t5", "scenario": "transit.bus", "code": stranger}); a.Reason != "unknown_issuer" {
		t.Fatalf("unregistered issuer: %s", r.Body)
	}
	c.checkBooks(t, 200)
}

var fullID = regexp.MustCompile(`[0-9]{17}[0-9X]`)

// TestNoFullIDNumberInAnyAnswer scans every seeded scenario with every
// kind of resident and checks no answer carries a full ID number.
func TestNoFullIDNumberInAnyAnswer(t *testing.T) {
	var ids []string
	for _, s := range catalog.SeedScenarios() {
		ids = append(ids, s.ID)
	}
	c := setup(t, storetest.SQLite(t), ids)
	for i, s := range catalog.SeedScenarios() {
		for j, p := range c.people {
			body := map[string]any{"idempotency_key": fmt.Sprintf("n%d-%d", i, j), "scenario": s.ID, "card_number": p.card, "pin": p.pin}
			if s.AmountFromTerminal {
				body["amount_fen"] = 100
			}
			_, r := c.scan(t, body)
			if r.Status != 200 {
				t.Errorf("%s: %d %s", s.ID, r.Status, r.Body)
			}
			if strings.Contains(string(r.Body), p.idNumber) || fullID.Match(r.Body) {
				t.Fatalf("%s answer carries a full ID number: %s", s.ID, r.Body)
			}
		}
	}
}

func signBatch(t testing.TB, c *city, id string, recs []terminal.Record) terminal.SignedBatch {
	t.Helper()
	key, err := terminal.ParseBatchKey(c.batchKey)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := terminal.SignBatch(terminal.Batch{Terminal: c.term, ID: id, CreatedAt: time.Now(), Records: recs}, key)
	if err != nil {
		t.Fatal(err)
	}
	return sb
}

func TestOfflineBatches(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus", "medical.outpatient"})
		adult, senior, poor := c.people[0], c.people[1], c.people[2]
		n := c.tn.Node
		now := time.Now()
		lostAt := time.Now()
		// senior's card is lost now; a scan 10 minutes ago still counts, one after does not.
		time.Sleep(1100 * time.Millisecond)
		if _, err := n.Residents.ReportLost(context.Background(), senior.card, "test"); err != nil {
			t.Fatal(err)
		}
		recs := []terminal.Record{
			{ID: "r1", Seq: 1, At: now.Add(-10 * time.Minute), Scenario: "transit.bus", CardNumber: adult.card},
			{ID: "r2", Seq: 2, At: now.Add(-9 * time.Minute), Scenario: "transit.bus", CardNumber: adult.card},
			{ID: "r3", Seq: 3, At: now.Add(-8 * time.Minute), Scenario: "transit.bus", CardNumber: senior.card},   // lost later: applied (free ride)
			{ID: "r4", Seq: 4, At: lostAt.Add(2 * time.Second), Scenario: "transit.bus", CardNumber: senior.card}, // after the loss: revoked
			{ID: "r5", Seq: 5, At: lostAt.Add(3 * time.Second), Scenario: "transit.bus", CardNumber: poor.card},   // 300 fen → 100 left
			{ID: "r6", Seq: 6, At: lostAt.Add(4 * time.Second), Scenario: "transit.bus", CardNumber: poor.card},   // 100 + 100 debt
			{ID: "r7", Seq: 7, At: lostAt.Add(5 * time.Second), Scenario: "transit.bus", CardNumber: poor.card},   // 200 debt: total 300 ≤ 500
			{ID: "r8", Seq: 8, At: lostAt.Add(6 * time.Second), Scenario: "transit.bus", CardNumber: poor.card},   // 500 debt > 500? 300+200 = 500 ok
			{ID: "r9", Seq: 9, At: lostAt.Add(7 * time.Second), Scenario: "transit.bus", CardNumber: poor.card},   // over the limit: declined
			{ID: "r2", Seq: 10, At: now, Scenario: "transit.bus", CardNumber: adult.card},                         // duplicate id
			{ID: "r11", Seq: 5, At: now, Scenario: "transit.bus", CardNumber: adult.card},                         // out of order
			{ID: "r12", Seq: 12, At: now.Add(time.Hour), Scenario: "transit.bus", CardNumber: adult.card},         // clock skew
			{ID: "r14", Seq: 14, At: time.Now(), Scenario: "transit.bus", Code: code(t, n, adult.card)},
			{ID: "r13", Seq: 13, At: now, Scenario: "medical.outpatient", CardNumber: adult.card, AmountFen: 100}, // not offline
		}
		var rep scan.BatchReport
		c.tc.JSON(t, "POST", "/v1/terminals/"+c.term+"/batches", signBatch(t, c, "b1", recs), 200, &rep)
		want := map[string]string{"r1": "applied", "r3": "applied", "r4": "declined", "r5": "applied", "r6": "applied", "r7": "applied",
			"r8": "applied", "r9": "declined", "r11": "rejected", "r12": "rejected", "r13": "rejected"}
		for i, it := range rep.Items {
			if i == 1 && it.Status != "applied" || i == 9 && it.Status != "duplicate" {
				t.Errorf("item %d %s: %+v", i, it.ID, it)
			}
			if w, ok := want[it.ID]; ok && i != 1 && i != 9 && it.Status != w {
				t.Errorf("record %s: %+v, want %s", it.ID, it, w)
			}
		}
		if rep.Items[3].Reason != "revoked" || rep.Items[10].Reason != "out_of_order" || rep.Items[11].Reason != "clock_skew" {
			t.Errorf("reasons: %+v", rep.Items)
		}
		if rep.DebtFen != 500 || rep.Items[5].DebtFen != 100 || rep.Items[8].Reason != "insufficient_funds" {
			t.Errorf("debt: total %d items %+v", rep.DebtFen, rep.Items[4:9])
		}
		charged := rep.ChargedFen
		if charged != 200*2+0+200*4+200 {
			t.Errorf("charged %d", charged)
		}
		c.checkBooks(t, charged)
		// An offline record's row keeps no answer: nobody is shown it, so
		// no provider's view of the holder (a name) is stored at rest.
		var rows, withAnswer int
		if err := n.DB.R.QueryRow(`SELECT COUNT(*), COUNT(answer) FROM scans WHERE terminal_id = $1 AND offline = 1`, c.term).Scan(&rows, &withAnswer); err != nil {
			t.Fatal(err)
		}
		if rows < 9 || withAnswer != 0 {
			t.Errorf("%d offline rows, %d with a stored answer; want ≥ 9 and 0", rows, withAnswer)
		}
		// Nor a plan, but with a debt: the collector credits what it credited.
		var debtRows, debtPlans, plans int
		if err := n.DB.R.QueryRow(`SELECT COUNT(CASE WHEN debt_fen > 0 THEN 1 END), COUNT(CASE WHEN debt_fen > 0 AND plan LIKE '%prv:%' THEN 1 END),
			COUNT(CASE WHEN plan <> '' THEN 1 END) FROM scans WHERE terminal_id = $1 AND offline = 1`, c.term).Scan(&debtRows, &debtPlans, &plans); err != nil {
			t.Fatal(err)
		}
		if debtRows != 3 || debtPlans != 3 || plans != 3 {
			t.Errorf("%d rows with a debt, %d of them with their plan, %d plans in all; want 3, 3, 3", debtRows, debtPlans, plans)
		}
		// Re-sending the batch (any number of times) changes nothing.
		for i := 0; i < 2; i++ {
			var again scan.BatchReport
			c.tc.JSON(t, "POST", "/v1/terminals/"+c.term+"/batches", signBatch(t, c, "b1", recs), 200, &again)
			if again.Applied != 0 || again.Duplicates < 9 {
				t.Errorf("re-send applied again: %+v", again)
			}
			c.checkBooks(t, charged)
		}
		// A tampered batch is refused whole.
		sb := signBatch(t, c, "b2", recs[:2])
		raw, _ := json.Marshal(sb)
		tampered := strings.Replace(string(raw), sb.Payload[:8], "AAAAAAAA", 1)
		if r := c.tc.Do(t, "POST", "/v1/terminals/"+c.term+"/batches", tampered); r.Status != 422 || r.Code() != "batch_tampered" {
			t.Errorf("tampered: %d %s", r.Status, r.Body)
		}
		// Another terminal's path is forbidden.
		if r := c.tc.Do(t, "POST", "/v1/terminals/trm_other/batches", sb); r.Status != 403 {
			t.Errorf("other terminal: %d %s", r.Status, r.Body)
		}
		c.checkBooks(t, charged)
	})
}

// TestOfflineRecordTimesAcrossBatches: a terminal's records are numbered
// and dated in the same order, within scan.OfflineClockBack, inside a
// batch and against the terminal's mark (its latest stored record) across
// batches. A record dated before one the terminal made earlier is
// clock_back, one numbered below the mark but dated after it out_of_order;
// neither moves money. A late batch of older records, and a re-sent one,
// still go through.
func TestOfflineRecordTimesAcrossBatches(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		adult := c.people[0]
		now := time.Now().Truncate(time.Millisecond)
		rec := func(id string, seq int64, at time.Time) terminal.Record {
			return terminal.Record{ID: id, Seq: seq, At: at, Scenario: "transit.bus", CardNumber: adult.card}
		}
		mark := func() (int64, time.Time) {
			t.Helper()
			var seq, at int64
			if err := c.tn.DB.R.QueryRow(`SELECT offline_seq, offline_at FROM terminals WHERE id = $1`, c.term).Scan(&seq, &at); err != nil {
				t.Fatal(err)
			}
			return seq, time.UnixMilli(at)
		}
		status := func(rep scan.BatchReport) string {
			var out []string
			for _, it := range rep.Items {
				s := it.ID + ":" + it.Status
				if it.Status == scan.StatusRejected {
					s += "/" + string(it.Reason)
				}
				out = append(out, s)
			}
			return strings.Join(out, " ")
		}
		var charged int64
		check := func(rep scan.BatchReport, want string) {
			t.Helper()
			if got := status(rep); got != want {
				t.Fatalf("batch %s:\n got %s\nwant %s", rep.BatchID, got, want)
			}
			charged += rep.ChargedFen
			c.checkBooks(t, charged)
		}
		first := []terminal.Record{rec("a1", 10, now.Add(-60*time.Minute)), rec("a2", 11, now.Add(-50*time.Minute))}
		check(upload(t, c, "a", first), "a1:applied a2:applied")
		if seq, at := mark(); seq != 11 || !at.Equal(now.Add(-50*time.Minute)) {
			t.Fatalf("mark after the first batch: %d %v", seq, at)
		}
		// The clock went back 20 minutes after a2 (beyond the tolerance),
		// then a time sync set it back 4 minutes (within it); in the batch,
		// b4 is dated 30 minutes before b3.
		check(upload(t, c, "b", []terminal.Record{
			rec("b1", 12, now.Add(-70*time.Minute)),
			rec("b2", 13, now.Add(-54*time.Minute)),
			rec("b3", 14, now.Add(-40*time.Minute)),
			rec("b4", 15, now.Add(-70*time.Minute)),
			rec("b5", 16, now.Add(-39*time.Minute)),
		}), "b1:rejected/clock_back b2:applied b3:applied b4:rejected/clock_back b5:applied")
		if seq, at := mark(); seq != 16 || !at.Equal(now.Add(-39*time.Minute)) {
			t.Fatalf("mark after the second batch: %d %v", seq, at)
		}
		// A late batch of older records goes through (and leaves the mark);
		// one numbered below the mark but dated after it does not.
		check(upload(t, c, "late", []terminal.Record{
			rec("l1", 5, now.Add(-90*time.Minute)),
			rec("l2", 6, now.Add(-20*time.Minute)),
		}), "l1:applied l2:rejected/out_of_order")
		if seq, _ := mark(); seq != 16 {
			t.Fatalf("a late batch moved the mark to %d", seq)
		}
		// The first batch again: duplicates, not a clock going back.
		check(upload(t, c, "a", first), "a1:duplicate a2:duplicate")
		if charged != 6*200 { // a1 a2 b2 b3 b5 l1
			t.Fatalf("charged %d, want 6 fares", charged)
		}
	})
}

// TestReplayAcrossProcesses scans one code on two node processes sharing
// one PostgreSQL database: exactly one scan is accepted.
func TestReplayAcrossProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dsn := storetest.Postgres(t)
	dir := t.TempDir()
	// Set up with an in-process node, then close it.
	n, err := node.Open(context.Background(), node.Config{DataDir: dir, DB: dsn})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	prv, err := n.CreateProvider(ctx, "地铁", "transit", []string{"transit.bus"})
	if err != nil {
		t.Fatal(err)
	}
	_, tok, _, err := n.CreateTerminal(ctx, prv.ID, "gate", nil)
	if err != nil {
		t.Fatal(err)
	}
	p := enrol(t, n, rand.New(rand.NewPCG(3, 4)), resident.CategoryLocal, time.Now().AddDate(-30, 0, 0), 10_000, 0)
	codes := make([]string, 5)
	for i := range codes {
		codes[i] = code(t, n, p.card)
	}
	n.Close()
	a := nodetest.StartProcess(t, dir, "--db", dsn)
	b := nodetest.StartProcess(t, dir, "--db", dsn)
	accepted := 0
	for i, cd := range codes {
		var wg sync.WaitGroup
		out := make([]answer, 2)
		for j, base := range []string{a.URL, b.URL} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := nodetest.NewClient(base, tok).Do(t, "POST", "/v1/scans", map[string]any{"idempotency_key": fmt.Sprintf("p%d-%d", i, j), "scenario": "transit.bus", "code": cd})
				if r.Status != 200 {
					t.Errorf("process %d: %d %s", j, r.Status, r.Body)
				}
				r.Decode(t, &out[j])
			}()
		}
		wg.Wait()
		n := 0
		for _, o := range out {
			if o.Decision == "accepted" {
				n++
			} else if o.Reason != "replayed" {
				t.Errorf("declined for %q, want replayed", o.Reason)
			}
		}
		if n != 1 {
			t.Fatalf("code %d accepted %d times across two processes", i, n)
		}
		accepted += n
	}
	a.Terminate()
	b.Terminate()
	n2, err := node.Open(ctx, node.Config{DataDir: dir, DB: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer n2.Close()
	bal, _ := n2.Ledger.Balance(ctx, ledger.ReceivableID(prv.ID))
	if bal.Balance != int64(accepted)*200 {
		t.Fatalf("provider got %d, want %d", bal.Balance, accepted*200)
	}
	if chk, err := n2.Ledger.Check(ctx); err != nil || !chk.OK() {
		t.Fatalf("ledger: %+v %v", chk, err)
	}
}

// TestOneCodeManyKeys: scans of one code under different keys, sent at
// once (so most share a ledger batch), accept it exactly once and decline
// the others replayed without failing their batch-mates; an offline batch
// carrying the same code twice applies it once.
func TestOneCodeManyKeys(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		adult, senior := c.people[0], c.people[1]
		n := c.tn.Node
		yk := code(t, n, adult.card)
		out := make([]answer, 24)
		var wg sync.WaitGroup
		for i := range out {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := map[string]any{"idempotency_key": fmt.Sprintf("m%d", i), "scenario": "transit.bus", "code": yk}
				if i%2 == 1 { // batch-mates with other cards must not be affected
					body = map[string]any{"idempotency_key": fmt.Sprintf("m%d", i), "scenario": "transit.bus", "card_number": adult.card}
				}
				a, r := c.scan(t, body)
				if r.Status != 200 {
					t.Errorf("scan %d: %d %s", i, r.Status, r.Body)
				}
				out[i] = a
			}()
		}
		wg.Wait()
		accepted := 0
		for i, a := range out {
			switch {
			case i%2 == 1 && a.Decision != "accepted":
				t.Errorf("card scan %d: %+v", i, a)
			case i%2 == 0 && a.Decision == "accepted":
				accepted++
			case i%2 == 0 && a.Reason != "replayed":
				t.Errorf("code scan %d declined for %q, want replayed", i, a.Reason)
			}
		}
		if accepted != 1 {
			t.Fatalf("the code was accepted %d times", accepted)
		}
		charged := int64(200 * (1 + len(out)/2))
		c.checkBooks(t, charged)

		// Offline: the same code in two records of one batch, and a card
		// reported lost after its card was cached.
		yk2 := code(t, n, adult.card)
		if a, _ := c.scan(t, map[string]any{"idempotency_key": "cache-senior", "scenario": "transit.bus", "card_number": senior.card}); a.Decision != "accepted" {
			t.Fatalf("senior: %+v", a)
		}
		if _, err := n.Residents.ReportLost(context.Background(), senior.card, "test"); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		recs := []terminal.Record{
			{ID: "c1", Seq: 1, At: now.Add(-time.Second), Scenario: "transit.bus", Code: yk2},
			{ID: "c2", Seq: 2, At: now.Add(-time.Second), Scenario: "transit.bus", Code: yk2},
			{ID: "c3", Seq: 3, At: now.Add(time.Second), Scenario: "transit.bus", CardNumber: senior.card},
		}
		var rep scan.BatchReport
		c.tc.JSON(t, "POST", "/v1/terminals/"+c.term+"/batches", signBatch(t, c, "dup-code", recs), 200, &rep)
		if rep.Items[0].Status != "applied" || rep.Items[1].Status != "declined" || rep.Items[1].Reason != "replayed" ||
			rep.Items[2].Status != "declined" || rep.Items[2].Reason != "revoked" {
			t.Fatalf("offline: %+v", rep.Items)
		}
		c.checkBooks(t, charged+200)
	})
}

// An offline record above the scenario's no-PIN amount is declined (no
// PIN can be asked offline), as the same scan online without a PIN is;
// below it, it is charged.
func TestOfflinePINThreshold(t *testing.T) {
	c := setup(t, storetest.SQLite(t), []string{"campus.canteen"})
	sc, err := c.tn.Node.Catalog.Scenario(context.Background(), "campus.canteen")
	if err != nil || !sc.OfflineAllowed || !sc.RequirePIN || sc.PINAboveFen <= 0 {
		t.Fatalf("the seeded canteen: %+v %v", sc, err)
	}
	p := c.people[0]
	if a, r := c.scan(t, map[string]any{"idempotency_key": "on-1", "scenario": "campus.canteen", "card_number": p.card, "amount_fen": sc.PINAboveFen + 100}); a.Reason != "pin_required" {
		t.Fatalf("online without a PIN: %s", r.Body)
	}
	now := time.Now()
	recs := []terminal.Record{
		{ID: "pin-1", Seq: 1, At: now.Add(-time.Minute), Scenario: "campus.canteen", CardNumber: p.card, AmountFen: sc.PINAboveFen + 100},
		{ID: "pin-2", Seq: 2, At: now.Add(-time.Minute + time.Second), Scenario: "campus.canteen", CardNumber: p.card, AmountFen: 100},
	}
	var rep scan.BatchReport
	c.tc.JSON(t, "POST", "/v1/terminals/"+c.term+"/batches", signBatch(t, c, "pin-b1", recs), 200, &rep)
	if rep.Items[0].Status != "declined" || rep.Items[0].Reason != "pin_required" || rep.Items[1].Status != "applied" || rep.ChargedFen != 100 {
		t.Fatalf("offline above and below the threshold: %+v", rep)
	}
	c.checkBooks(t, 100)
}

// TestOfflineCardFoundOrLostAgain: an offline record is judged by the
// card's status at the scan's time, from its history, not only by its
// last change: a tap while the card was lost is refused even when the card
// was found since, or lost again since (its last change is then after the
// tap and alone would let the charge through).
func TestOfflineCardFoundOrLostAgain(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		adult := c.people[0]
		res := c.tn.Node.Residents
		ctx := context.Background()
		step := func() time.Time {
			time.Sleep(15 * time.Millisecond)
			at := time.Now()
			time.Sleep(15 * time.Millisecond)
			return at
		}
		before := step()
		if _, err := res.ReportLost(ctx, adult.card, "test"); err != nil {
			t.Fatal(err)
		}
		whileLost := step()
		if _, err := res.Recover(ctx, adult.card, "test"); err != nil {
			t.Fatal(err)
		}
		whileFound := step()
		if _, err := res.ReportLost(ctx, adult.card, "test"); err != nil {
			t.Fatal(err)
		}
		rec := func(id string, seq int64, at time.Time) terminal.Record {
			return terminal.Record{ID: id, Seq: seq, At: at, Scenario: "transit.bus", CardNumber: adult.card}
		}
		// Lost again now: its last change is after all three taps.
		var rep scan.BatchReport
		c.tc.JSON(t, "POST", "/v1/terminals/"+c.term+"/batches", signBatch(t, c, "h1", []terminal.Record{
			rec("h1", 1, before), rec("h2", 2, whileLost), rec("h3", 3, whileFound),
		}), 200, &rep)
		want := []struct{ status, reason string }{{"applied", ""}, {"declined", "revoked"}, {"applied", ""}}
		for i, w := range want {
			if it := rep.Items[i]; it.Status != w.status || string(it.Reason) != w.reason {
				t.Errorf("lost again, record %s: %+v, want %s %s", it.ID, it, w.status, w.reason)
			}
		}
		// Found again now (active): a tap while it was lost is still refused.
		if _, err := res.Recover(ctx, adult.card, "test"); err != nil {
			t.Fatal(err)
		}
		rep = scan.BatchReport{}
		c.tc.JSON(t, "POST", "/v1/terminals/"+c.term+"/batches", signBatch(t, c, "h2", []terminal.Record{
			rec("h4", 4, whileLost), rec("h5", 5, whileFound), rec("h6", 6, time.Now()),
		}), 200, &rep)
		want = []struct{ status, reason string }{{"declined", "revoked"}, {"applied", ""}, {"applied", ""}}
		for i, w := range want {
			if it := rep.Items[i]; it.Status != w.status || string(it.Reason) != w.reason {
				t.Errorf("found again, record %s: %+v, want %s %s", it.ID, it, w.status, w.reason)
			}
		}
		c.checkBooks(t, 4*200)
	})
}

// TestChargeKeysAppendToTheJournal: the ledger keys of charges, in the
// order the journal received them, are in key order (each lands at the end
// of the journal's index of keys), although their idempotency keys are not.
func TestChargeKeysAppendToTheJournal(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		for i := 1; i <= 12; i++ {
			if a, r := c.scan(t, map[string]any{"idempotency_key": fmt.Sprintf("k%d", i), "scenario": "transit.bus", "card_number": c.people[i%2].card}); r.Status != 200 || a.Decision != "accepted" {
				t.Fatalf("scan %d: %d %s", i, r.Status, r.Body)
			}
			time.Sleep(2 * time.Millisecond)
		}
		rows, err := c.tn.DB.R.QueryContext(context.Background(), `SELECT idem_key FROM ledger_journal WHERE kind = 'scan_charge' ORDER BY seq`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var keys []string
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
		}
		// (The odd scans are a senior's free rides: no transfer.) k10 and
		// k12 sort before k2 as idempotency keys.
		if len(keys) != 6 || !sort.StringsAreSorted(keys) {
			t.Fatalf("charge keys in journal order: %q", keys)
		}
	})
}

// TestChargeAnswersOnRetry: a charge's answer is the same on a retry of
// its key, whether it was made before the ledger applied the fare (a bus
// gate sees no balance) or after (a canteen sees the balance after the
// fare); a fare the wallet cannot pay is declined, and stays declined on
// a retry, although an accepted answer had been prepared for it.
func TestChargeAnswersOnRetry(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus", "campus.canteen"})
		rich := enrol(t, c.tn.Node, rand.New(rand.NewPCG(61, 62)), resident.CategoryLocal, time.Now().AddDate(-30, 0, 0), 10_000, 0)
		poor := enrol(t, c.tn.Node, rand.New(rand.NewPCG(63, 64)), resident.CategoryLocal, time.Now().AddDate(-30, 0, 0), 100, 0)
		for _, tc := range []struct {
			key, scenario string
			p             person
			amount        int64
			decision      string
			view          map[string]any
		}{
			{"bus-ok", "transit.bus", rich, 0, "accepted", map[string]any{"decision": "accepted", "charged_fen": 200.0}},
			{"canteen-ok", "campus.canteen", rich, 1_500, "accepted", map[string]any{"decision": "accepted", "charged_fen": 1_500.0, "balance_fen": float64(10_000 - 200 - 1_500)}},
			{"bus-poor", "transit.bus", poor, 0, "declined", map[string]any{"decision": "declined", "reason": "insufficient_funds"}},
			{"canteen-poor", "campus.canteen", poor, 1_500, "declined", map[string]any{"decision": "declined", "reason": "insufficient_funds"}},
		} {
			body := map[string]any{"idempotency_key": tc.key, "scenario": tc.scenario, "card_number": tc.p.card}
			if tc.amount > 0 {
				body["amount_fen"] = tc.amount
			}
			first, r := c.scan(t, body)
			if r.Status != 200 || first.Decision != tc.decision {
				t.Fatalf("%s: %d %s", tc.key, r.Status, r.Body)
			}
			for k, want := range tc.view {
				if first.View[k] != want {
					t.Fatalf("%s: view %v, want %s = %v", tc.key, first.View, k, want)
				}
			}
			if _, r2 := c.scan(t, body); r2.Status != 200 || string(r2.Body) != string(r.Body) {
				t.Fatalf("%s: retried answer %s, first %s", tc.key, r2.Body, r.Body)
			}
		}
		if w := wallet(t, c, rich); w != 10_000-200-1_500 {
			t.Fatalf("wallet %d", w)
		}
		if w := wallet(t, c, poor); w != 100 {
			t.Fatalf("poor wallet %d", w)
		}
		// A final charge's row keeps no plan (nothing reads it again).
		var plans int
		if err := c.tn.DB.R.QueryRowContext(context.Background(), `SELECT COUNT(*) FROM scans WHERE plan <> ''`).Scan(&plans); err != nil || plans != 0 {
			t.Fatalf("%d scan rows keep a plan (%v)", plans, err)
		}
	})
}

// TestResentRecordAfterClockSyncs: a terminal whose clock was set back a
// few minutes at a time (each within scan.OfflineClockBack of its mark)
// re-sends an old batch: its records were applied, and are reported
// duplicate with their first outcome, not rejected out_of_order (which
// says "not applied, no money moved").
func TestResentRecordAfterClockSyncs(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		adult := c.people[0]
		now := time.Now().Truncate(time.Millisecond)
		rec := func(id string, seq int64, at time.Time) terminal.Record {
			return terminal.Record{ID: id, Seq: seq, At: at, Scenario: "transit.bus", CardNumber: adult.card}
		}
		first := []terminal.Record{rec("s1", 1, now.Add(-30*time.Minute))}
		if rep := upload(t, c, "s1", first); rep.Applied != 1 {
			t.Fatalf("first: %+v", rep.Items)
		}
		// Two time syncs, each setting the clock back 4 minutes.
		for i, back := range []time.Duration{34, 38} {
			if rep := upload(t, c, fmt.Sprintf("s%d", i+2), []terminal.Record{rec(fmt.Sprintf("s%d", i+2), int64(i+2), now.Add(-back*time.Minute))}); rep.Applied != 1 {
				t.Fatalf("after sync %d: %+v", i+1, rep.Items)
			}
		}
		rep := upload(t, c, "s1", first)
		if it := rep.Items[0]; it.Status != scan.StatusDuplicate || it.Decision != scan.Accepted || it.ChargedFen != 200 {
			t.Fatalf("re-sent record: %+v; want duplicate of its applied outcome", it)
		}
		c.checkBooks(t, 3*200)
	})
}
