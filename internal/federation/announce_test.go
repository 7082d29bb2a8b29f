package federation_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestBundleAnnounced: with polling an hour apart, a key rotation and a
// lost card at A still reach B within seconds, because A announces its
// changed bundle and B fetches it at once. A card change that leaves A's
// keys and deny list as they were sends no notice. A notice that does not
// verify is refused and fetches nothing.
func TestBundleAnnounced(t *testing.T) {
	// B reaches A through a front that counts the fetches of A's bundle.
	var fetches atomic.Int64
	a, b := pollingHourly(t, func(pass http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v1/trust" {
				fetches.Add(1)
			}
			pass.ServeHTTP(w, r)
		})
	})
	ctx := context.Background()
	if !trusts(b, a.id) || !trusts(a, b.id) {
		t.Fatal("the cities do not trust each other after a refresh")
	}
	peerOfA := func() string {
		kids, deny := heldBy(b, a.id)
		return "keys " + strings.Join(kids, ",") + " deny " + strings.Join(deny, ",")
	}

	var rot struct {
		Kid string `json:"kid"`
	}
	start := time.Now()
	nodetest.NewClient(a.url, a.demo.Staff["operator"].Token).JSON(t, "POST", "/v1/keys/rotate", nil, 200, &rot)
	eventually(t, "B to hold A's new key", 5*time.Second, func() bool { return strings.Contains(peerOfA(), rot.Kid) })
	t.Logf("rotation reached B in %v (polling: hourly)", time.Since(start).Round(time.Millisecond))
	if r := b.scan(t, "library.loan", "ann-1", a.code(t, a.demo.Residents[0].CardNumber), 0, ""); r.Decision != "accepted" {
		t.Fatalf("code signed with the new key at B: %+v", r)
	}

	res := a.demo.Residents[2]
	cd, err := a.Residents.Card(ctx, res.CardNumber)
	if err != nil {
		t.Fatal(err)
	}
	// Unlocking a card's PIN changes neither keys nor deny list: no notice.
	time.Sleep(200 * time.Millisecond) // let the rotation's fetch finish
	before := fetches.Load()
	nodetest.NewClient(a.url, a.demo.Staff["hr_admin"].Token).JSON(t, "POST", "/v1/cards/"+res.CardNumber+"/unlock", nil, 200, nil)
	time.Sleep(500 * time.Millisecond)
	if n := fetches.Load() - before; n != 0 {
		t.Fatalf("B fetched A's bundle %d times after a change peers do not see", n)
	}
	start = time.Now()
	nodetest.NewClient(a.url, a.demo.Staff["hr_admin"].Token).JSON(t, "POST", "/v1/cards/"+res.CardNumber+"/lost", nil, 200, nil)
	eventually(t, "B to hold A's deny list with the lost card", 5*time.Second, func() bool { return strings.Contains(peerOfA(), cd.Token) })
	t.Logf("lost card reached B's copy of A's deny list in %v", time.Since(start).Round(time.Millisecond))

	// Notices that do not verify: refused with their error code.
	rogue, _ := ecode.GenerateSM2()
	bad, _ := federation.Seal(a.id, b.id, federation.KindBundle, time.Now(), map[string]any{"changed_at": time.Now()}, rogue)
	if r := nodetest.NewClient(b.url, "").Do(t, "POST", "/v1/federation/bundle", bad); r.Code() != "bad_signature" {
		t.Fatalf("forged notice: %d %s", r.Status, r.Body)
	}
	stranger, _ := federation.Seal("CN-999999", b.id, federation.KindBundle, time.Now(), map[string]any{"changed_at": time.Now()}, a.Keys.NodeSigner())
	if r := nodetest.NewClient(b.url, "").Do(t, "POST", "/v1/federation/bundle", stranger); r.Code() != "unknown_peer" {
		t.Fatalf("notice from a non-member: %d %s", r.Status, r.Body)
	}
	extra, _ := federation.Seal(a.id, b.id, federation.KindBundle, time.Now(), map[string]any{"changed_at": time.Now(), "keys": "mine"}, a.Keys.NodeSigner())
	if r := nodetest.NewClient(b.url, "").Do(t, "POST", "/v1/federation/bundle", extra); r.Code() != "validation_failed" {
		t.Fatalf("notice with unknown fields: %d %s", r.Status, r.Body)
	}
	// A genuine notice repeated many times at once: answered, and B still
	// holds A's bundle as it is.
	good, _ := federation.Seal(a.id, b.id, federation.KindBundle, time.Now(), map[string]any{"changed_at": time.Now()}, a.Keys.NodeSigner())
	held := peerOfA()
	for i := 0; i < 20; i++ {
		if r := nodetest.NewClient(b.url, "").Do(t, "POST", "/v1/federation/bundle", good); r.Status != 200 {
			t.Fatalf("notice %d: %d %s", i, r.Status, r.Body)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if after := peerOfA(); after != held || !trusts(b, a.id) {
		t.Fatalf("after repeated notices B holds %q, before %q", after, held)
	}
}

// TestOlderBundleNotTaken: a bundle older than the one a node holds (an
// old bundle replayed on the way) does not replace it.
func TestOlderBundleNotTaken(t *testing.T) {
	var old atomic.Value // []byte: served as A's bundle when set
	a, b := pollingHourly(t, func(pass http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if raw, _ := old.Load().([]byte); raw != nil && r.URL.Path == "/v1/trust" {
				w.Header().Set("Content-Type", "application/json")
				w.Write(raw)
				return
			}
			pass.ServeHTTP(w, r)
		})
	})
	ctx := context.Background()
	resp, err := http.Get(a.url + "/v1/trust")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// Bundles carry their issue time in whole seconds: rotate in the next.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))

	var rot struct {
		Kid string `json:"kid"`
	}
	nodetest.NewClient(a.url, a.demo.Staff["operator"].Token).JSON(t, "POST", "/v1/keys/rotate", nil, 200, &rot)
	holds := func() bool {
		kids, _ := heldBy(b, a.id)
		return slices.Contains(kids, rot.Kid)
	}
	eventually(t, "B to hold A's new key", 5*time.Second, holds)
	old.Store(before)
	b.Fed.FetchBundles(ctx)
	if !holds() || !trusts(b, a.id) {
		t.Fatal("an older bundle of A replaced the newer one at B")
	}
}

// TestNoticesCoalesced: a burst of deny-list changes at A (a card lost and
// recovered again and again, then another card lost) reaches B in its
// final state, with fewer fetches than changes: the notices that arrive
// while B's fetch of A's bundle is on its way cause one more fetch after
// it, so the last change is not lost (the test fails if they are dropped).
func TestNoticesCoalesced(t *testing.T) {
	var fetches atomic.Int64
	a, b := pollingHourly(t, func(pass http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/trust" {
				pass.ServeHTTP(w, r)
				return
			}
			// A's answer reaches B only after a while: changes made
			// meanwhile are not in it, and pile up behind the fetch.
			fetches.Add(1)
			rec := httptest.NewRecorder()
			pass.ServeHTTP(rec, r)
			time.Sleep(100 * time.Millisecond)
			for k, v := range rec.Header() {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.Code)
			w.Write(rec.Body.Bytes())
		})
	})
	ctx := context.Background()
	x, y := a.demo.Residents[3], a.demo.Residents[4]
	tokenOf := func(number string) string {
		cd, err := a.Residents.Card(ctx, number)
		if err != nil {
			t.Fatal(err)
		}
		return cd.Token
	}
	xt, yt := tokenOf(x.CardNumber), tokenOf(y.CardNumber)
	denied := func(token string) bool {
		_, deny := heldBy(b, a.id)
		return slices.Contains(deny, token)
	}
	hr := nodetest.NewClient(a.url, a.demo.Staff["hr_admin"].Token)
	const changes = 13
	before := fetches.Load()
	// X lost and recovered in turn, then Y lost at once, while the
	// rounds X started are still in flight: Y's notice must not be lost.
	for i := 0; i < changes-1; i++ {
		op := "lost"
		if i%2 == 1 {
			op = "recover"
		}
		hr.JSON(t, "POST", "/v1/cards/"+x.CardNumber+"/"+op, nil, 200, nil)
	}
	hr.JSON(t, "POST", "/v1/cards/"+y.CardNumber+"/lost", nil, 200, nil)
	eventually(t, "B to deny Y, lost last", 5*time.Second, func() bool { return denied(yt) })
	if denied(xt) {
		t.Fatal("B denies X, recovered before Y was lost")
	}
	time.Sleep(300 * time.Millisecond)
	n := fetches.Load() - before
	t.Logf("%d deny-list changes at A, %d fetches by B", changes, n)
	if n == 0 || n >= changes {
		t.Fatalf("%d fetches for %d changes: the notices were not coalesced", n, changes)
	}
}

// pollingHourly starts two cities, A and B, whose polls of each other are
// an hour apart, lets each take in the other once, and returns them. B
// reaches A through front(pass) when front is not nil (pass: a reverse
// proxy to A).
func pollingHourly(t *testing.T, front func(pass http.Handler) http.Handler) (a, b *city) {
	t.Helper()
	return pollingHourlyWith(t, front, nil)
}

// pollingHourlyWith is pollingHourly with the cities' configuration
// changed by tweak (if not nil).
func pollingHourlyWith(t *testing.T, front func(pass http.Handler) http.Handler, tweak func(*federation.Config)) (a, b *city) {
	t.Helper()
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	cfg.Refresh = time.Hour
	if tweak != nil {
		tweak(&cfg)
	}
	a = startCity(t, "CN-330100", "", cfg)
	b = startCity(t, "CN-310000", "", cfg)
	urlA := a.url
	if front != nil {
		target, _ := url.Parse(a.url)
		srv := httptest.NewServer(front(httputil.NewSingleHostReverseProxy(target)))
		t.Cleanup(srv.Close)
		urlA = srv.URL
	}
	reg.write(t, reg.anchor, member(a, urlA), member(b, b.url))
	ctx := context.Background()
	a.Fed.Refresh(ctx)
	b.Fed.Refresh(ctx)
	return a, b
}

// heldBy lists the issuer key ids and denied subjects that c holds for
// peer.
func heldBy(c *city, peer string) (kids, deny []string) {
	for _, p := range c.Fed.PeerBundles() {
		if p.Issuer != peer {
			continue
		}
		for _, k := range p.Keys {
			kids = append(kids, k.KidString())
		}
		for _, d := range p.Deny {
			deny = append(deny, d.Subject)
		}
	}
	return kids, deny
}
