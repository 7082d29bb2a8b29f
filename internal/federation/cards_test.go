package federation_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// scanCard scans a physical card number (the request's card_number).
func (c *city) scanCard(t *testing.T, scenario, key, number string) scanAnswer {
	t.Helper()
	tm := c.terminal(t, scenario)
	var a scanAnswer
	nodetest.NewClient(c.url, tm.Token).JSON(t, "POST", "/v1/scans",
		map[string]any{"idempotency_key": key, "scenario": scenario, "card_number": number}, 200, &a)
	return a
}

// upload signs records as one batch of c's terminal for scenario and
// uploads it.
func (c *city) upload(t *testing.T, scenario, batchID string, recs []terminal.Record) scan.BatchReport {
	t.Helper()
	tm := c.terminal(t, scenario)
	key, err := terminal.ParseBatchKey(tm.BatchKey)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := terminal.SignBatch(terminal.Batch{Terminal: tm.ID, ID: batchID, CreatedAt: time.Now(), Records: recs}, key)
	if err != nil {
		t.Fatal(err)
	}
	var rep scan.BatchReport
	nodetest.NewClient(c.url, tm.Token).JSON(t, "POST", "/v1/terminals/"+tm.ID+"/batches", sb, 200, &rep)
	return rep
}

func wantItems(t *testing.T, rep scan.BatchReport, want map[string]string) {
	t.Helper()
	for _, it := range rep.Items {
		w, ok := want[it.ID]
		if !ok {
			continue
		}
		got := it.Status
		if it.Reason != "" {
			got += ":" + string(it.Reason)
		}
		if got != w {
			t.Fatalf("record %s: %s (%+v), want %s", it.ID, got, it, w)
		}
	}
}

// inRows counts A's inbox rows for subject (a card token or "card:"+number).
func inRows(t *testing.T, c *city, subject string) int {
	var n int
	if err := c.DB.R.QueryRowContext(context.Background(), `SELECT COUNT(*) FROM fed_messages WHERE direction = 'in' AND subject = $1 AND state = 'applied'`, subject).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestForeignCardsAndBatches: city A's physical cards at city B's
// terminals, online and with A down, and A's codes and cards inside B's
// offline batches — each charge applied once at home, booked in clearing
// on both sides, the books mirroring.
func TestForeignCardsAndBatches(t *testing.T) {
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	a := startCity(t, "CN-330100", "", cfg)                       // home (Hangzhou), SQLite
	b := startCity(t, "CN-310000", storetest.Postgres(t), cfg)    // visited (Shanghai), PostgreSQL
	px := newProxy(t, a.url)                                      // B reaches A through this
	reg.write(t, reg.anchor, member(a, px.url), member(b, b.url)) // A's base URL at B is the proxy
	eventually(t, "both cities to trust each other", 10*time.Second, func() bool { return trusts(a, b.id) && trusts(b, a.id) })
	ctx := context.Background()
	rs := a.demo.Residents // 0: local 34, 1: insured non-local 29, 2: permanent 41, 3: local 67, 4: local 62, 5: local 19
	for _, r := range rs {
		if !strings.HasPrefix(r.CardNumber, "3301") {
			t.Fatalf("A's card %s does not carry A's region code", r.CardNumber)
		}
	}
	if city, ok := b.Fed.CardIssuer(rs[0].CardNumber); !ok || city != a.id {
		t.Fatalf("B resolves A's card to %q %v", city, ok)
	}
	if _, ok := b.Fed.CardIssuer(b.demo.Residents[0].CardNumber); ok {
		t.Fatal("B resolves its own card to a peer")
	}

	t.Run("online: charged at home, clearing on both sides, retry and privacy", func(t *testing.T) {
		res := rs[0]
		w0, c0 := a.wallet(t, res.CardNumber), b.balance(t, ledger.ClearingID(a.id))
		r := b.scanCard(t, "transit.bus", "card-1", res.CardNumber)
		if r.Decision != "accepted" || r.ChargedFen == nil || *r.ChargedFen != 200 {
			t.Fatalf("A's card on B's bus: %+v", r)
		}
		if again := b.scanCard(t, "transit.bus", "card-1", res.CardNumber); again.Decision != "accepted" || *again.ChargedFen != 200 {
			t.Fatalf("retry: %+v", again)
		}
		r2 := b.scanCard(t, "transit.bus", "card-2", res.CardNumber) // a card has no nonce: a second ride
		if r2.Decision != "accepted" {
			t.Fatalf("second ride: %+v", r2)
		}
		if w := a.wallet(t, res.CardNumber); w != w0-400 {
			t.Fatalf("A's wallet %d, want %d", w, w0-400)
		}
		if got := b.balance(t, ledger.ClearingID(a.id)); got != c0-400 {
			t.Fatalf("B's clr:A %d, want %d", got, c0-400)
		}
		if n := inRows(t, a, "card:"+res.CardNumber); n != 2 {
			t.Fatalf("A applied %d card charges, want 2", n)
		}
		lib := b.scanCard(t, "library.loan", "card-lib", res.CardNumber)
		if lib.Decision != "accepted" {
			t.Fatalf("library: %+v", lib)
		}
		for _, v := range []scanAnswer{r, lib} {
			for _, k := range []string{"name", "masked_name", "masked_id_number"} {
				if s, _ := v.View[k].(string); s != "" {
					t.Fatalf("B's view of A's card carries %s=%q", k, s)
				}
			}
		}
		checkBooks(t, a, b)
	})

	t.Run("equal treatment: A answers the claims, B charges its concession fare", func(t *testing.T) {
		senior65, senior60 := rs[3], rs[4]
		w65, w60 := a.wallet(t, senior65.CardNumber), a.wallet(t, senior60.CardNumber)
		r65 := b.scanCard(t, "transit.bus", "eq-65", senior65.CardNumber)
		r60 := b.scanCard(t, "transit.bus", "eq-60", senior60.CardNumber)
		if r65.Decision != "accepted" || *r65.ChargedFen != 0 || r60.Decision != "accepted" || *r60.ChargedFen != 100 {
			t.Fatalf("seniors' cards: 65+ %+v, 60-64 %+v", r65, r60)
		}
		// The same holder's e-code (claims inside) costs the same.
		rc := b.scan(t, "transit.bus", "eq-60-code", a.code(t, senior60.CardNumber), 0, "")
		if rc.Decision != "accepted" || *rc.ChargedFen != 100 {
			t.Fatalf("60-64 code: %+v", rc)
		}
		if w := a.wallet(t, senior65.CardNumber); w != w65 {
			t.Fatalf("65+ wallet %d, want %d (free)", w, w65)
		}
		if w := a.wallet(t, senior60.CardNumber); w != w60-200 {
			t.Fatalf("60-64 wallet %d, want %d (two half fares)", w, w60-200)
		}
		checkBooks(t, a, b)
	})

	t.Run("A's answer lost: B queued the adult fare, A charged the concession; B books the difference", func(t *testing.T) {
		senior60 := rs[4]
		w0 := a.wallet(t, senior60.CardNumber)
		c0, p0 := b.balance(t, ledger.ClearingID(a.id)), b.balance(t, ledger.ReceivableID(b.terminal(t, "transit.bus").Provider))
		n0 := inRows(t, a, "card:"+senior60.CardNumber)
		defer px.mode.Store("ok")
		px.mode.Store("lost") // A applies the online request; its answer is lost
		r := b.scanCard(t, "transit.bus", "late-60", senior60.CardNumber)
		if r.Decision != "accepted" || *r.ChargedFen != 200 {
			t.Fatalf("lost answer: B should accept offline at the adult fare: %+v", r)
		}
		eventually(t, "A to apply the online request", 5*time.Second, func() bool { return inRows(t, a, "card:"+senior60.CardNumber) == n0+1 })
		px.mode.Store("ok") // the outbox re-delivers: A answers what it charged
		checkBooks(t, a, b)
		if w := a.wallet(t, senior60.CardNumber); w != w0-100 {
			t.Fatalf("A charged %d, want the half fare 100", w0-w)
		}
		if c, p := b.balance(t, ledger.ClearingID(a.id)), b.balance(t, ledger.ReceivableID(b.terminal(t, "transit.bus").Provider)); c != c0-100 || p != p0+100 {
			t.Fatalf("B's clr:A moved %d and the bus company %d, want -100 and +100", c-c0, p-p0)
		}
	})

	t.Run("unknown cards", func(t *testing.T) {
		n := "330100000000001" // A's prefix 3301
		n += string(luhnDigit(n))
		if r := b.scanCard(t, "transit.bus", "unk-1", n); r.Decision != "declined" || r.Reason != "unknown_holder" {
			t.Fatalf("unknown card with A's prefix: %+v", r)
		}
		n = "999999000000001" // no member's prefix
		n += string(luhnDigit(n))
		if r := b.scanCard(t, "transit.bus", "unk-2", n); r.Decision != "declined" || r.Reason != "unknown_holder" {
			t.Fatalf("card of no member: %+v", r)
		}
	})

	t.Run("a card on A's deny list is refused at B", func(t *testing.T) {
		res := rs[2]
		a.reportLost(t, res.CardNumber)
		eventually(t, "B to learn A's deny list", 10*time.Second, func() bool { return b.Fed.CardRevoked(a.id, res.CardNumber, time.Now()) })
		w0 := a.wallet(t, res.CardNumber)
		if r := b.scanCard(t, "transit.bus", "lost-1", res.CardNumber); r.Decision != "declined" || r.Reason != "revoked" {
			t.Fatalf("lost card at B: %+v", r)
		}
		if w := a.wallet(t, res.CardNumber); w != w0 {
			t.Fatal("a refused card was charged")
		}
	})

	t.Run("A down: accepted under the risk limit, queued, cleared once", func(t *testing.T) {
		res := rs[5]
		w0 := a.wallet(t, res.CardNumber)
		px.mode.Store("down")
		for i := 0; i < 2; i++ {
			if r := b.scanCard(t, "transit.bus", fmt.Sprintf("down-card-%d", i), res.CardNumber); r.Decision != "accepted" || *r.ChargedFen != 200 {
				t.Fatalf("ride %d with A down: %+v", i, r)
			}
		}
		if r := b.scanCard(t, "transit.bus", "down-card-2", res.CardNumber); r.Decision != "declined" || r.Reason != "risk_limit" {
			t.Fatalf("over the risk limit: %+v", r)
		}
		if r := b.scanCard(t, "medical.outpatient", "down-card-med", res.CardNumber); r.Decision != "declined" {
			t.Fatalf("medical with A down: %+v", r)
		}
		time.Sleep(300 * time.Millisecond) // failed deliveries meanwhile
		px.mode.Store("ok")
		checkBooks(t, a, b)
		if w := a.wallet(t, res.CardNumber); w != w0-400 {
			t.Fatalf("A's wallet after catch-up %d, want %d", w, w0-400)
		}
		if n := inRows(t, a, "card:"+res.CardNumber); n != 2 {
			t.Fatalf("A applied %d queued card charges, want 2", n)
		}
	})

	t.Run("A down: a card A never issued, accepted at B's risk, refused by A and written off at B", func(t *testing.T) {
		// A number of A's region and a valid check digit, but no card.
		base := "330199999999999"
		sum := 0
		for i := len(base) - 1; i >= 0; i-- {
			d := int(base[i] - '0')
			if (len(base)-1-i)%2 == 0 {
				if d *= 2; d > 9 {
					d -= 9
				}
			}
			sum += d
		}
		fake := base + string(rune('0'+(10-sum%10)%10))
		loss0 := b.balance(t, federation.FedLossAccount)
		px.mode.Store("down")
		if r := b.scanCard(t, "transit.bus", "fake-card-1", fake); r.Decision != "accepted" {
			t.Fatalf("an unknown card with A down: %+v", r)
		}
		time.Sleep(300 * time.Millisecond)
		px.mode.Store("ok")
		checkBooks(t, a, b) // the clearing accounts mirror: B's claim was undone
		if got := b.balance(t, federation.FedLossAccount); got != loss0-200 {
			var st, ans string
			b.DB.R.QueryRow(`SELECT state, COALESCE(CAST(answer AS TEXT), '') FROM fed_messages WHERE subject = $1`, "card:"+fake).Scan(&st, &ans)
			var ast string
			a.DB.R.QueryRow(`SELECT state FROM fed_messages WHERE subject = $1`, "card:"+fake).Scan(&ast)
			t.Fatalf("B's loss account %d → %d, want the 200 fen written off (B %s %s, A %s)", loss0, got, st, ans, ast)
		}
	})

	t.Run("offline batch with A's codes and cards, re-sent", func(t *testing.T) {
		res, sen := rs[0], rs[4]
		wRes, wSen := a.wallet(t, res.CardNumber), a.wallet(t, sen.CardNumber)
		own := b.demo.Residents[0]
		wOwn := b.wallet(t, own.CardNumber)
		code := a.code(t, res.CardNumber)
		now := time.Now()
		recs := []terminal.Record{
			{ID: "f-code", Seq: 1, At: now, Scenario: "transit.bus", Code: code},
			{ID: "f-card", Seq: 2, At: now.Add(time.Second), Scenario: "transit.bus", CardNumber: res.CardNumber},
			{ID: "f-code-again", Seq: 3, At: now.Add(2 * time.Second), Scenario: "transit.bus", Code: code},
			{ID: "f-senior", Seq: 4, At: now.Add(3 * time.Second), Scenario: "transit.bus", CardNumber: sen.CardNumber},
			{ID: "f-own", Seq: 5, At: now.Add(4 * time.Second), Scenario: "transit.bus", CardNumber: own.CardNumber},
		}
		want := map[string]string{"f-code": "applied", "f-card": "applied", "f-code-again": "declined:replayed", "f-senior": "applied", "f-own": "applied"}
		rep := b.upload(t, "transit.bus", "fb-1", recs)
		wantItems(t, rep, want)
		if rep.ChargedFen != 200+200+100+200 {
			t.Fatalf("batch charged %d: %+v", rep.ChargedFen, rep.Items)
		}
		for i := 0; i < 2; i++ { // re-sent: every record a duplicate, nothing applied again
			again := b.upload(t, "transit.bus", "fb-1", recs)
			if again.Duplicates != len(recs) {
				t.Fatalf("re-send %d: %+v", i, again)
			}
		}
		if w := a.wallet(t, res.CardNumber); w != wRes-400 {
			t.Fatalf("A's wallet %d, want %d", w, wRes-400)
		}
		if w := a.wallet(t, sen.CardNumber); w != wSen-100 {
			t.Fatalf("A's senior's wallet %d, want %d (half fare)", w, wSen-100)
		}
		if w := b.wallet(t, own.CardNumber); w != wOwn-200 {
			t.Fatalf("B's own resident's wallet %d, want %d", w, wOwn-200)
		}
		checkBooks(t, a, b)
	})

	t.Run("offline batch with A down: risk limit, queued, re-sent, cleared once", func(t *testing.T) {
		res := rs[1]
		w0 := a.wallet(t, res.CardNumber)
		code := a.code(t, res.CardNumber)
		px.mode.Store("down")
		now := time.Now()
		var recs []terminal.Record
		for i := 0; i < 3; i++ {
			recs = append(recs, terminal.Record{ID: fmt.Sprintf("d-card-%d", i), Seq: int64(i + 1), At: now.Add(time.Duration(i) * time.Second), Scenario: "transit.bus", CardNumber: res.CardNumber})
		}
		recs = append(recs, terminal.Record{ID: "d-code", Seq: 10, At: now.Add(10 * time.Second), Scenario: "transit.bus", Code: code})
		start := time.Now()
		rep := b.upload(t, "transit.bus", "fb-down", recs)
		took := time.Since(start)
		// Two card rides fit the 500 fen limit; the code has its own (its
		// token is not linkable to the card number at B).
		applied, declined := 0, 0
		for _, it := range rep.Items {
			switch {
			case it.Status == scan.StatusApplied:
				applied++
			case it.Status == scan.StatusDeclined && it.Reason == "risk_limit":
				declined++
			default:
				t.Fatalf("record %+v", it)
			}
		}
		if applied != 3 || declined != 1 {
			t.Fatalf("with A down: %+v", rep.Items)
		}
		t.Logf("batch of %d records with A down took %v", len(recs), took)
		if again := b.upload(t, "transit.bus", "fb-down", recs); again.Duplicates != len(recs) {
			t.Fatalf("re-send with A down: %+v", again)
		}
		time.Sleep(300 * time.Millisecond)
		px.mode.Store("ok")
		checkBooks(t, a, b)
		if again := b.upload(t, "transit.bus", "fb-down", recs); again.Duplicates != len(recs) {
			t.Fatalf("re-send after A is back: %+v", again)
		}
		if w := a.wallet(t, res.CardNumber); w != w0-600 {
			t.Fatalf("A's wallet %d, want %d (three rides, once each)", w, w0-600)
		}
		if n := inRows(t, a, "card:"+res.CardNumber); n != 2 {
			t.Fatalf("A applied %d card charges, want 2", n)
		}
		checkBooks(t, a, b)
	})

	t.Run("a card lost after an offline scan is still charged", func(t *testing.T) {
		res := rs[0]
		w0 := a.wallet(t, res.CardNumber)
		// After the card was issued (a scan before that is refused) and
		// before it was lost, a second apart (deny lists count seconds).
		at := time.Now()
		time.Sleep(1100 * time.Millisecond)
		a.reportLost(t, res.CardNumber)
		eventually(t, "B to learn A's deny list", 10*time.Second, func() bool { return b.Fed.CardRevoked(a.id, res.CardNumber, time.Now()) })
		rep := b.upload(t, "transit.bus", "fb-lost", []terminal.Record{
			{ID: "l-before", Seq: 1, At: at, Scenario: "transit.bus", CardNumber: res.CardNumber},
			{ID: "l-after", Seq: 2, At: time.Now(), Scenario: "transit.bus", CardNumber: res.CardNumber},
		})
		wantItems(t, rep, map[string]string{"l-before": "applied", "l-after": "declined:revoked"})
		if w := a.wallet(t, res.CardNumber); w != w0-200 {
			t.Fatalf("A's wallet %d, want %d", w, w0-200)
		}
		checkBooks(t, a, b)
	})

	t.Run("a tap while the card was lost is not the holder's to pay, once found either", func(t *testing.T) {
		res := rs[0] // lost by the subtest before
		w0 := a.wallet(t, res.CardNumber)
		whileLost := time.Now()
		time.Sleep(1100 * time.Millisecond) // deny lists count seconds
		nodetest.NewClient(a.url, a.demo.Staff["hr_admin"].Token).JSON(t, "POST", "/v1/cards/"+res.CardNumber+"/recover", nil, 200, nil)
		eventually(t, "B to learn the card was found", 10*time.Second, func() bool { return !b.Fed.CardRevoked(a.id, res.CardNumber, time.Now()) })
		// B's terminal accepted the tap offline; B's deny list no longer
		// names the card, so B asks A. A judges the tap by the card's
		// history (lost then) and declines it: the resident's wallet is
		// not charged.
		rep := b.upload(t, "transit.bus", "fb-found", []terminal.Record{
			{ID: "f-while-lost", Seq: 1, At: whileLost, Scenario: "transit.bus", CardNumber: res.CardNumber},
		})
		if it := rep.Items[0]; it.Status != "declined" {
			t.Fatalf("B's report: %+v, want declined", it)
		}
		if w := a.wallet(t, res.CardNumber); w != w0 {
			t.Fatalf("A's wallet %d, want %d: a tap made while the card was lost was charged to its holder", w, w0)
		}
		checkBooks(t, a, b)
	})

	// Nothing of A's residents' names or ID numbers is stored at B.
	var dump strings.Builder
	rows, err := b.DB.R.QueryContext(ctx, `SELECT COALESCE(body, ''), COALESCE(answer, '') FROM fed_messages`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var x, y []byte
		rows.Scan(&x, &y)
		dump.Write(x)
		dump.Write(y)
	}
	rows.Close()
	for _, r := range rs {
		if strings.Contains(dump.String(), r.Name) || strings.Contains(dump.String(), r.IDNumber) {
			t.Fatal("B's clearing messages hold a name or ID number of A's resident")
		}
	}
}

// reportLost reports a card lost through the API (as hr_admin), which
// refreshes the node's deny list at once.
func (c *city) reportLost(t *testing.T, number string) {
	t.Helper()
	nodetest.NewClient(c.url, c.demo.Staff["hr_admin"].Token).JSON(t, "POST", "/v1/cards/"+number+"/lost", nil, 200, nil)
}

// luhnDigit is the Luhn check digit of digits.
func luhnDigit(digits string) byte {
	sum, double := 0, true
	for i := len(digits) - 1; i >= 0; i-- {
		d := int(digits[i] - '0')
		if double {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return byte('0' + (10-sum%10)%10)
}
