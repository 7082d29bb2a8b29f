package federation_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestSimulateRegion runs a whole region in one process (docs/federation.md,
// "Simulating a region"; figures in docs/benchmarks.md). It runs only with
// YIKATONG_FED_SIM=1:
//
//	YIKATONG_FED_SIM=1 [YIKATONG_FED_SIM_CITIES=41] [YIKATONG_FED_SIM_REFRESH=2s] [YIKATONG_FED_SIM_RIDES=20] \
//	  go test ./internal/federation -run TestSimulateRegion -v -timeout 30m
//
// It measures how long an issuer key rotated in one city takes to reach
// every other node (target: within one refresh interval), then runs a day
// of cross-city rides (each city's residents ride in random other cities,
// authorised online by their home city), checks every ledger and that every
// pair's clearing accounts mirror, and settles the day: every node signs a
// statement with each peer and has it countersigned.
func TestSimulateRegion(t *testing.T) {
	if os.Getenv("YIKATONG_FED_SIM") == "" {
		t.Skip("set YIKATONG_FED_SIM=1")
	}
	n, rides := 41, 20
	refresh := 2 * time.Second
	if v := os.Getenv("YIKATONG_FED_SIM_CITIES"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	if v := os.Getenv("YIKATONG_FED_SIM_RIDES"); v != "" {
		rides, _ = strconv.Atoi(v)
	}
	if v := os.Getenv("YIKATONG_FED_SIM_REFRESH"); v != "" {
		refresh, _ = time.ParseDuration(v)
	}
	ctx := context.Background()
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	cfg.Refresh, cfg.OutboxEvery, cfg.AuthTimeout, cfg.RiskLimitFen, cfg.MaxBackoff = refresh, 500*time.Millisecond, 3*time.Second, 5000, 5*time.Second

	t0 := time.Now()
	cities := make([]*city, n)
	for i := range cities {
		cities[i] = startCity(t, fmt.Sprintf("CN-%06d", 310000+i*100), "", cfg)
	}
	var ms []federation.Member
	for _, c := range cities {
		ms = append(ms, member(c, c.url))
	}
	reg.write(t, reg.anchor, ms...)
	t.Logf("%d cities started in %v", n, time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	eventually(t, "every city to trust every other", 5*time.Minute, func() bool {
		for _, c := range cities {
			if len(c.Fed.PeerKeys()) != n-1 {
				return false
			}
		}
		return true
	})
	t.Logf("full trust (%d directed pairs) in %v, refresh interval %v", n*(n-1), time.Since(t0).Round(time.Millisecond), refresh)

	// 1. Key rotation in the first city, watched from every other node.
	src := cities[0]
	var rot struct {
		Kid string `json:"kid"`
	}
	nodetest.NewClient(src.url, src.demo.Staff["operator"].Token).JSON(t, "POST", "/v1/keys/rotate", nil, 200, &rot)
	start := time.Now()
	seen := make([]time.Duration, n)
	left := n - 1
	for left > 0 && time.Since(start) < 10*refresh {
		for i, c := range cities[1:] {
			if seen[i+1] != 0 {
				continue
			}
			if hasKid(c.Fed.PeerKeys()[src.id], rot.Kid) {
				seen[i+1] = time.Since(start)
				left--
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if left > 0 {
		t.Fatalf("the rotated key reached only %d of %d nodes within %v", n-1-left, n-1, 10*refresh)
	}
	d := slices.Clone(seen[1:])
	slices.Sort(d)
	t.Logf("key rotation in %s reached all %d other nodes: median %v, max %v (refresh interval %v)",
		src.id, n-1, d[len(d)/2].Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond), refresh)
	if d[len(d)-1] > refresh+refresh/2 {
		t.Errorf("the slowest node took %v, more than the refresh interval (%v) plus half of it", d[len(d)-1], refresh)
	}

	// 2. A day of rides: every city's residents ride buses in random other
	// cities (a scan at the visited city's terminal, with a code issued by
	// the home city, authorised online by it).
	type ride struct {
		home, at *city
		card     string
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var plan []ride
	for _, home := range cities {
		for k := 0; k < rides; k++ {
			at := cities[rng.IntN(n)]
			for at == home {
				at = cities[rng.IntN(n)]
			}
			plan = append(plan, ride{home, at, home.demo.Residents[rng.IntN(len(home.demo.Residents))].CardNumber})
		}
	}
	var declined, charged atomic.Int64
	lat := make([]time.Duration, len(plan))
	jobs := make(chan int)
	var wg sync.WaitGroup
	start = time.Now()
	rideErrs := make(chan error, len(plan))
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				r := plan[i]
				code, _, err := r.home.IssueCode(ctx, r.card)
				if err != nil {
					rideErrs <- err
					continue
				}
				t1 := time.Now()
				a, err := postScan(r.at.url, r.at.terminal(t, "transit.bus").Token, map[string]any{
					"idempotency_key": fmt.Sprintf("sim-%d", i), "scenario": "transit.bus", "code": code})
				lat[i] = time.Since(t1)
				switch {
				case err != nil:
					rideErrs <- err
				case a.Decision != "accepted" || a.ChargedFen == nil:
					declined.Add(1)
				default:
					charged.Add(*a.ChargedFen)
				}
			}
		}()
	}
	for i := range plan {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	el := time.Since(start)
	close(rideErrs)
	for err := range rideErrs {
		t.Fatal(err)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("a day of rides: %d cross-city bus rides scanned in %v (%.0f/s), p50 %v p99 %v, declined %d, %d fen charged",
		len(plan), el.Round(time.Millisecond), float64(len(plan))/el.Seconds(), lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)*99/100].Round(time.Millisecond), declined.Load(), charged.Load())
	start = time.Now()
	checkBooks(t, cities...)
	t.Logf("outboxes drained, %d ledgers checked and %d clearing pairs mirror in %v", n, n*(n-1)/2, time.Since(start).Round(time.Millisecond))

	// 3. The day's settlement: every node with every peer.
	day := time.Now().UTC().Format("2006-01-02")
	start = time.Now()
	type pairKey struct{ a, b string }
	stmts := map[pairKey]federation.Statement{}
	var smu sync.Mutex
	var total, agreed atomic.Int64
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	for _, c := range cities {
		wg.Add(1)
		sem <- struct{}{}
		go func(c *city) {
			defer func() { <-sem; wg.Done() }()
			sts, err := c.Fed.Settle(ctx, day)
			if err != nil {
				errs <- err
				return
			}
			for _, st := range sts {
				total.Add(1)
				if st.Agreed {
					agreed.Add(1)
				} else {
					errs <- fmt.Errorf("%s: statement with %s/%s not agreed: %s", c.id, st.Statement.A, st.Statement.B, st.Error)
				}
				smu.Lock()
				k := pairKey{st.Statement.A, st.Statement.B}
				if prev, ok := stmts[k]; ok && prev != st.Statement {
					errs <- fmt.Errorf("the two sides of %s/%s computed different statements", k.a, k.b)
				}
				stmts[k] = st.Statement
				smu.Unlock()
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var msgs, gross int64
	for _, st := range stmts {
		m, _ := strconv.ParseInt(st.Messages, 10, 64)
		ab, _ := strconv.ParseInt(st.AOwesB, 10, 64)
		ba, _ := strconv.ParseInt(st.BOwesA, 10, 64)
		msgs += m
		gross += ab + ba
	}
	t.Logf("settlement of %s: %d statements signed by both sides (%d of %d agreed), %d pairs, %d messages, %d fen gross, in %v",
		day, total.Load(), agreed.Load(), total.Load(), len(stmts), msgs, gross, time.Since(start).Round(time.Millisecond))
	if gross != charged.Load() {
		t.Errorf("the statements add up to %d fen, the rides to %d", gross, charged.Load())
	}
}

func hasKid(ks []ecode.PublicKey, kid string) bool {
	for _, k := range ks {
		if k.KidString() == kid {
			return true
		}
	}
	return false
}

func postScan(base, token string, body map[string]any) (scanAnswer, error) {
	var a scanAnswer
	b, _ := json.Marshal(body)
	req, err := http.NewRequest("POST", base+"/v1/scans", bytes.NewReader(b))
	if err != nil {
		return a, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return a, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return a, fmt.Errorf("scan at %s: %d %s", base, resp.StatusCode, data)
	}
	return a, json.Unmarshal(data, &a)
}
