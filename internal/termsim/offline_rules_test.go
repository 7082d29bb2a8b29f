package termsim_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/terminal"
	"github.com/yikatong/yikatong/internal/termsim"
	"github.com/yikatong/yikatong/internal/trust"
)

// reviewBundles is a node key, an issuer key and a fake node serving
// whichever bundle is stored in serve.
type reviewBundles struct {
	node   ecode.Signer
	issuer ecode.Signer
	serve  atomic.Pointer[[]byte]
	srv    *httptest.Server
}

func newReviewBundles(t *testing.T) *reviewBundles {
	t.Helper()
	rb := &reviewBundles{}
	var err error
	if rb.node, err = ecode.GenerateSM2(); err != nil {
		t.Fatal(err)
	}
	if rb.issuer, err = ecode.GenerateSM2(); err != nil {
		t.Fatal(err)
	}
	rb.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := rb.serve.Load()
		if b == nil {
			http.Error(w, "no bundle", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(*b)
	}))
	t.Cleanup(rb.srv.Close)
	return rb
}

func (rb *reviewBundles) build(t *testing.T, at time.Time, deny []trust.Revocation) []byte {
	t.Helper()
	_, raw, err := trust.Build(trust.BuildInput{Issuer: "CN-410100", Keys: []ecode.PublicKey{rb.issuer.Public()}, Deny: deny, IssuedAt: at, TTL: 24 * time.Hour}, rb.node)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func (rb *reviewBundles) terminal(t *testing.T, state string, now func() time.Time) *termsim.Terminal {
	t.Helper()
	pk := rb.node.Public()
	tm, err := termsim.New(termsim.Config{Node: rb.srv.URL, Token: "t", ID: "trm_x", Scenario: "transit.bus", NodeKey: &pk,
		StatePath: state, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return tm
}

// A terminal whose clock is behind the bundle's issue time (clock reset,
// dead RTC battery) holds a bundle that is not yet valid for it: the deny
// list as of its clock would not include cards lost since, so it must
// refuse rather than accept.
func TestNotYetValidBundleRefused(t *testing.T) {
	rb := newReviewBundles(t)
	real := time.Now().UTC().Truncate(time.Second)
	card := "4101999999999991"
	// The card was lost 10 minutes ago; the bundle says so.
	raw := rb.build(t, real, []trust.Revocation{{CardHash: trust.CardHash(card), At: real.Add(-10 * time.Minute)}})
	rb.serve.Store(&raw)
	// The terminal's clock is a day behind.
	clock := real.Add(-24 * time.Hour)
	tm := rb.terminal(t, filepath.Join(t.TempDir(), "s.json"), func() time.Time { return clock })
	if err := tm.RefreshTrust(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if d := tm.DecideOffline("", card, 0); d.Decision != scan.Declined {
		t.Fatalf("a lost card accepted by a terminal whose clock is before the bundle: %+v", d)
	}
	if d := tm.DecideOffline("", "4101999999999983", 0); d.Decision != scan.Declined || d.Reason != apperr.NotYetValid {
		t.Fatalf("a bundle not yet valid for the terminal's clock: %+v", d)
	}
	if n := len(tm.State().Queue); n != 0 {
		t.Fatalf("%d records queued on a not-yet-valid bundle", n)
	}
	// A few seconds of skew is tolerated.
	clock = real.Add(-2 * time.Second)
	if d := tm.DecideOffline("", "4101999999999983", 0); d.Decision != scan.Accepted {
		t.Fatalf("small skew refused: %+v", d)
	}
}

// The newest-bundle rule must survive a restart: `yikatong terminal` is a
// new process for every scan, so a replayed older bundle must be refused
// by a terminal that loaded the newer one from its state file.
func TestOlderBundleRefusedAfterRestart(t *testing.T) {
	rb := newReviewBundles(t)
	now := time.Now().UTC().Truncate(time.Second)
	card := "4101999999999991"
	old := rb.build(t, now.Add(-2*time.Hour), nil)
	fresh := rb.build(t, now.Add(-time.Minute), []trust.Revocation{{CardHash: trust.CardHash(card), At: now.Add(-time.Hour)}})
	state := filepath.Join(t.TempDir(), "s.json")
	clock := func() time.Time { return now }
	rb.serve.Store(&fresh)
	tm := rb.terminal(t, state, clock)
	ctx := context.Background()
	if err := tm.RefreshTrust(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := tm.Save(); err != nil {
		t.Fatal(err)
	}
	// Restart; the node (or a man in the middle) now answers the old bundle.
	rb.serve.Store(&old)
	tm2 := rb.terminal(t, state, clock)
	if err := tm2.RefreshTrust(ctx, true); apperr.CodeOf(err) != apperr.BadTrustBundle {
		t.Fatalf("older bundle after a restart: %v", err)
	}
	if d := tm2.DecideOffline("", card, 0); d.Decision != scan.Declined {
		t.Fatalf("the lost card came back after a replayed bundle: %+v", d)
	}
}

// A terminal offline for long can queue more records than one batch may
// hold (terminal.MaxBatchRecords): Upload must still drain its queue,
// in batches the node accepts, instead of failing for ever.
func TestUploadLargeQueueInBatches(t *testing.T) {
	seed := make([]byte, ed25519.SeedSize)
	rand.Read(seed)
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	var batches atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var sb terminal.SignedBatch
		if err := json.NewDecoder(r.Body).Decode(&sb); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		b, _, err := terminal.OpenBatch(sb, pub)
		if err != nil {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(http.StatusUnprocessableEntity)
			json.NewEncoder(w).Encode(map[string]any{"status": 422, "code": apperr.CodeOf(err), "detail": err.Error()})
			return
		}
		batches.Add(1)
		rep := scan.BatchReport{BatchID: b.ID, Terminal: b.Terminal, Records: len(b.Records)}
		for _, rec := range b.Records {
			rep.Items = append(rep.Items, scan.RecordReport{ID: rec.ID, Status: scan.StatusApplied, Decision: scan.Accepted, ChargedFen: 200})
			rep.Applied++
			rep.ChargedFen += 200
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rep)
	}))
	defer srv.Close()
	now := time.Now().UTC().Truncate(time.Second)
	n := terminal.MaxBatchRecords + 1
	st := termsim.State{Terminal: "trm_x", Seq: int64(n), Queue: make([]terminal.Record, n)}
	for i := range st.Queue {
		st.Queue[i] = terminal.Record{ID: fmt.Sprintf("%d-abcdef01", i+1), Seq: int64(i + 1), At: now.Add(time.Duration(i-n) * time.Millisecond),
			Scenario: "transit.bus", CardNumber: "4101999999999983"}
	}
	state := filepath.Join(t.TempDir(), "s.json")
	b, _ := json.Marshal(st)
	if err := os.WriteFile(state, b, 0o600); err != nil {
		t.Fatal(err)
	}
	tm, err := termsim.New(termsim.Config{Node: srv.URL, Token: "t", ID: "trm_x", Scenario: "transit.bus",
		BatchKey: base64.RawURLEncoding.EncodeToString(seed), StatePath: state})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := tm.Upload(context.Background())
	if err != nil {
		t.Fatalf("uploading %d records: %v", n, err)
	}
	if rep.Applied != n || rep.Records != n || len(rep.Items) != n || rep.ChargedFen != int64(200*n) {
		t.Fatalf("report: applied %d records %d items %d charged %d", rep.Applied, rep.Records, len(rep.Items), rep.ChargedFen)
	}
	if q := len(tm.State().Queue); q != 0 {
		t.Fatalf("%d records left in the queue", q)
	}
	if batches.Load() < 2 {
		t.Fatalf("%d batches", batches.Load())
	}
}

// A terminal whose clock jumped back by more than scan.OfflineClockBack
// since its last record makes records the node rejects (clock_back) and
// never charges: it must refuse offline rather than let the ride through
// (also after a restart and after the queue was uploaded).
func TestClockBackRefusedOffline(t *testing.T) {
	rb := newReviewBundles(t)
	real := time.Now().UTC().Truncate(time.Second)
	raw := rb.build(t, real.Add(-time.Hour), nil)
	rb.serve.Store(&raw)
	clock := real
	state := filepath.Join(t.TempDir(), "s.json")
	tm := rb.terminal(t, state, func() time.Time { return clock })
	if err := tm.RefreshTrust(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	card := "4101999999999983"
	if d := tm.DecideOffline("", card, 0); d.Decision != scan.Accepted {
		t.Fatalf("first tap: %+v", d)
	}
	// The queue is uploaded (here: dropped as if reported) and the
	// terminal restarts.
	st := tm.State()
	st.Queue = nil
	b, _ := json.Marshal(st)
	if err := os.WriteFile(state, b, 0o600); err != nil {
		t.Fatal(err)
	}
	tm = rb.terminal(t, state, func() time.Time { return clock })
	// A time sync sets the clock back 10 minutes.
	clock = real.Add(-10 * time.Minute)
	if d := tm.DecideOffline("", card, 0); d.Decision != scan.Declined || d.Reason != apperr.ClockBack {
		t.Fatalf("clock set back 10 minutes: %+v", d)
	}
	// Back within the tolerance: fine again.
	clock = real.Add(-time.Minute)
	if d := tm.DecideOffline("", card, 0); d.Decision != scan.Accepted {
		t.Fatalf("clock set back a minute: %+v", d)
	}
}
