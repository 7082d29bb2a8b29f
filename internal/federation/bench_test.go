package federation_test

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/federation"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/scan"
)

// TestBenchFederation measures cross-city figures (docs/benchmarks.md,
// "Federation" and "Session 4"). It runs only with YIKATONG_FED_BENCH=1:
//
//	YIKATONG_FED_BENCH=1 go test ./internal/federation -run TestBenchFederation -v
//
// Also: YIKATONG_FED_BENCH_WINDOWS=1 prints p50/p99 per quarter second of
// the authorisations; YIKATONG_FED_BENCH_CPUPROFILE=F and
// YIKATONG_FED_BENCH_CLEARING_CPUPROFILE=F write CPU profiles of the
// authorisation phase and of the clearing phase (4 batches in flight).
func TestBenchFederation(t *testing.T) {
	if os.Getenv("YIKATONG_FED_BENCH") == "" {
		t.Skip("set YIKATONG_FED_BENCH=1")
	}
	reg := newRegion(t)
	cfg := testConfig(reg.anchor.Public(), reg.path)
	cfg.AuthTimeout = 2 * time.Second
	cfg.Refresh = time.Hour
	dsn := os.Getenv("YIKATONG_FED_BENCH_DSN") // "" = SQLite
	a := startCity(t, "CN-330100", dsn, cfg)
	b := startCity(t, "CN-310000", "", cfg)
	reg.write(t, reg.anchor, member(a, a.url), member(b, b.url))
	ctx := context.Background()
	a.Fed.Refresh(ctx)
	b.Fed.Refresh(ctx)
	cards := make([]string, 0, len(a.demo.Residents))
	for _, r := range a.demo.Residents {
		cd, _ := a.Residents.Card(ctx, r.CardNumber)
		a.Ledger.TopUp(ctx, "bench-topup-"+cd.ResidentID, ledger.WalletID(cd.ResidentID), 1<<40, nil)
		cards = append(cards, cd.Token)
	}

	// 1. Online authorisation: B asks A, at a fixed offered rate.
	rate, secs := 1000, 5
	if v := os.Getenv("YIKATONG_FED_BENCH_SECS"); v != "" {
		fmt.Sscan(v, &secs)
	}
	if v := os.Getenv("YIKATONG_FED_BENCH_RATE"); v != "" {
		fmt.Sscan(v, &rate)
	}
	n := rate * secs
	lat := make([]time.Duration, n)
	var fails atomic.Int64
	var wg sync.WaitGroup
	if f := os.Getenv("YIKATONG_FED_BENCH_CPUPROFILE"); f != "" {
		startProfile(t, f)
	}
	cpu0, st0 := processCPU(), a.Ledger.Stats()
	start := time.Now()
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		time.Sleep(time.Until(due))
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			t0 := time.Now()
			r, err := b.Fed.Authorize(ctx, a.id, scan.RemoteCharge{CTI: fmt.Sprintf("bench-auth-%d-%d", start.UnixNano(), i), Subject: cards[i%len(cards)], AmountFen: 200, Scenario: "transit.bus"})
			lat[i] = time.Since(t0)
			if err != nil || !r.Approved || r.Queued {
				fails.Add(1)
			}
		}(i)
	}
	wg.Wait()
	el := time.Since(start)
	cpu := processCPU() - cpu0
	pprof.StopCPUProfile()
	st := a.Ledger.Stats()
	t.Logf("home city's ledger during the authorisations: %d batches, %.1f entries per batch; per batch %s",
		st.Batches-st0.Batches, float64(st.Entries-st0.Entries)/float64(max(1, st.Batches-st0.Batches)), phasesPerBatch(st, st0))
	if os.Getenv("YIKATONG_FED_BENCH_WINDOWS") != "" {
		for w := 0; w < n; w += rate / 4 {
			part := append([]time.Duration(nil), lat[w:min(w+rate/4, n)]...)
			sort.Slice(part, func(i, j int) bool { return part[i] < part[j] })
			t.Logf("window %5.2fs: p50 %v p99 %v max %v", float64(w)/float64(rate), part[len(part)/2], part[len(part)*99/100], part[len(part)-1])
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("online authorisation B→A: %d requests offered at %d/s in %v (%.0f/s); p50 %v p99 %v max %v; failures %d; CPU of both nodes %.0f µs per authorisation (%.2f of the machine's cores busy)",
		n, rate, el.Round(time.Millisecond), float64(n)/el.Seconds(), lat[n/2], lat[n*99/100], lat[n-1], fails.Load(),
		float64(cpu.Microseconds())/float64(n), cpu.Seconds()/el.Seconds())

	// B's outbox holds a void for every authorisation it gave up on: let
	// it drain first, so that the clearing figures are clearing alone.
	t0 := time.Now()
	for {
		n, err := b.Fed.Pending(ctx)
		if err == nil && n == 0 {
			break
		}
		if time.Since(t0) > 2*time.Minute {
			t.Fatalf("B's outbox still holds %d messages (%v)", n, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("B's outbox (voids of the failed authorisations) drained in %v", time.Since(t0).Round(time.Millisecond))

	// 2. Clearing: batches of guaranteed charges applied by A.
	total, batchSize := 40000, federation.MaxBatch
	if v := os.Getenv("YIKATONG_FED_BENCH_MSGS"); v != "" {
		fmt.Sscan(v, &total)
	}
	// Once with one batch at a time, once with federation.InFlight
	// batches in flight (as the outbox sends them).
	for _, inFlight := range []int{1, federation.InFlight} {
		var msgs []federation.Charge
		now := time.Now()
		for i := 0; i < total; i++ {
			msgs = append(msgs, federation.Charge{ID: fmt.Sprintf("%s.bench-%d-%d", b.id, now.UnixNano(), i), Mode: federation.ModeGuaranteed,
				Subject: cards[i%len(cards)], AmountFen: 200, Scenario: "transit.bus", CreatedAt: now})
		}
		if f := os.Getenv("YIKATONG_FED_BENCH_CLEARING_CPUPROFILE"); f != "" && inFlight > 1 {
			startProfile(t, f)
		}
		cpu0, st0 := processCPU(), a.Ledger.Stats()
		start = time.Now()
		sem := make(chan struct{}, inFlight)
		errs := make(chan error, total/batchSize+1)
		for off := 0; off < total; off += batchSize {
			sem <- struct{}{}
			wg.Add(1)
			go func(part []federation.Charge) {
				defer func() { <-sem; wg.Done() }()
				env, err := federation.Seal(b.id, a.id, federation.KindMessages, time.Now(), map[string]any{"messages": part}, b.Keys.NodeSigner())
				if err == nil {
					_, err = a.Fed.HandleMessages(ctx, env)
				}
				if err != nil {
					errs <- err
				}
			}(msgs[off:min(off+batchSize, total)])
		}
		wg.Wait()
		el = time.Since(start)
		cpu := processCPU() - cpu0
		pprof.StopCPUProfile()
		st := a.Ledger.Stats()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		t.Logf("clearing: %d guaranteed charges in batches of %d, %d in flight, applied by the home city in %v: %.0f messages/s; CPU %.0f µs per message; ledger %d batches, %.1f entries per batch; per batch %s",
			total, batchSize, inFlight, el.Round(time.Millisecond), float64(total)/el.Seconds(), float64(cpu.Microseconds())/float64(total),
			st.Batches-st0.Batches, float64(st.Entries-st0.Entries)/float64(max(1, st.Batches-st0.Batches)), phasesPerBatch(st, st0))
	}
	var applied int64
	if err := a.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM fed_messages WHERE direction = 'in' AND state = 'applied'`).Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied < int64(2*total) {
		t.Fatalf("%d messages applied, want at least %d", applied, 2*total)
	}
	chk, err := a.Ledger.Check(ctx)
	if err != nil || chk.SumFen != 0 {
		t.Fatalf("ledger after the benchmark: %+v %v", chk, err)
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func phasesPerBatch(st, st0 ledger.Stats) string {
	n := max(1, st.Batches-st0.Batches)
	out := ""
	for i, name := range ledger.PhaseNames {
		out += fmt.Sprintf(" %s %.2f ms", name, float64((st.Phases[i]-st0.Phases[i]).Microseconds())/1000/float64(n))
	}
	return out
}

// startProfile starts a CPU profile into file f (pprof.StopCPUProfile
// ends it; the file is closed when the test ends).
func startProfile(t *testing.T, f string) {
	out, err := os.Create(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })
	if err := pprof.StartCPUProfile(out); err != nil {
		t.Fatal(err)
	}
}
