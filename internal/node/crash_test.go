package node_test

// The crash test (issue 3): the real binary under top-up load, killed with
// SIGKILL at a random moment, restarted on the same data directory. Every
// top-up the client saw acknowledged must be there exactly once; every
// top-up whose answer was lost may or may not be there, but re-sending it
// must settle it exactly once; the books must balance.

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

type crashTopUp struct {
	Key    string `json:"idempotency_key"`
	Card   string `json:"card_number"`
	Amount int64  `json:"amount_fen"`
	wallet string
	id     string // transfer id, when acknowledged
}

type topUpAnswer struct {
	ID        string `json:"id"`
	Credit    string `json:"credit"`
	AmountFen int64  `json:"amount_fen"`
	Replayed  bool   `json:"replayed"`
}

func TestCrashDuringTopUps(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the real binary; skipped with -short")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("YIKATONG_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("YIKATONG_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %d (replay with YIKATONG_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 3))

	dir := t.TempDir()
	p := nodetest.StartProcess(t, dir, "--demo")
	demo, err := node.ReadDemoFile(filepath.Join(dir, "demo.json"))
	if err != nil {
		t.Fatal(err)
	}
	fin := nodetest.NewClient(p.URL, demo.Staff["finance"].Token)

	// A handful of residents share the load, so each wallet sees many
	// concurrent top-ups.
	var people []node.DemoResident
	for _, r := range demo.Residents {
		if r.ResidentID != "" && r.CardNumber != "" {
			people = append(people, r)
		}
		if len(people) == 6 {
			break
		}
	}
	if len(people) == 0 {
		t.Fatal("demo.json lists no residents with card and resident id")
	}
	// expected balance per wallet: the demo funding plus everything settled.
	want := map[string]int64{}
	for _, r := range people {
		w := ledger.WalletID(r.ResidentID)
		var a accountAnswer
		fin.JSON(t, "GET", "/v1/accounts/"+w, nil, 200, &a)
		if a.BalanceFen != node.DemoWalletFen {
			t.Fatalf("%s starts at %d, want the demo funding %d", w, a.BalanceFen, node.DemoWalletFen)
		}
		want[w] = a.BalanceFen
	}
	settled := map[string]string{} // key → transfer id, over all rounds

	const rounds, workers = 3, 24
	for round := 0; round < rounds; round++ {
		killAfter := time.Duration(80+rng.IntN(400)) * time.Millisecond
		var (
			mu      sync.Mutex
			acked   []crashTopUp
			unknown []crashTopUp
			dead    atomic.Bool
			wg      sync.WaitGroup
		)
		base := rng.Uint64()
		for g := 0; g < workers; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(base, uint64(g)))
				c := nodetest.NewClient(p.URL, demo.Staff["finance"].Token)
				c.HTTP.Timeout = 10 * time.Second
				for i := 0; !dead.Load(); i++ {
					who := people[r.IntN(len(people))]
					req := crashTopUp{Key: fmt.Sprintf("crash-%d-%d-%d", round, g, i), Card: who.CardNumber,
						Amount: 1 + r.Int64N(300), wallet: ledger.WalletID(who.ResidentID)}
					resp, err := c.Try("POST", "/v1/topups", req)
					var ans topUpAnswer
					ok := err == nil && resp.Status == 200
					if ok {
						if jerr := json.Unmarshal(resp.Body, &ans); jerr != nil || ans.ID == "" || ans.Replayed {
							t.Errorf("top-up %s: answer %s", req.Key, resp.Body)
							ok = false
						}
					}
					mu.Lock()
					if ok {
						req.id = ans.ID
						acked = append(acked, req)
					} else {
						unknown = append(unknown, req)
					}
					mu.Unlock()
					if err != nil {
						return // the node is gone
					}
				}
			}()
		}
		// Arm the kill only once the node has answered something (a busy
		// machine can take longer than killAfter to answer the first one).
		for waited := time.Duration(0); waited < 10*time.Second; waited += 5 * time.Millisecond {
			mu.Lock()
			n := len(acked)
			mu.Unlock()
			if n > 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(killAfter)
		p.Kill()
		dead.Store(true)
		wg.Wait()
		t.Logf("round %d: killed after %v with %d top-ups acknowledged, %d unanswered", round, killAfter, len(acked), len(unknown))
		if len(acked) == 0 {
			t.Fatalf("round %d: no top-up was acknowledged before the kill; stderr: %s", round, p.Stderr)
		}

		p = nodetest.StartProcess(t, dir, "--demo")
		fin = nodetest.NewClient(p.URL, demo.Staff["finance"].Token)

		// Acknowledged: present, exactly as answered.
		for _, a := range acked {
			var ans topUpAnswer
			fin.JSON(t, "POST", "/v1/topups", a, 200, &ans)
			if ans.ID != a.id || !ans.Replayed || ans.AmountFen != a.Amount || ans.Credit != a.wallet {
				t.Fatalf("acknowledged top-up %s (%s) after restart: %+v", a.Key, a.id, ans)
			}
			want[a.wallet] += a.Amount
			settled[a.Key] = a.id
		}
		// Unanswered: committed or not; re-sending settles it exactly once.
		committed := 0
		for _, u := range unknown {
			var ans topUpAnswer
			fin.JSON(t, "POST", "/v1/topups", u, 200, &ans)
			if ans.Replayed {
				committed++
			}
			var again topUpAnswer
			fin.JSON(t, "POST", "/v1/topups", u, 200, &again)
			if again.ID != ans.ID || !again.Replayed {
				t.Fatalf("top-up %s re-sent twice: %+v then %+v", u.Key, ans, again)
			}
			want[u.wallet] += u.Amount
			settled[u.Key] = ans.ID
		}
		t.Logf("round %d: %d of the unanswered top-ups had committed before the kill", round, committed)

		verifyBooks(t, fin, want, settled)
	}
}

// verifyBooks checks every wallet's balance, that each settled top-up is in
// its wallet's statement exactly once, and GET /v1/ledger/check.
func verifyBooks(t *testing.T, fin *nodetest.Client, want map[string]int64, settled map[string]string) {
	t.Helper()
	seen := map[string]int{}
	for w, bal := range want {
		var a accountAnswer
		fin.JSON(t, "GET", "/v1/accounts/"+w, nil, 200, &a)
		if a.BalanceFen != bal {
			t.Fatalf("%s balance %d, want %d (demo funding + settled top-ups)", w, a.BalanceFen, bal)
		}
		cursor := ""
		for pages := 0; ; pages++ {
			if pages > 1000 {
				t.Fatal("statement does not end")
			}
			var page struct {
				Entries []struct {
					ID string `json:"id"`
				} `json:"entries"`
				Next string `json:"next"`
			}
			path := "/v1/accounts/" + w + "/statement?limit=500"
			if cursor != "" {
				path += "&cursor=" + url.QueryEscape(cursor)
			}
			fin.JSON(t, "GET", path, nil, 200, &page)
			for _, e := range page.Entries {
				seen[e.ID]++
			}
			if page.Next == "" {
				break
			}
			cursor = page.Next
		}
	}
	for key, id := range settled {
		if seen[id] != 1 {
			t.Fatalf("top-up %s (%s) appears %d times in the statements", key, id, seen[id])
		}
	}
	var check struct {
		SumFen    int64    `json:"sum_fen"`
		JournalOK bool     `json:"journal_ok"`
		Problems  []string `json:"problems"`
	}
	fin.JSON(t, "GET", "/v1/ledger/check", nil, 200, &check)
	if check.SumFen != 0 || !check.JournalOK || len(check.Problems) > 0 {
		t.Fatalf("ledger check after restart: %+v", check)
	}
}
