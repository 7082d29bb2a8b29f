package node_test

// Graceful shutdown: SIGTERM while top-ups are in flight. The node stops
// cleanly (exit 0, "stopped"); every answer a client got is 200, or a
// retryable 503, or no answer at all (connection refused or closed) —
// never a 500; every acknowledged top-up is there after a restart, and
// every unanswered one settles exactly once when re-sent.

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

func TestOpsSIGTERMDuringTopUps(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped with -short")
	}
	dir := t.TempDir()
	p := nodetest.StartProcess(t, dir, "--demo")
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
		bad     []string
		wg      sync.WaitGroup
		n       atomic.Int64
	)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := nodetest.NewClient(p.URL, demo.Staff["finance"].Token)
			c.HTTP.Timeout = 20 * time.Second
			for i := 0; ; i++ {
				who := people[(g+i)%len(people)]
				req := crashTopUp{Key: fmt.Sprintf("term-%d-%d", g, i), Card: who.CardNumber, Amount: 1 + int64(i%7), wallet: ledger.WalletID(who.ResidentID)}
				resp, err := c.Try("POST", "/v1/topups", req)
				mu.Lock()
				switch {
				case err != nil:
					unknown = append(unknown, req)
				case resp.Status == 200:
					var ans topUpAnswer
					if json.Unmarshal(resp.Body, &ans) != nil || ans.ID == "" {
						bad = append(bad, string(resp.Body))
					}
					req.id = ans.ID
					acked = append(acked, req)
				case resp.Status == 503 && resp.Code() == "unavailable":
					unknown = append(unknown, req)
				default:
					bad = append(bad, fmt.Sprintf("%d %s", resp.Status, resp.Body))
					unknown = append(unknown, req)
				}
				mu.Unlock()
				if err != nil {
					return
				}
				if n.Add(1) > 20000 {
					return
				}
			}
		}()
	}
	for {
		mu.Lock()
		k := len(acked)
		mu.Unlock()
		if k > 200 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := p.Terminate(); err != nil {
		t.Fatalf("SIGTERM under load: %v\n%s", err, p.Stderr)
	}
	wg.Wait()
	if !strings.Contains(p.Stderr.String(), "yikatong: stopped") {
		t.Fatalf("no clean stop:\n%s", p.Stderr)
	}
	if len(bad) > 0 {
		t.Fatalf("%d answers during shutdown were neither 200 nor a retryable 503, e.g. %s", len(bad), bad[0])
	}
	t.Logf("%d acknowledged, %d unanswered", len(acked), len(unknown))
	p = nodetest.StartProcess(t, dir, "--demo")
	fin := nodetest.NewClient(p.URL, demo.Staff["finance"].Token)
	settled := map[string]string{}
	for _, a := range acked {
		var ans topUpAnswer
		fin.JSON(t, "POST", "/v1/topups", a, 200, &ans)
		if ans.ID != a.id || !ans.Replayed {
			t.Fatalf("acknowledged top-up %s (%s) after SIGTERM and restart: %+v", a.Key, a.id, ans)
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
