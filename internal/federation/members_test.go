package federation_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// An expired member list stops counting, even when no newer one can be
// read: the region removes a member by letting the list that names it
// run out.
func TestExpiredMemberListStopsCounting(t *testing.T) {
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	cfg.Refresh = time.Hour
	a := startCity(t, "CN-330100", "", cfg)
	b := startCity(t, "CN-310000", "", cfg)
	b0, err := federation.SignMembers(federation.MemberList{Region: "test", Members: []federation.Member{member(a, a.url), member(b, b.url)},
		IssuedAt: time.Now(), ExpiresAt: time.Now().Add(3 * time.Second)}, reg.anchor)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(reg.path, b0, 0o644)
	ctx := context.Background()
	a.Fed.Refresh(ctx)
	b.Fed.Refresh(ctx)
	if !trusts(a, b.id) || a.Fed.Members() == nil {
		t.Fatal("A does not trust B with a live list")
	}
	time.Sleep(3100 * time.Millisecond)
	if a.Fed.Members() != nil || trusts(a, b.id) {
		t.Fatal("A still uses an expired member list")
	}
	// A physical card of A's is not admitted at B once the list is gone.
	id := scan.Identity{Scheme: scan.SchemeCard, Issuer: a.id, CardNumber: a.demo.Residents[0].CardNumber}
	if err := b.Fed.Admit(ctx, id, time.Now()); err == nil {
		t.Fatal("B admits A's card under an expired list")
	}
}

// A member list older than one accepted before is refused after a
// restart too (its version is kept in the database).
func TestOlderMemberListRefusedAfterRestart(t *testing.T) {
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	cfg.Refresh = time.Hour
	a := startCity(t, "CN-330100", storetest.Postgres(t), cfg) // the version kept on PostgreSQL
	b := startCity(t, "CN-310000", "", cfg)
	sign := func(version string, ms ...federation.Member) []byte {
		raw, err := federation.SignMembers(federation.MemberList{Region: "test", Version: version, Members: ms}, reg.anchor)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	v1 := sign("1", member(a, a.url), member(b, b.url))
	v2 := sign("2", member(a, a.url)) // B removed
	ctx := context.Background()
	os.WriteFile(reg.path, v2, 0o644)
	if err := a.Fed.RefreshMembers(ctx); err != nil {
		t.Fatal(err)
	}
	// A new service over the same database (a restart) given the old list.
	os.WriteFile(reg.path, v1, 0o644)
	fresh, err := federation.New(ctx, a.Fed.Deps, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if err := fresh.RefreshMembers(ctx); err == nil {
		t.Fatal("an older list was accepted after a restart")
	}
	if m := fresh.Members(); m != nil {
		if _, _, ok := m.Member(b.id); ok {
			t.Fatal("the removed member is back")
		}
	}
}

// A message dated in the future is refused (clock_skew): statements count
// messages by their date, and a future day cannot be settled yet.
func TestFutureDatedChargeRefused(t *testing.T) {
	a, b := pollingHourly(t, nil)
	ctx := context.Background()
	card, _ := a.Residents.Card(ctx, a.demo.Residents[0].CardNumber)
	w0 := a.wallet(t, a.demo.Residents[0].CardNumber)
	c := federation.Charge{ID: federation.MessageID(b.id, "future-1"), Mode: federation.ModeGuaranteed, Subject: card.Token, AmountFen: 100,
		Scenario: "transit.bus", CreatedAt: time.Date(2999, 1, 1, 0, 0, 0, 0, time.UTC)}
	if ans := deliver(t, a, b, c)[0]; ans.State != federation.StateDeclined || ans.Reason != "clock_skew" {
		t.Fatalf("answer %+v", ans)
	}
	if got := a.wallet(t, a.demo.Residents[0].CardNumber); got != w0 {
		t.Fatalf("the wallet moved: %d → %d", w0, got)
	}
}

// A day both cities signed is final: a charge dated on it afterwards (a
// back-dated message) is refused, and the signed statement stays.
func TestSettledDayIsFinal(t *testing.T) {
	a, b := pollingHourly(t, nil)
	ctx := context.Background()
	sts, err := b.Fed.Settle(ctx, "2020-01-01")
	if err != nil || len(sts) != 1 || !sts[0].Agreed {
		t.Fatalf("settle: %+v %v", sts, err)
	}
	card, _ := a.Residents.Card(ctx, a.demo.Residents[0].CardNumber)
	c := federation.Charge{ID: federation.MessageID(b.id, "backdated-1"), Mode: federation.ModeGuaranteed, Subject: card.Token, AmountFen: 100,
		Scenario: "transit.bus", CreatedAt: time.Date(2020, 1, 1, 12, 0, 0, 0, time.UTC)}
	if ans := deliver(t, a, b, c)[0]; ans.State != federation.StateDeclined {
		t.Fatalf("a charge on a settled day: %+v", ans)
	}
	again, err := b.Fed.Settle(ctx, "2020-01-01")
	if err != nil || len(again) != 1 || !again[0].Agreed || again[0].Statement != sts[0].Statement {
		t.Fatalf("the settled day changed: %+v → %+v %v", sts, again, err)
	}
}
