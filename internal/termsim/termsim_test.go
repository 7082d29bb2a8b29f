package termsim_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/terminal"
	"github.com/yikatong/yikatong/internal/termsim"
	"github.com/yikatong/yikatong/internal/trust"
)

func demoTerminal(t *testing.T, d *node.DemoFile, scenario string) node.DemoTerminal {
	t.Helper()
	for _, tm := range d.Terminals {
		if tm.Scenario == scenario {
			return tm
		}
	}
	t.Fatalf("no demo terminal for %s", scenario)
	return node.DemoTerminal{}
}

func issueCode(t *testing.T, n *nodetest.Node, card string) string {
	t.Helper()
	code, _, err := n.IssueCode(context.Background(), card)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func TestOnlineOfflineUpload(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 20})
	ctx := context.Background()
	bus := demoTerminal(t, n.Demo, "transit.bus")
	res := n.Demo.Residents[0]
	state := filepath.Join(t.TempDir(), "term.json")
	clock := time.Now()
	now := func() time.Time { return clock }
	cfg := termsim.Config{Node: n.URL, Token: bus.Token, ID: bus.ID, Scenario: "transit.bus", BatchKey: bus.BatchKey, StatePath: state, Now: now}

	tm, err := termsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Online: the node decides and charges.
	d, err := tm.ScanOnline(ctx, "", "", res.CardNumber, 0)
	if err != nil || d.Decision != scan.Accepted || d.Charged == nil || *d.Charged != 200 {
		t.Fatalf("online scan: %+v %v", d, err)
	}
	// Offline without a bundle: refuses (never accepts without trust).
	if d := tm.DecideOffline("", res.CardNumber, 0); d.Decision != scan.Declined || d.Reason != apperr.TrustExpired {
		t.Fatalf("no bundle: %+v", d)
	}
	if err := tm.RefreshTrust(ctx, false); err != nil {
		t.Fatal(err)
	}
	code := issueCode(t, n, res.CardNumber)
	if d := tm.DecideOffline(code, "", 0); d.Decision != scan.Accepted || d.Queued != 1 {
		t.Fatalf("offline code: %+v", d)
	}
	if d := tm.DecideOffline(code, "", 0); d.Reason != apperr.Replayed {
		t.Fatalf("same code again offline: %+v", d)
	}
	if d := tm.DecideOffline("", res.CardNumber, 0); d.Decision != scan.Accepted || d.Queued != 2 {
		t.Fatalf("offline card: %+v", d)
	}
	if d := tm.DecideOffline("YK1:NOTACODE", "", 0); d.Decision != scan.Declined || d.Reason != apperr.Malformed {
		t.Fatalf("garbage: %+v", d)
	}
	if err := tm.Save(); err != nil {
		t.Fatal(err)
	}
	// A new process with the state file keeps the queue and the pinned key.
	tm2, err := termsim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if q := tm2.State().Queue; len(q) != 2 || tm2.State().NodeKey == nil {
		t.Fatalf("state after reload: %+v", tm2.State())
	}
	// The bundle goes stale: the terminal must refuse, not accept.
	clock = clock.Add(25 * time.Hour)
	stale, _ := termsim.New(termsim.Config{Node: "http://127.0.0.1:1", Token: "x", ID: bus.ID, Scenario: "transit.bus", StatePath: state, Now: now})
	if err := stale.RefreshTrust(ctx, false); err != nil {
		t.Fatalf("unreachable node with a held bundle should carry on offline: %v", err)
	}
	if d := stale.DecideOffline("", res.CardNumber, 0); d.Decision != scan.Declined || d.Reason != apperr.TrustExpired {
		t.Fatalf("stale bundle accepted: %+v", d)
	}
	clock = clock.Add(-25 * time.Hour)
	// Upload: both records applied, queue drained; re-sending is a no-op.
	rep, err := tm2.Upload(ctx)
	if err != nil || rep.Applied != 2 || rep.Records != 2 || len(tm2.State().Queue) != 0 {
		t.Fatalf("upload: %+v %v", rep, err)
	}
	if rep.ChargedFen != 400 {
		t.Fatalf("charged %d, want 400", rep.ChargedFen)
	}
	// The node saw the code used offline: online use is replayed.
	if d, err := tm2.ScanOnline(ctx, "", code, "", 0); err != nil || d.Reason != apperr.Replayed {
		t.Fatalf("code used offline, then online: %+v %v", d, err)
	}
}

func TestPinnedKeyRefusesOtherBundles(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	bus := demoTerminal(t, n.Demo, "transit.bus")
	other, _ := ecode.GenerateSM2()
	pk := other.Public()
	tm, err := termsim.New(termsim.Config{Node: n.URL, Token: bus.Token, ID: bus.ID, Scenario: "transit.bus", NodeKey: &pk,
		StatePath: filepath.Join(t.TempDir(), "s.json")})
	if err != nil {
		t.Fatal(err)
	}
	if err := tm.RefreshTrust(context.Background(), true); apperr.CodeOf(err) != apperr.BadTrustBundle {
		t.Fatalf("bundle under another key: %v", err)
	}
	if d := tm.DecideOffline("", n.Demo.Residents[0].CardNumber, 0); d.Decision != scan.Declined {
		t.Fatalf("accepted without a trusted bundle: %+v", d)
	}
}

// A terminal keeps the newest bundle it holds: an older one, validly
// signed (a replay by whoever answers the fetch), is refused, so a card
// lost since cannot come back into use offline.
func TestOlderBundleIsRefused(t *testing.T) {
	node, _ := ecode.GenerateSM2()
	issuer, _ := ecode.GenerateSM2()
	card := "4101999999999991"
	now := time.Now().UTC().Truncate(time.Second)
	build := func(at time.Time, deny []trust.Revocation) []byte {
		_, raw, err := trust.Build(trust.BuildInput{Issuer: "CN-410100", Keys: []ecode.PublicKey{issuer.Public()}, Deny: deny, IssuedAt: at, TTL: 24 * time.Hour}, node)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	old := build(now.Add(-2*time.Hour), nil)
	fresh := build(now.Add(-time.Minute), []trust.Revocation{{CardHash: trust.CardHash(card), At: now.Add(-time.Hour)}})
	var serve atomic.Pointer[[]byte]
	serve.Store(&fresh)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(*serve.Load())
	}))
	defer srv.Close()
	pk := node.Public()
	tm, err := termsim.New(termsim.Config{Node: srv.URL, Token: "t", ID: "trm_x", Scenario: "transit.bus", NodeKey: &pk,
		StatePath: filepath.Join(t.TempDir(), "s.json")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := tm.RefreshTrust(ctx, true); err != nil {
		t.Fatal(err)
	}
	if d := tm.DecideOffline("", card, 0); d.Decision != scan.Declined {
		t.Fatalf("a lost card with the fresh bundle: %+v", d)
	}
	serve.Store(&old)
	if err := tm.RefreshTrust(ctx, true); apperr.CodeOf(err) != apperr.BadTrustBundle {
		t.Fatalf("an older bundle: %v", err)
	}
	if d := tm.DecideOffline("", card, 0); d.Decision != scan.Declined {
		t.Fatalf("the lost card after the replay: %+v", d)
	}
}

// A validator is replaced: the operator reissues its credentials, and the
// new device, started with the offline_seq they came with, numbers its
// records after the old device's. Its batch is applied; the same new
// device numbering from 1 is rejected out_of_order (its records are
// dated well after the old device's last).
func TestReplacementDeviceContinuesNumbering(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	ctx := context.Background()
	bus := demoTerminal(t, n.Demo, "transit.bus")
	card := n.Demo.Residents[0].CardNumber
	dir := t.TempDir()
	uploadEarlier(t, n, bus, card, 3)

	var re node.ReissuedTerminal
	n.Client(n.Demo.Staff["operator"].Token).JSON(t, "POST", "/v1/terminals/"+bus.ID+"/credentials", nil, 200, &re)
	if re.OfflineSeq != 3 {
		t.Fatalf("offline_seq %d, want 3", re.OfflineSeq)
	}
	device := func(name string, after int64) *termsim.Terminal {
		c := termsim.Config{Node: n.URL, Token: re.Credentials.Token, ID: bus.ID, Scenario: "transit.bus", BatchKey: re.Credentials.BatchKey,
			StatePath: filepath.Join(dir, name), AfterSeq: after}
		tm, err := termsim.New(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := tm.RefreshTrust(ctx, false); err != nil {
			t.Fatal(err)
		}
		if d := tm.DecideOffline("", card, 0); d.Decision != scan.Accepted {
			t.Fatalf("%s offline: %+v", name, d)
		}
		return tm
	}
	// Numbered from 1 again, a record dated after the old device's last
	// is rejected: the numbering must go on.
	key, err := terminal.ParseBatchKey(re.Credentials.BatchKey)
	if err != nil {
		t.Fatal(err)
	}
	one := terminal.Record{ID: "again-1", Seq: 1, At: time.Now().UTC(), Scenario: "transit.bus", CardNumber: card}
	if rep, err := termsim.UploadRecords(ctx, http.DefaultClient, n.URL, re.Credentials.Token, bus.ID, key, []terminal.Record{one}, time.Now()); err != nil || rep.Applied != 0 || rep.Items[0].Reason != apperr.OutOfOrder {
		t.Fatalf("a new device numbering from 1: %+v %v (want rejected out_of_order)", rep, err)
	}
	fresh := device("new.json", re.OfflineSeq)
	if s := fresh.State().Seq; s != re.OfflineSeq+1 {
		t.Fatalf("replacement's first record numbered %d, want %d", s, re.OfflineSeq+1)
	}
	if rep, err := fresh.Upload(ctx); err != nil || rep.Applied != 1 {
		t.Fatalf("replacement upload: %+v %v", rep, err)
	}
	// Restarted with the same flag, a device already numbered beyond it
	// keeps its numbering.
	if err := fresh.Save(); err != nil {
		t.Fatal(err)
	}
	again, err := termsim.New(termsim.Config{Node: n.URL, Token: re.Credentials.Token, ID: bus.ID, BatchKey: re.Credentials.BatchKey,
		StatePath: filepath.Join(dir, "new.json"), AfterSeq: re.OfflineSeq})
	if err != nil || again.State().Seq != re.OfflineSeq+1 {
		t.Fatalf("restart: seq %d, %v", again.State().Seq, err)
	}
	// Without --after-seq, a new state file asks the node for the mark.
	asked := device("asked.json", 0)
	if s := asked.State().Seq; s != re.OfflineSeq+2 {
		t.Fatalf("a device that asked the node numbered %d, want %d", s, re.OfflineSeq+2)
	}
	if rep, err := asked.Upload(ctx); err != nil || rep.Applied != 1 {
		t.Fatalf("upload of the device that asked: %+v %v", rep, err)
	}
}

// A validator's storage is wiped (its credentials kept): with a new state
// file it asks the node for its offline mark at its first refresh and
// numbers its records after it, so they are applied, not rejected
// out_of_order.
func TestWipedDeviceResumesNumbering(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	ctx := context.Background()
	bus := demoTerminal(t, n.Demo, "transit.bus")
	card := n.Demo.Residents[0].CardNumber
	recs := uploadEarlier(t, n, bus, card, 5)
	tm, err := termsim.New(termsim.Config{Node: n.URL, Token: bus.Token, ID: bus.ID, Scenario: "transit.bus", BatchKey: bus.BatchKey,
		StatePath: filepath.Join(t.TempDir(), "wiped.json")})
	if err != nil {
		t.Fatal(err)
	}
	if err := tm.RefreshTrust(ctx, false); err != nil {
		t.Fatal(err)
	}
	if st := tm.State(); st.Seq != 5 || !st.LastAt.Equal(recs[4].At.Truncate(time.Millisecond)) {
		t.Fatalf("after the first refresh: seq %d, last %v (want 5, %v)", st.Seq, st.LastAt, recs[4].At)
	}
	if d := tm.DecideOffline("", card, 0); d.Decision != scan.Accepted {
		t.Fatalf("offline after the wipe: %+v", d)
	}
	if rep, err := tm.Upload(ctx); err != nil || rep.Applied != 1 {
		t.Fatalf("upload after the wipe: %+v %v", rep, err)
	}
}

// uploadEarlier uploads count offline records of card from terminal bus,
// numbered 1 to count and dated twenty minutes ago a second apart (a
// device's last records before it was replaced or wiped), and returns them.
func uploadEarlier(t *testing.T, n *nodetest.Node, bus node.DemoTerminal, card string, count int64) []terminal.Record {
	t.Helper()
	key, err := terminal.ParseBatchKey(bus.BatchKey)
	if err != nil {
		t.Fatal(err)
	}
	then := time.Now().Add(-20 * time.Minute).UTC()
	var recs []terminal.Record
	for i := range count {
		recs = append(recs, terminal.Record{ID: fmt.Sprintf("earlier-%d", i+1), Seq: i + 1, At: then.Add(time.Duration(i) * time.Second), Scenario: "transit.bus", CardNumber: card})
	}
	if rep, err := termsim.UploadRecords(context.Background(), http.DefaultClient, n.URL, bus.Token, bus.ID, key, recs, then); err != nil || rep.Applied != int(count) {
		t.Fatalf("the device's earlier records: %+v %v", rep, err)
	}
	return recs
}
