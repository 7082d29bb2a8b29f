package web_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// fedCity is an in-process demo node of a test region, served on
// 127.0.0.1 (as in internal/federation's end-to-end test).
type fedCity struct {
	*node.Node
	id, url string
	demo    *node.DemoFile
}

func startFedCity(t *testing.T, id string, cfg federation.Config) *fedCity {
	t.Helper()
	dir := t.TempDir()
	n, err := node.Open(context.Background(), node.Config{DataDir: dir, City: id, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Federation: cfg})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		n.Close()
		t.Fatal(err)
	}
	c := &fedCity{Node: n, id: id, url: "http://" + ln.Addr().String()}
	n.DemoResidents = 3
	path := filepath.Join(dir, "demo.json")
	if err := n.EnsureDemo(context.Background(), c.url, path); err != nil {
		ln.Close()
		n.Close()
		t.Fatal(err)
	}
	if c.demo, err = node.ReadDemoFile(path); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done; n.Close() })
	return c
}

func (c *fedCity) browser(t *testing.T, role string) *browser {
	b := newBrowser(t, c.url)
	b.do("GET", "/lang?l=en&next=/", nil)
	s := c.demo.Staff[role]
	b.staffLogin(s.User, s.Password)
	return b
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if f() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// rowOf returns the table row of a peer on the clearing page.
func rowOf(t *testing.T, body, id string) string {
	t.Helper()
	i := strings.Index(body, `<tr id="`+id+`">`)
	if i < 0 {
		t.Fatalf("no row %s in %.2000s", id, body)
	}
	row := body[i:]
	if j := strings.Index(row, "</tr>"); j >= 0 {
		row = row[:j]
	}
	return row
}

// TestClearingRegion runs two federated cities: a resident of A rides a bus
// in B; B's clearing page shows what A owes, the takings, a clean
// reconciliation; A's shows what it owes B; finance settles the day and
// both cities sign; operators see but cannot settle; hr_admin is refused.
func TestClearingRegion(t *testing.T) {
	t.Parallel()
	a, b := startFedPair(t)

	// A's resident rides a bus in B.
	ctx := context.Background()
	code, _, err := a.IssueCode(ctx, a.demo.Residents[0].CardNumber)
	if err != nil {
		t.Fatal(err)
	}
	var term node.DemoTerminal
	for _, tm := range b.demo.Terminals {
		if tm.Scenario == "transit.bus" {
			term = tm
		}
	}
	var ans struct {
		Decision   string `json:"decision"`
		Reason     string `json:"reason"`
		ChargedFen int64  `json:"charged_fen"`
	}
	nodetest.NewClient(b.url, term.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "clr-bus-1", "scenario": "transit.bus", "code": code}, 200, &ans)
	if ans.Decision != "accepted" || ans.ChargedFen <= 0 {
		t.Fatalf("bus at B: %+v", ans)
	}
	fare := ans.ChargedFen
	fareYuan := yuanOf(fare)
	waitFor(t, "the outboxes to drain", func() bool {
		na, ea := a.Fed.Pending(ctx)
		nb, eb := b.Fed.Pending(ctx)
		return ea == nil && eb == nil && na == 0 && nb == 0
	})
	clr, err := b.Ledger.Balance(ctx, ledger.ClearingID(a.id))
	if err != nil || clr.Balance != -fare {
		t.Fatalf("B's clr:A = %+v %v, want %d", clr, err, -fare)
	}

	t.Run("finance at B sees what A owes, the takings and a clean reconciliation", func(t *testing.T) {
		fb := b.browser(t, "finance")
		st, body, _ := fb.do("GET", "/console/clearing", nil)
		if st != 200 {
			t.Fatalf("clearing page: %d %.500s", st, body)
		}
		row := rowOf(t, body, "peer-"+a.id)
		for _, want := range []string{`class="num owed">` + fareYuan + `<`, `class="num weowe">0.00<`, `class="num pending">0<`, `class="num takings">` + fareYuan + `<`, "Matches"} {
			if !strings.Contains(row, want) {
				t.Fatalf("row of A lacks %q: %s", want, row)
			}
		}
		if !strings.Contains(body, `id="total-diffs">0<`) || !strings.Contains(body, `id="settle-form"`) || !strings.Contains(body, `href="/console/clearing"`) {
			t.Fatalf("page: %.3000s", body)
		}
		// The chart names the peer; the CSV carries its row.
		st, svg, h := fb.do("GET", "/console/clearing/takings.svg", nil)
		if st != 200 || h.Get("Content-Type") != "image/svg+xml" || !strings.Contains(svg, "<svg") || !strings.Contains(svg, a.id) {
			t.Fatalf("chart: %d %s %.300s", st, h.Get("Content-Type"), svg)
		}
		st, csvText, h := fb.do("GET", "/console/clearing/export", nil)
		if st != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/csv") || !strings.HasPrefix(csvText, "\ufeffPeer city,") ||
			!strings.Contains(csvText, a.id+","+fareYuan+",0.00,"+yuanOf(-fare)+",0,"+fareYuan) {
			t.Fatalf("CSV: %d %s\n%s", st, h.Get("Content-Type"), csvText)
		}
	})

	t.Run("finance at A sees what it owes B", func(t *testing.T) {
		_, body, _ := a.browser(t, "finance").do("GET", "/console/clearing", nil)
		row := rowOf(t, body, "peer-"+b.id)
		if !strings.Contains(row, `class="num owed">0.00<`) || !strings.Contains(row, `class="num weowe">`+fareYuan+`<`) || !strings.Contains(row, "Matches") {
			t.Fatalf("row of B at A: %s", row)
		}
	})

	t.Run("operator sees but cannot settle; hr_admin is refused", func(t *testing.T) {
		ob := b.browser(t, "operator")
		st, body, _ := ob.do("GET", "/console/clearing", nil)
		if st != 200 || strings.Contains(body, `id="settle-form"`) || !strings.Contains(rowOf(t, body, "peer-"+a.id), fareYuan) {
			t.Fatalf("operator: %d %.2000s", st, body)
		}
		tok := csrfRe.FindStringSubmatch(body)[1]
		if st, _, _ := ob.do("POST", "/console/clearing/settle", url.Values{"csrf": {tok}}); st != http.StatusForbidden {
			t.Fatalf("operator settle: %d", st)
		}
		hb := b.browser(t, "hr_admin")
		for _, p := range []string{"/console/clearing", "/console/clearing/takings.svg", "/console/clearing/export"} {
			if st, _, _ := hb.do("GET", p, nil); st != http.StatusForbidden {
				t.Fatalf("hr_admin %s: %d", p, st)
			}
		}
		if _, home, _ := hb.do("GET", "/console/", nil); strings.Contains(home, "/console/clearing") {
			t.Fatal("hr_admin's menu offers the clearing page")
		}
	})

	t.Run("finance settles the day: both cities sign, audited", func(t *testing.T) {
		fb := b.browser(t, "finance")
		day := time.Now().UTC().Format(time.DateOnly)
		if st, _, _ := fb.do("POST", "/console/clearing/settle", url.Values{"day": {day}}); st != http.StatusForbidden {
			t.Fatalf("settle without CSRF: %d", st)
		}
		if n := len(audited(t, &nodetest.Node{Node: b.Node}, "clearing_settle", day)); n != 0 {
			t.Fatalf("%d settlements audited before any ran", n)
		}
		tok := fb.csrf("/console/clearing")
		st, body, _ := fb.do("POST", "/console/clearing/settle", url.Values{"csrf": {tok}, "day": {day}})
		if st != 200 {
			t.Fatalf("settle: %d %.1000s", st, body)
		}
		row := rowOf(t, body, "stmt-"+a.id)
		for _, want := range []string{`class="num owed">` + fareYuan + "<", `class="num weowe">0.00<`, `class="num net">` + fareYuan + "<", `class="num msgs">1<`, "signed by both cities"} {
			if !strings.Contains(row, want) {
				t.Fatalf("statement row lacks %q: %s", want, row)
			}
		}
		if n := len(audited(t, &nodetest.Node{Node: b.Node}, "clearing_settle", day)); n != 1 {
			t.Fatalf("settlement audited %d times", n)
		}
		if st, body, _ := fb.do("POST", "/console/clearing/settle", url.Values{"csrf": {tok}, "day": {"yesterday"}}); st != http.StatusUnprocessableEntity && st != http.StatusBadRequest {
			t.Fatalf("bad day: %d %.300s", st, body)
		}
	})
}

// TestClearingNoRegion: a node without a region says so plainly, and the
// role checks hold there too.
func TestClearingNoRegion(t *testing.T) {
	t.Parallel()
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 2})
	fb := newBrowser(t, tn.URL)
	fb.do("GET", "/lang?l=en&next=/", nil)
	fb.staffAs(tn, "finance")
	st, body, _ := fb.do("GET", "/console/clearing", nil)
	if st != 200 || !strings.Contains(body, `id="no-region"`) || !strings.Contains(body, "not in a region") || strings.Contains(body, `id="settle-form"`) {
		t.Fatalf("finance, no region: %d %.2000s", st, body)
	}
	if st, svg, _ := fb.do("GET", "/console/clearing/takings.svg", nil); st != 200 || !strings.Contains(svg, "not in a region") {
		t.Fatalf("chart, no region: %d %.300s", st, svg)
	}
	tok := csrfRe.FindStringSubmatch(body)[1]
	if st, body, _ := fb.do("POST", "/console/clearing/settle", url.Values{"csrf": {tok}}); st != http.StatusConflict || !strings.Contains(body, "not in a region") {
		t.Fatalf("settle, no region: %d %.500s", st, body)
	}
	if st, _, _ := fb.do("GET", "/console/clearing/export", nil); st != http.StatusConflict {
		t.Fatalf("export, no region: %d", st)
	}
	zh := newBrowser(t, tn.URL).staffAs(tn, "operator")
	if st, body, _ := zh.do("GET", "/console/clearing", nil); st != 200 || !strings.Contains(body, "本节点未加入区域") || !strings.Contains(body, "跨城清算") {
		t.Fatalf("operator (Chinese), no region: %d %.1000s", st, body)
	}
	if st, _, _ := newBrowser(t, tn.URL).staffAs(tn, "hr_admin").do("GET", "/console/clearing", nil); st != http.StatusForbidden {
		t.Fatalf("hr_admin: %d", st)
	}
}

func yuanOf(fen int64) string {
	sign := ""
	if fen < 0 {
		sign, fen = "-", -fen
	}
	return fmt.Sprintf("%s%d.%02d", sign, fen/100, fen%100)
}

// startFedPair starts two federated cities, A (CN-330100) and B
// (CN-310000), in one signed member list, and waits until each trusts
// the other.
func startFedPair(t *testing.T) (a, b *fedCity) {
	t.Helper()
	anchor, err := ecode.GenerateSM2()
	if err != nil {
		t.Fatal(err)
	}
	members := filepath.Join(t.TempDir(), "members.json")
	cfg := federation.Config{Anchor: anchor.Public(), Members: members, Refresh: 150 * time.Millisecond, OutboxEvery: 100 * time.Millisecond,
		AuthTimeout: 2 * time.Second, MaxBackoff: 300 * time.Millisecond}
	a = startFedCity(t, "CN-330100", cfg)
	b = startFedCity(t, "CN-310000", cfg)
	list, err := federation.SignMembers(federation.MemberList{Region: "test", Members: []federation.Member{
		{City: a.id, BaseURL: a.url, NodeKey: a.Keys.NodePublicKey().JWK()},
		{City: b.id, BaseURL: b.url, NodeKey: b.Keys.NodePublicKey().JWK()},
	}}, anchor)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(members, list, 0o644); err != nil {
		t.Fatal(err)
	}
	trusts := func(c *fedCity, peer string) bool {
		for _, p := range c.Fed.Status().Peers {
			if p.City == peer && p.Trusted {
				return true
			}
		}
		return false
	}
	waitFor(t, "the cities to trust each other", func() bool { return trusts(a, b.id) && trusts(b, a.id) })
	return a, b
}
