package federation_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/trust"
)

// city is an in-process node of a test region.
type city struct {
	*node.Node
	id     string
	url    string
	demo   *node.DemoFile
	cancel context.CancelFunc
	done   chan error
}

func testConfig(anchor ecode.PublicKey, members string) federation.Config {
	return federation.Config{Anchor: anchor, Members: members, Refresh: 150 * time.Millisecond, OutboxEvery: 100 * time.Millisecond,
		AuthTimeout: 300 * time.Millisecond, RiskLimitFen: 500, MaxBackoff: 300 * time.Millisecond}
}

func startCity(t *testing.T, id, dsn string, cfg federation.Config) *city {
	t.Helper()
	return startCityWith(t, id, dsn, cfg, nil)
}

// startCityWith is startCity with the node's configuration changed by
// tweak (if not nil): its clock, its bundles' lifetime.
func startCityWith(t *testing.T, id, dsn string, cfg federation.Config, tweak func(*node.Config)) *city {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("YIKATONG_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	nc := node.Config{DataDir: dir, DB: dsn, City: id, Logger: log, Federation: cfg}
	if tweak != nil {
		tweak(&nc)
	}
	n, err := node.Open(context.Background(), nc)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &city{Node: n, id: id, url: "http://" + ln.Addr().String(), done: make(chan error, 1)}
	n.DemoResidents = 6
	path := filepath.Join(dir, "demo.json")
	if err := n.EnsureDemo(context.Background(), c.url, path); err != nil {
		t.Fatal(err)
	}
	if c.demo, err = node.ReadDemoFile(path); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go func() { c.done <- n.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-c.done; n.Close() })
	return c
}

func (c *city) terminal(t *testing.T, scenario string) node.DemoTerminal {
	for _, tm := range c.demo.Terminals {
		if tm.Scenario == scenario {
			return tm
		}
	}
	t.Fatalf("%s has no %s terminal", c.id, scenario)
	return node.DemoTerminal{}
}

func (c *city) code(t *testing.T, card string) string {
	t.Helper()
	code, _, err := c.IssueCode(context.Background(), card)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

type scanAnswer struct {
	Decision   string         `json:"decision"`
	Reason     string         `json:"reason"`
	ChargedFen *int64         `json:"charged_fen"`
	View       map[string]any `json:"view"`
}

func (c *city) scan(t *testing.T, scenario, key, code string, amount int64, pin string) scanAnswer {
	t.Helper()
	tm := c.terminal(t, scenario)
	body := map[string]any{"idempotency_key": key, "scenario": scenario, "code": code}
	if amount > 0 {
		body["amount_fen"] = amount
	}
	if pin != "" {
		body["pin"] = pin
	}
	var a scanAnswer
	nodetest.NewClient(c.url, tm.Token).JSON(t, "POST", "/v1/scans", body, 200, &a)
	return a
}

func (c *city) balance(t *testing.T, id string) int64 {
	t.Helper()
	b, err := c.Ledger.Balance(context.Background(), id)
	if err != nil {
		t.Fatalf("%s balance %s: %v", c.id, id, err)
	}
	return b.Balance
}

func (c *city) wallet(t *testing.T, card string) int64 {
	cd, err := c.Residents.Card(context.Background(), card)
	if err != nil {
		t.Fatal(err)
	}
	return c.balance(t, ledger.WalletID(cd.ResidentID))
}

// proxy stands between a node and its peers: normal, slow or down.
type proxy struct {
	url   string
	mode  atomic.Value // "ok", "down", "slow", "lost" (online charges applied, answers dropped)
	delay time.Duration
	mu    sync.Mutex
	seen  [][]byte // request bodies of /v1/federation/ calls
}

func newProxy(t *testing.T, target string) *proxy {
	u, _ := url.Parse(target)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorLog = log.New(io.Discard, "", 0)
	p := &proxy{delay: time.Second}
	p.mode.Store("ok")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.url = "http://" + ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p.mode.Load().(string) {
		case "down":
			hj, ok := w.(http.Hijacker)
			if ok {
				conn, _, _ := hj.Hijack()
				conn.Close()
				return
			}
			w.WriteHeader(502)
			return
		case "slow":
			if strings.HasPrefix(r.URL.Path, "/v1/federation/charge") {
				time.Sleep(p.delay)
			}
		case "lost":
			// The home city gets the online charge and applies it, but
			// its answer never arrives.
			if strings.HasPrefix(r.URL.Path, "/v1/federation/charge") {
				rp.ServeHTTP(httptest.NewRecorder(), r.WithContext(context.WithoutCancel(r.Context())))
				if hj, ok := w.(http.Hijacker); ok {
					if conn, _, err := hj.Hijack(); err == nil {
						conn.Close()
						return
					}
				}
				w.WriteHeader(502)
				return
			}
		}
		if strings.HasPrefix(r.URL.Path, "/v1/federation/") {
			b, _ := io.ReadAll(r.Body)
			p.mu.Lock()
			p.seen = append(p.seen, b)
			p.mu.Unlock()
			r.Body = io.NopCloser(strings.NewReader(string(b)))
			r.ContentLength = int64(len(b))
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return p
}

// region writes signed member lists for a test.
type region struct {
	anchor ecode.Signer
	path   string
}

func newRegion(t *testing.T) *region {
	a, err := ecode.GenerateSM2()
	if err != nil {
		t.Fatal(err)
	}
	return &region{anchor: a, path: filepath.Join(t.TempDir(), "members.json")}
}

func (r *region) write(t *testing.T, signer ecode.Signer, ms ...federation.Member) {
	t.Helper()
	b, err := federation.SignMembers(federation.MemberList{Region: "test", Members: ms}, signer)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(r.path+".tmp", b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(r.path+".tmp", r.path); err != nil {
		t.Fatal(err)
	}
}

func member(c *city, base string) federation.Member {
	return federation.Member{City: c.id, BaseURL: base, NodeKey: c.Keys.NodePublicKey().JWK()}
}

func eventually(t *testing.T, what string, d time.Duration, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if f() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

func trusts(c *city, peer string) bool {
	for _, p := range c.Fed.Status().Peers {
		if p.City == peer && p.Trusted {
			return true
		}
	}
	return false
}

// checkBooks asserts every ledger balances and the clearing accounts of
// each pair mirror each other exactly, with nothing left in the outboxes.
func checkBooks(t *testing.T, cities ...*city) {
	t.Helper()
	ctx := context.Background()
	for _, c := range cities {
		eventually(t, c.id+"'s outbox to drain", 10*time.Second, func() bool {
			n, err := c.Fed.Pending(ctx)
			return err == nil && n == 0
		})
		r, err := c.Ledger.Check(ctx)
		if err != nil || r.SumFen != 0 || !r.JournalOK || len(r.Problems) > 0 {
			t.Fatalf("%s ledger check: %+v %v", c.id, r, err)
		}
	}
	for _, a := range cities {
		for _, b := range cities {
			if a.id >= b.id {
				continue
			}
			ab, ba := a.balance(t, ledger.ClearingID(b.id)), b.balance(t, ledger.ClearingID(a.id))
			if ab != -ba {
				t.Fatalf("clearing does not mirror: %s clr:%s = %d, %s clr:%s = %d", a.id, b.id, ab, b.id, a.id, ba)
			}
		}
	}
}

func TestRegion(t *testing.T) {
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	// A mixed region: the home city on SQLite, the visited one on
	// PostgreSQL (YIKATONG_FED_SWAP=1 swaps them).
	dsnA, dsnB := "", storetest.Postgres(t)
	if os.Getenv("YIKATONG_FED_SWAP") != "" {
		dsnA, dsnB = dsnB, dsnA
	}
	a := startCity(t, "CN-330100", dsnA, cfg) // home of the resident (Hangzhou)
	b := startCity(t, "CN-310000", dsnB, cfg) // where the resident travels (Shanghai)
	px := newProxy(t, a.url)                  // B reaches A through this
	reg.write(t, reg.anchor, member(a, px.url), member(b, b.url))
	eventually(t, "both cities to trust each other", 10*time.Second, func() bool { return trusts(a, b.id) && trusts(b, a.id) })

	res := a.demo.Residents[0]
	ctx := context.Background()

	t.Run("offline verification with B's bundle", func(t *testing.T) {
		code := a.code(t, res.CardNumber)
		raw, err := b.TrustBundle(ctx)
		if err != nil {
			t.Fatal(err)
		}
		nk := b.Keys.NodePublicKey()
		bundle, err := trust.Parse(raw, &nk)
		if err != nil {
			t.Fatal(err)
		}
		cl, err := bundle.VerifyCode(code, time.Now())
		if err != nil || cl.Issuer != a.id {
			t.Fatalf("A's code at B offline: %v %+v", err, cl)
		}
		if len(bundle.Peers) != 1 || bundle.Peers[0].Issuer != a.id || bundle.Peers[0].ExpiresAt.IsZero() {
			t.Fatalf("B's bundle peers: %+v", bundle.Peers)
		}
	})

	t.Run("online charge, equal treatment, idempotency, replay", func(t *testing.T) {
		w0 := a.wallet(t, res.CardNumber)
		code := a.code(t, res.CardNumber)
		r := b.scan(t, "transit.bus", "bus-1", code, 0, "")
		if r.Decision != "accepted" || r.ChargedFen == nil || *r.ChargedFen <= 0 {
			t.Fatalf("bus at B: %+v", r)
		}
		fare := *r.ChargedFen
		if again := b.scan(t, "transit.bus", "bus-1", code, 0, ""); again.Decision != "accepted" || *again.ChargedFen != fare {
			t.Fatalf("retry: %+v", again)
		}
		if rp := b.scan(t, "transit.bus", "bus-2", code, 0, ""); rp.Decision != "declined" || rp.Reason != "replayed" {
			t.Fatalf("replay: %+v", rp)
		}
		if w := a.wallet(t, res.CardNumber); w != w0-fare {
			t.Fatalf("A's wallet %d, want %d", w, w0-fare)
		}
		if got := b.balance(t, ledger.ClearingID(a.id)); got != -fare {
			t.Fatalf("B's clr:A = %d, want %d", got, -fare)
		}
		checkBooks(t, a, b)
	})

	t.Run("privacy: no name or ID number of A's resident at B", func(t *testing.T) {
		r := b.scan(t, "library.loan", "lib-1", a.code(t, res.CardNumber), 0, "")
		if r.Decision != "accepted" {
			t.Fatalf("library at B: %+v", r)
		}
		for _, k := range []string{"name", "masked_name", "masked_id_number"} {
			if _, ok := r.View[k]; ok {
				t.Fatalf("view at B carries %s: %v", k, r.View)
			}
		}
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
		if s := dump.String(); strings.Contains(s, res.Name) || strings.Contains(s, res.IDNumber) {
			t.Fatalf("B's clearing messages hold A's resident's name or ID number")
		}
	})

	t.Run("peer down: accept under risk limit, queue, catch up exactly once", func(t *testing.T) {
		w0 := a.wallet(t, res.CardNumber)
		px.mode.Store("down")
		var fares int64
		for i := 0; i < 2; i++ {
			r := b.scan(t, "transit.bus", fmt.Sprintf("down-%d", i), a.code(t, res.CardNumber), 0, "")
			if r.Decision != "accepted" {
				t.Fatalf("bus with A down, ride %d: %+v", i, r)
			}
			fares += *r.ChargedFen
		}
		// 500 fen risk limit: a third 200 fen ride is refused.
		if r := b.scan(t, "transit.bus", "down-2", a.code(t, res.CardNumber), 0, ""); r.Decision != "declined" || r.Reason != "risk_limit" {
			t.Fatalf("third ride over the risk limit: %+v", r)
		}
		// Medical settlement is not allowed offline.
		if r := b.scan(t, "medical.outpatient", "down-med", a.code(t, res.CardNumber), 1000, res.PIN); r.Decision != "declined" || r.Reason != "home_unreachable" {
			t.Fatalf("medical with A down: %+v", r)
		}
		ps, _ := b.Fed.Positions(ctx)
		if len(ps) != 1 || ps[0].PendingMessages < 2 {
			t.Fatalf("positions while A is down: %+v", ps)
		}
		time.Sleep(400 * time.Millisecond) // a few failed deliveries
		px.mode.Store("ok")
		checkBooks(t, a, b)
		if w := a.wallet(t, res.CardNumber); w != w0-fares {
			t.Fatalf("A's wallet after catch-up %d, want %d", w, w0-fares)
		}
		rec, err := b.Fed.Reconcile(ctx, a.id, time.Time{}, time.Time{})
		if err != nil || len(rec.Discrepancies) != 0 || rec.Here == 0 {
			t.Fatalf("reconcile: %+v %v", rec, err)
		}
	})

	t.Run("slow peer: timeout, offline acceptance or decline-and-void", func(t *testing.T) {
		w0 := a.wallet(t, res.CardNumber)
		cd, _ := a.Residents.Card(ctx, res.CardNumber)
		m0 := a.balance(t, ledger.MedicalID(cd.ResidentID))
		px.mode.Store("slow")
		r := b.scan(t, "transit.bus", "slow-bus", a.code(t, res.CardNumber), 0, "")
		if r.Decision != "accepted" {
			t.Fatalf("bus with A slow: %+v", r)
		}
		m := b.scan(t, "medical.outpatient", "slow-med", a.code(t, res.CardNumber), 1000, res.PIN)
		if m.Decision != "declined" || m.Reason != "home_unreachable" {
			t.Fatalf("medical with A slow: %+v", m)
		}
		time.Sleep(1200 * time.Millisecond) // the slow requests reach A meanwhile
		px.mode.Store("ok")
		checkBooks(t, a, b)
		// The bus ride is charged once; the medical bill A applied late is reversed.
		if w := a.wallet(t, res.CardNumber); w != w0-*r.ChargedFen {
			t.Fatalf("A's wallet %d, want %d", w, w0-*r.ChargedFen)
		}
		if m := a.balance(t, ledger.MedicalID(cd.ResidentID)); m != m0 {
			t.Fatalf("A's medical account %d, want %d (the late charge is reversed)", m, m0)
		}
		var voided int
		a.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM fed_messages WHERE direction = 'in' AND state = 'voided' AND amount_fen = 1000`).Scan(&voided)
		if voided != 2 {
			t.Fatalf("A voided %d medical charges, want 2 (one never applied, one applied late and reversed)", voided)
		}
	})

	t.Run("settlement signed by both", func(t *testing.T) {
		sts, err := b.Fed.Settle(ctx, time.Now().UTC().Format("2006-01-02"))
		if err != nil || len(sts) != 1 || !sts[0].Agreed || sts[0].Peer == nil {
			t.Fatalf("settle: %+v %v", sts, err)
		}
		st := sts[0].Statement
		if !federation.VerifyStatement(st, sts[0].Peer, a.Keys.NodePublicKey()) || !federation.VerifyStatement(st, sts[0].Signature, b.Keys.NodePublicKey()) {
			t.Fatal("statement signatures do not verify")
		}
		// b = CN-330100 (A) owes a = CN-310000 (B) the net of B's clr:A.
		if want := fmt.Sprint(-b.balance(t, ledger.ClearingID(a.id))); st.A != b.id || st.BOwesA != want {
			t.Fatalf("statement %+v, want b_owes_a %s", st, want)
		}
	})

	t.Run("forged, replayed, non-member and skewed messages", func(t *testing.T) {
		px.mu.Lock()
		var captured []byte
		for _, s := range px.seen {
			if strings.Contains(string(s), `"kind":"messages"`) {
				captured = s
			}
		}
		px.mu.Unlock()
		if captured == nil {
			t.Fatal("no outbox batch captured")
		}
		w0 := a.wallet(t, res.CardNumber)
		c := nodetest.NewClient(a.url, "")
		if r := c.Do(t, "POST", "/v1/federation/messages", captured); r.Status != 200 {
			t.Fatalf("replayed batch: %d %s", r.Status, r.Body)
		}
		if w := a.wallet(t, res.CardNumber); w != w0 {
			t.Fatalf("replay moved money: %d → %d", w0, w)
		}
		forged := regexp.MustCompile(`"amount_fen":[0-9]+`).ReplaceAllString(string(captured), `"amount_fen":99999`)
		if forged == string(captured) {
			t.Fatal("nothing to forge")
		}
		if r := c.Do(t, "POST", "/v1/federation/messages", forged); r.Code() != "bad_signature" {
			t.Fatalf("forged batch: %d %s", r.Status, r.Body)
		}
		stranger, _ := ecode.GenerateSM2()
		env, _ := federation.Seal("CN-999999", a.id, federation.KindMessages, time.Now(), map[string]any{"messages": []any{}}, stranger)
		if r := c.Do(t, "POST", "/v1/federation/messages", env); r.Code() != "unknown_peer" {
			t.Fatalf("non-member: %d %s", r.Status, r.Body)
		}
		env, _ = federation.Seal(b.id, a.id, federation.KindMessages, time.Now().Add(-10*time.Minute), map[string]any{"messages": []any{}}, b.Keys.NodeSigner())
		if r := c.Do(t, "POST", "/v1/federation/messages", env); r.Code() != "clock_skew" {
			t.Fatalf("skewed: %d %s", r.Status, r.Body)
		}
		env, _ = federation.Seal(b.id, a.id, federation.KindMessages, time.Now().Add(30*time.Second), map[string]any{"messages": []any{}}, b.Keys.NodeSigner())
		if r := c.Do(t, "POST", "/v1/federation/messages", env); r.Status != 200 {
			t.Fatalf("30 s skew is within tolerance: %d %s", r.Status, r.Body)
		}
	})

	t.Run("key rotation reaches the peer", func(t *testing.T) {
		var rot struct {
			Kid string `json:"kid"`
		}
		nodetest.NewClient(a.url, a.demo.Staff["operator"].Token).JSON(t, "POST", "/v1/keys/rotate", nil, 200, &rot)
		kid := rot.Kid
		start := time.Now()
		eventually(t, "B's bundle to carry A's new key", 10*time.Second, func() bool {
			raw, _ := b.TrustBundle(ctx)
			return strings.Contains(string(raw), `"kid":"`+kid+`"`)
		})
		t.Logf("rotation reached B in %v", time.Since(start))
		if r := b.scan(t, "library.loan", "rot-1", a.code(t, res.CardNumber), 0, ""); r.Decision != "accepted" {
			t.Fatalf("code signed with the new key at B: %+v", r)
		}
	})

	t.Run("member list signed by the wrong key is refused", func(t *testing.T) {
		rogue, _ := ecode.GenerateSM2()
		reg.write(t, rogue, member(b, b.url))
		eventually(t, "B to refuse the list", 5*time.Second, func() bool { return strings.Contains(b.Fed.Status().Error, "bad_member_list") })
		if !trusts(b, a.id) {
			t.Fatal("B dropped A on a list signed by a rogue key")
		}
	})

	t.Run("a removed member stops being trusted", func(t *testing.T) {
		reg.write(t, reg.anchor, member(b, b.url))
		eventually(t, "B to drop A", 5*time.Second, func() bool {
			raw, _ := b.TrustBundle(ctx)
			return !strings.Contains(string(raw), a.id)
		})
		if r := b.scan(t, "library.loan", "gone-1", a.code(t, res.CardNumber), 0, ""); r.Decision != "declined" || r.Reason != "unknown_issuer" {
			t.Fatalf("code of a removed member: %+v", r)
		}
		env, _ := federation.Seal(a.id, b.id, federation.KindMessages, time.Now(), map[string]any{"messages": []any{}}, a.Keys.NodeSigner())
		if r := nodetest.NewClient(b.url, "").Do(t, "POST", "/v1/federation/messages", env); r.Code() != "unknown_peer" {
			t.Fatalf("message from a removed member: %d %s", r.Status, r.Body)
		}
	})
}

func TestMain(m *testing.M) {
	os.Exit(storetest.Main(m))
}
