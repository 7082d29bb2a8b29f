package federation_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/trust"
)

// testClock is a clock the test sets; both cities of a test share it, so
// their envelopes stay within MaxSkew of each other.
type testClock struct{ off atomic.Int64 }

func (c *testClock) Now() time.Time   { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *testClock) set(at time.Time) { c.off.Store(int64(time.Until(at))) }

// deliverAt is deliver with both sides' clock at now.
func deliverAt(t *testing.T, a, b *city, now time.Time, msgs ...federation.Charge) []federation.ChargeAnswer {
	t.Helper()
	env, err := federation.Seal(b.id, a.id, federation.KindMessages, now, map[string]any{"messages": msgs}, b.Keys.NodeSigner())
	if err != nil {
		t.Fatal(err)
	}
	out, err := a.Fed.HandleMessages(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	e, err := federation.Open(out, b.id, federation.KindAnswer, b.Fed.Members(), now)
	if err != nil {
		t.Fatal(err)
	}
	var ans struct {
		Results []federation.ChargeAnswer `json:"results"`
	}
	if err := json.Unmarshal(e.Body, &ans); err != nil || len(ans.Results) != len(msgs) {
		t.Fatalf("answers %+v for %d messages: %v", ans, len(msgs), err)
	}
	return ans.Results
}

// TestDaySettledBeforeItEndedIsNotFinal: a statement signed while its day
// was still running (settle accepts "today"; a peer may ask to countersign
// any day) covers only the messages created before it. A guaranteed
// charge created later that day and delivered after midnight (the home
// city was down over midnight) must still be booked at home: refusing it
// as dated on a "settled" day makes the visited city write the ride off.
func TestDaySettledBeforeItEndedIsNotFinal(t *testing.T) {
	var clk testClock
	day := time.Now().UTC().Truncate(24 * time.Hour)
	clk.set(day.Add(22 * time.Hour)) // 22:00 UTC
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	cfg.Refresh = time.Hour
	withClock := func(nc *node.Config) { nc.Now = clk.Now }
	a := startCityWith(t, "CN-330100", "", cfg, withClock)
	b := startCityWith(t, "CN-310000", "", cfg, withClock)
	reg.write(t, reg.anchor, member(a, a.url), member(b, b.url))
	ctx := context.Background()
	a.Fed.Refresh(ctx)
	b.Fed.Refresh(ctx)

	// 22:00: the day is settled early (nothing to clear yet): agreed.
	d := day.Format("2006-01-02")
	sts, err := b.Fed.Settle(ctx, d)
	if err != nil || len(sts) != 1 || !sts[0].Agreed {
		t.Fatalf("settle %s at 22:00: %+v %v", d, sts, err)
	}
	// 22:30: B accepts a ride offline (A down) and queues the charge.
	clk.set(day.Add(22*time.Hour + 30*time.Minute))
	res := a.demo.Residents[0]
	card, _ := a.Residents.Card(ctx, res.CardNumber)
	c := federation.Charge{ID: federation.MessageID(b.id, "late-day-1"), Mode: federation.ModeGuaranteed, Subject: card.Token, AmountFen: 200,
		Scenario: "transit.bus", CreatedAt: clk.Now().UTC().Truncate(time.Millisecond)}
	// 01:00 the next day: A is back and the charge arrives.
	clk.set(day.Add(25 * time.Hour))
	w0 := a.wallet(t, res.CardNumber)
	if ans := deliverAt(t, a, b, clk.Now(), c)[0]; ans.State != federation.StateApplied {
		t.Fatalf("a charge created after the day's early statement: %+v, want applied", ans)
	}
	if w := a.wallet(t, res.CardNumber); w != w0-200 {
		t.Fatalf("A's wallet %d, want %d", w, w0-200)
	}
}

// TestOfflineAcceptanceNeedsFreshTrustData: B holds A's bundle, which
// expires; A cannot be reached. A's codes are then refused at B (their
// keys have expired with the bundle), and A's physical cards must be too:
// B would otherwise accept a card on a deny list it can no longer vouch
// for, and A must book such a guaranteed charge (from its credit account,
// even for a card lost meanwhile).
func TestOfflineAcceptanceNeedsFreshTrustData(t *testing.T) {
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	cfg.Refresh = time.Hour
	a := startCityWith(t, "CN-330100", "", cfg, func(nc *node.Config) { nc.TrustTTL = 3 * time.Second })
	b := startCity(t, "CN-310000", "", cfg)
	px := newProxy(t, a.url)
	reg.write(t, reg.anchor, member(a, px.url), member(b, b.url))
	ctx := context.Background()
	a.Fed.Refresh(ctx)
	a.reportLost(t, a.demo.Residents[5].CardNumber) // A re-issues its bundle now
	b.Fed.Refresh(ctx)
	if !trusts(b, a.id) {
		t.Fatal("B does not trust A")
	}
	var exp time.Time // A's bundle as B holds it expires then
	for _, p := range b.Fed.PeerBundles() {
		if p.Issuer == a.id {
			exp = p.ExpiresAt
		}
	}
	res := a.demo.Residents[0]
	px.mode.Store("down")
	if time.Until(exp) > time.Second {
		// Fresh data, A down: accepted offline (the risk limit allows a ride).
		if r := b.scanCard(t, "transit.bus", "fresh-1", res.CardNumber); r.Decision != "accepted" {
			t.Fatalf("A's card, A down, fresh trust data: %+v", r)
		}
	}
	time.Sleep(time.Until(exp) + 1100*time.Millisecond)
	if r := b.scan(t, "transit.bus", "stale-code", a.code(t, res.CardNumber), 0, ""); r.Decision != "declined" {
		t.Fatalf("A's code with A's trust data expired at B: %+v", r)
	}
	r := b.scanCard(t, "transit.bus", "stale-card", res.CardNumber)
	if r.Decision != "declined" || r.Reason != "trust_expired" {
		t.Fatalf("A's card, A down, A's trust data expired at B: %+v, want declined trust_expired", r)
	}
	px.mode.Store("ok")
	checkBooks(t, a, b)
}

// TestBundleOfARetiredNodeKeyDoesNotBlockTheNewOne: A's node key leaked
// and the region replaced it (a new member list). A bundle signed with
// the old key and dated far ahead, fed to B before the change, must not
// make B refuse every bundle A signs with its new key as "older than the
// one held": the held bundle no longer counts once its key has left the
// list.
func TestBundleOfARetiredNodeKeyDoesNotBlockTheNewOne(t *testing.T) {
	var forged atomic.Value // []byte: served as A's bundle when set
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	cfg.Refresh = time.Hour
	a := startCity(t, "CN-330100", "", cfg)
	b := startCity(t, "CN-310000", "", cfg)
	target, _ := url.Parse(a.url)
	pass := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if raw, _ := forged.Load().([]byte); raw != nil && r.URL.Path == "/v1/trust" {
			w.Header().Set("Content-Type", "application/json")
			w.Write(raw)
			return
		}
		pass.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	urlA := srv.URL

	old, err := ecode.GenerateSM2() // A's old node key, leaked
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	keys, err := a.Keys.PublicKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, raw, err := trust.Build(trust.BuildInput{Issuer: a.id, Keys: keys, IssuedAt: time.Now().AddDate(50, 0, 0)}, old)
	if err != nil {
		t.Fatal(err)
	}
	forged.Store(raw)
	mA := member(a, urlA)
	mA.NodeKey = old.Public().JWK()
	reg.write(t, reg.anchor, mA, member(b, b.url))
	b.Fed.Refresh(ctx)
	if !trusts(b, a.id) {
		t.Fatal("B did not take the bundle signed with the key the list named")
	}

	// The region replaces A's node key; A's genuine bundle is served again.
	forged.Store([]byte(nil))
	time.Sleep(2 * time.Millisecond) // a newer list version
	reg.write(t, reg.anchor, member(a, urlA), member(b, b.url))
	b.Fed.Refresh(ctx)
	if !trusts(b, a.id) {
		t.Fatalf("B refuses A's bundles under A's new node key: %+v", b.Fed.Status().Peers)
	}
}
