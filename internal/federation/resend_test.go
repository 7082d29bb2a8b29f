package federation_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestChargeResent delivers one online charge to the home city several
// times, one after another and at once (a visited city retrying after a
// lost answer): the home city books it once and answers every delivery
// with the same answer. The home city books a new charge without reading
// its inbox row first; a re-sent one is refused by the inbox's Claim in
// the ledger batch and answered from the stored row.
func TestChargeResent(t *testing.T) {
	a, b := pollingHourly(t, nil)
	ctx := context.Background()
	res := a.demo.Residents[1]
	cd, err := a.Residents.Card(ctx, res.CardNumber)
	if err != nil {
		t.Fatal(err)
	}
	deliver := func(c federation.Charge) federation.ChargeAnswer {
		t.Helper()
		env, err := federation.Seal(b.id, a.id, federation.KindCharge, time.Now(), c, b.Keys.NodeSigner())
		if err != nil {
			t.Fatal(err)
		}
		out, err := a.Fed.HandleCharge(ctx, env)
		if err != nil {
			t.Fatal(err)
		}
		e, err := federation.Open(out, b.id, federation.KindAnswer, b.Fed.Members(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		var ans federation.ChargeAnswer
		if err := json.Unmarshal(e.Body, &ans); err != nil {
			t.Fatal(err)
		}
		return ans
	}
	charge := func(n int) federation.Charge {
		return federation.Charge{ID: federation.MessageID(b.id, fmt.Sprintf("resend-%d-%d", time.Now().UnixNano(), n)), Mode: federation.ModeOnline,
			Subject: cd.Token, AmountFen: 150, Scenario: "transit.bus", CreatedAt: time.Now().UTC().Truncate(time.Millisecond)}
	}

	w0 := a.wallet(t, res.CardNumber)
	c := charge(1)
	first := deliver(c)
	if first.State != federation.StateApplied || first.WalletFen != 150 || len(first.Transfers) != 1 {
		t.Fatalf("first delivery: %+v", first)
	}
	for i := 0; i < 3; i++ {
		if again := deliver(c); !reflect.DeepEqual(again, first) {
			t.Fatalf("delivery %d: %+v, want %+v", i+2, again, first)
		}
	}
	if w := a.wallet(t, res.CardNumber); w != w0-150 {
		t.Fatalf("wallet %d after four deliveries of one charge, want %d", w, w0-150)
	}

	// At once: every delivery of one message lands in the ledger together.
	for round := 0; round < 5; round++ {
		c := charge(100 + round)
		answers := make([]federation.ChargeAnswer, 6)
		var wg sync.WaitGroup
		for i := range answers {
			wg.Add(1)
			go func() { defer wg.Done(); answers[i] = deliver(c) }()
		}
		wg.Wait()
		for i, ans := range answers {
			if ans.State != federation.StateApplied || !reflect.DeepEqual(ans, answers[0]) {
				t.Fatalf("round %d, delivery %d: %+v, want %+v", round, i, ans, answers[0])
			}
		}
	}
	if w := a.wallet(t, res.CardNumber); w != w0-6*150 {
		t.Fatalf("wallet %d after six charges each delivered several times, want %d", w, w0-6*150)
	}

	// The same id with another amount is not the same message.
	c.AmountFen = 151
	if ans := deliver(c); ans.State != federation.StateDeclined || ans.Reason != "idempotency_conflict" {
		t.Fatalf("same id, other amount: %+v", ans)
	}
	if chk, err := a.Ledger.Check(ctx); err != nil || chk.SumFen != 0 {
		t.Fatalf("ledger check: %+v %v", chk, err)
	}

	// A card's exposure under the risk limit is read through the partial
	// subject index (migration 0051), not by scanning the outbox.
	if b.DB.Dialect == store.SQLite {
		if p := storetest.QueryPlan(t, b.DB.R, federation.ExposureSQL, a.id, cd.Token); !strings.Contains(p, "fed_messages_subject") {
			t.Fatalf("exposure query plan: %s", p)
		}
	}
}
