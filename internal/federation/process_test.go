package federation_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	yscan "github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/terminal"
)

// proc is a `yikatong serve` child process on a fixed address, so that it
// can be killed and restarted where the member list says it is.
type proc struct {
	t    *testing.T
	args []string
	url  string
	cmd  *exec.Cmd
	log  *bytes.Buffer
	mu   sync.Mutex
}

func startProc(t *testing.T, bin string, args ...string) *proc {
	p := &proc{t: t, args: args}
	for i, a := range args {
		if a == "--addr" {
			p.url = "http://" + args[i+1]
		}
	}
	p.start()
	t.Cleanup(p.kill)
	return p
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(nodetest.Binary(p.t), p.args...)
	p.log = &bytes.Buffer{}
	p.cmd.Stderr = p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if r, err := http.Get(p.url + "/healthz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.kill()
	p.t.Fatalf("node did not start: %s", p.log)
}

func (p *proc) kill() {
	if p.cmd != nil && p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

func (p *proc) terminate() {
	p.cmd.Process.Signal(os.Interrupt)
	p.cmd.Wait()
}

// TestProcessesPeerDownAndBack runs two real node processes: the home
// city is killed (SIGKILL) while its residents ride in the other city,
// restarted later, and the queued charges are applied exactly once.
func TestProcessesPeerDownAndBack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	anchor, _ := ecode.GenerateSM2()
	jwk, _ := json.Marshal(anchor.Public().JWK())
	anchorPath := filepath.Join(dir, "anchor.jwk")
	os.WriteFile(anchorPath, jwk, 0o644)
	membersPath := filepath.Join(dir, "members.json")
	region := []string{"--region-anchor", anchorPath, "--region-members", membersPath, "--region-refresh", "200ms",
		"--region-outbox", "100ms", "--region-auth-timeout", "300ms", "--region-max-backoff", "300ms", "--region-risk-limit", "1000"}
	nodetest.Binary(t)
	addrA, addrB := nodetest.FreeAddr(t), nodetest.FreeAddr(t)
	var a, b *proc
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a = startProc(t, "", append([]string{"serve", "--demo", "--city", "CN-330100", "--addr", addrA, "--data", filepath.Join(dir, "a"), "--log-level", "warn"}, region...)...)
	}()
	go func() {
		defer wg.Done()
		b = startProc(t, "", append([]string{"serve", "--demo", "--city", "CN-310000", "--addr", addrB, "--data", filepath.Join(dir, "b"), "--log-level", "warn"}, region...)...)
	}()
	wg.Wait()
	if a == nil || b == nil {
		t.FailNow()
	}
	demoA, err := node.ReadDemoFile(filepath.Join(dir, "a", "demo.json"))
	if err != nil {
		t.Fatal(err)
	}
	demoB, _ := node.ReadDemoFile(filepath.Join(dir, "b", "demo.json"))
	var members []federation.Member
	for _, p := range []struct{ city, url string }{{"CN-330100", a.url}, {"CN-310000", b.url}} {
		var k ecode.JWK
		nodetest.NewClient(p.url, "").JSON(t, "GET", "/v1/trust/node-key", nil, 200, &k)
		members = append(members, federation.Member{City: p.city, BaseURL: p.url, NodeKey: k})
	}
	signed, err := federation.SignMembers(federation.MemberList{Region: "test", Members: members}, anchor)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(membersPath, signed, 0o644)
	trusted := func(url, peer string) bool {
		var st federation.Status
		nodetest.NewClient(url, "").JSON(t, "GET", "/v1/federation/status", nil, 200, &st)
		for _, p := range st.Peers {
			if p.City == peer && p.Trusted {
				return true
			}
		}
		return false
	}
	eventually(t, "the processes to trust each other", 15*time.Second, func() bool { return trusted(a.url, "CN-310000") && trusted(b.url, "CN-330100") })

	res := demoA.Residents[0]
	var tok struct {
		Token string `json:"token"`
	}
	nodetest.NewClient(a.url, "").JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": res.CardNumber, "pin": res.PIN}, 200, &tok)
	codes := func(n int) []string {
		var out []string
		for i := 0; i < n; i++ {
			var c struct {
				Code string `json:"code"`
			}
			nodetest.NewClient(a.url, tok.Token).JSON(t, "POST", "/v1/ecodes", nil, 200, &c)
			out = append(out, c.Code)
		}
		return out
	}
	var bus node.DemoTerminal
	for _, tm := range demoB.Terminals {
		if tm.Scenario == "transit.bus" {
			bus = tm
		}
	}
	scan := func(key, code string) scanAnswer {
		var r scanAnswer
		nodetest.NewClient(b.url, bus.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": key, "scenario": "transit.bus", "code": code}, 200, &r)
		return r
	}
	wallet := func() int64 {
		var me struct {
			Wallet struct {
				BalanceFen int64 `json:"balance_fen"`
			} `json:"wallet"`
		}
		nodetest.NewClient(a.url, tok.Token).JSON(t, "GET", "/v1/me", nil, 200, &me)
		return me.Wallet.BalanceFen
	}
	w0 := wallet()
	var total int64
	if r := scan("p-0", codes(1)[0]); r.Decision != "accepted" {
		t.Fatalf("online ride: %+v", r)
	} else {
		total += *r.ChargedFen
	}
	pending := codes(4) // codes issued before the home city goes down
	a.kill()
	for i, c := range pending[:3] {
		r := scan("p-down-"+string(rune('a'+i)), c)
		if r.Decision != "accepted" {
			t.Fatalf("ride %d with the home city down: %+v", i, r)
		}
		total += *r.ChargedFen
	}
	finance := func(url, tokn string) (int64, int64, int64) {
		var ps struct {
			Positions []federation.Position `json:"positions"`
		}
		nodetest.NewClient(url, tokn).JSON(t, "GET", "/v1/clearing/positions", nil, 200, &ps)
		if len(ps.Positions) != 1 {
			t.Fatalf("positions %+v", ps)
		}
		var chk struct {
			SumFen    int64 `json:"sum_fen"`
			JournalOK bool  `json:"journal_ok"`
		}
		nodetest.NewClient(url, tokn).JSON(t, "GET", "/v1/ledger/check", nil, 200, &chk)
		if chk.SumFen != 0 || !chk.JournalOK {
			t.Fatalf("ledger check at %s: %+v", url, chk)
		}
		return ps.Positions[0].BalanceFen, ps.Positions[0].PendingMessages, ps.Positions[0].OwedToUsFen
	}
	if _, n, _ := finance(b.url, demoB.Staff["finance"].Token); n != 3 {
		t.Fatalf("pending messages at B with A down: %d, want 3", n)
	}
	// A's physical card, online and in an offline batch (with one of A's
	// codes), while A is down: accepted under the risk limit and queued;
	// the batch re-sent is applied once.
	var card scanAnswer
	nodetest.NewClient(b.url, bus.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "p-card", "scenario": "transit.bus", "card_number": res.CardNumber}, 200, &card)
	if card.Decision != "accepted" {
		t.Fatalf("A's card with A down: %+v", card)
	}
	total += *card.ChargedFen
	key, err := terminal.ParseBatchKey(bus.BatchKey)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sb, err := terminal.SignBatch(terminal.Batch{Terminal: bus.ID, ID: "p-batch", CreatedAt: now, Records: []terminal.Record{
		{ID: "p-rec-card", Seq: 1, At: now, Scenario: "transit.bus", CardNumber: res.CardNumber},
		{ID: "p-rec-code", Seq: 2, At: now, Scenario: "transit.bus", Code: pending[3]},
	}}, key)
	if err != nil {
		t.Fatal(err)
	}
	upload := func() yscan.BatchReport {
		var rep yscan.BatchReport
		nodetest.NewClient(b.url, bus.Token).JSON(t, "POST", "/v1/terminals/"+bus.ID+"/batches", sb, 200, &rep)
		return rep
	}
	rep := upload()
	if rep.Applied != 2 {
		t.Fatalf("offline batch with A down: %+v", rep)
	}
	total += rep.ChargedFen
	if again := upload(); again.Duplicates != 2 {
		t.Fatalf("re-sent batch: %+v", again)
	}
	if _, n, _ := finance(b.url, demoB.Staff["finance"].Token); n != 6 {
		t.Fatalf("pending messages at B with A down: %d, want 6", n)
	}
	time.Sleep(time.Second) // B keeps retrying meanwhile
	a.start()
	eventually(t, "B's outbox to drain after A's restart", 15*time.Second, func() bool {
		_, n, _ := finance(b.url, demoB.Staff["finance"].Token)
		return n == 0
	})
	balB, _, owed := finance(b.url, demoB.Staff["finance"].Token)
	balA, _, _ := finance(a.url, demoA.Staff["finance"].Token)
	if balA != -balB || owed != total {
		t.Fatalf("after catch-up: A clr:B %d, B clr:A %d, owed to B %d, rides %d", balA, balB, owed, total)
	}
	if w := wallet(); w != w0-total {
		t.Fatalf("A's wallet %d, want %d (every ride charged exactly once)", w, w0-total)
	}
	if again := upload(); again.Duplicates != 2 {
		t.Fatalf("batch re-sent after the catch-up: %+v", again)
	}
	if w := wallet(); w != w0-total {
		t.Fatalf("A's wallet %d after a re-send, want %d", w, w0-total)
	}
	a.terminate()
	b.terminate()
}
