package node_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestOpsTwoServeOnOneSQLiteFile: a second `serve` started by mistake on
// the data directory of a running SQLite node (a unit file and a manual
// start) must not corrupt it. Both take top-ups for the same wallets at
// once, then both are killed; a restarted node finds every acknowledged
// top-up exactly once and the books balanced.
func TestOpsTwoServeOnOneSQLiteFile(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped with -short")
	}
	dir := t.TempDir()
	p1 := nodetest.StartProcess(t, dir, "--demo")
	p2 := nodetest.StartProcess(t, dir)
	demo, err := node.ReadDemoFile(filepath.Join(dir, "demo.json"))
	if err != nil {
		t.Fatal(err)
	}
	people := demo.Residents[:3]
	want := map[string]int64{}
	for _, r := range people {
		want[ledger.WalletID(r.ResidentID)] = node.DemoWalletFen
	}
	var (
		mu      sync.Mutex
		acked   []crashTopUp
		unknown []crashTopUp
		dead    atomic.Bool
		wg      sync.WaitGroup
	)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := []string{p1.URL, p2.URL}[g%2]
			c := nodetest.NewClient(base, demo.Staff["finance"].Token)
			c.HTTP.Timeout = 20 * time.Second
			for i := 0; !dead.Load(); i++ {
				who := people[(g+i)%len(people)]
				req := crashTopUp{Key: fmt.Sprintf("two-%d-%d", g, i), Card: who.CardNumber, Amount: 1 + int64(i%5), wallet: ledger.WalletID(who.ResidentID)}
				resp, err := c.Try("POST", "/v1/topups", req)
				var ans topUpAnswer
				mu.Lock()
				if err == nil && resp.Status == 200 && json.Unmarshal(resp.Body, &ans) == nil && ans.ID != "" {
					req.id = ans.ID
					acked = append(acked, req)
				} else {
					if err == nil && resp.Status != 503 {
						t.Errorf("top-up on %s: %d %s", base, resp.Status, resp.Body)
					}
					unknown = append(unknown, req)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	p1.Kill()
	p2.Kill()
	dead.Store(true)
	wg.Wait()
	t.Logf("%d acknowledged, %d unanswered", len(acked), len(unknown))
	if len(acked) == 0 {
		t.Fatalf("nothing acknowledged:\n%s\n%s", p1.Stderr, p2.Stderr)
	}
	p := nodetest.StartProcess(t, dir, "--demo")
	fin := nodetest.NewClient(p.URL, demo.Staff["finance"].Token)
	settled := map[string]string{}
	for _, a := range acked {
		var ans topUpAnswer
		fin.JSON(t, "POST", "/v1/topups", a, 200, &ans)
		if ans.ID != a.id || !ans.Replayed {
			t.Fatalf("acknowledged top-up %s (%s): %+v", a.Key, a.id, ans)
		}
		want[a.wallet] += a.Amount
		settled[a.Key] = a.id
	}
	for _, u := range unknown {
		var ans topUpAnswer
		fin.JSON(t, "POST", "/v1/topups", u, 200, &ans)
		want[u.wallet] += u.Amount
		settled[u.Key] = ans.ID
	}
	verifyBooks(t, fin, want, settled)
}
