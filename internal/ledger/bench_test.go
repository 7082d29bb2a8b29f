package ledger

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// Run both in one go for the ratio (docs/benchmarks.md, "Ledger"):
//
//	go test ./internal/ledger -run '^$' -bench 'RawSQLiteInsert|LedgerTransfers64' -benchtime 2s

// BenchmarkRawSQLiteInsert is the baseline: one row per durable commit on
// a SQLite database opened by internal/store (WAL, synchronous=FULL).
func BenchmarkRawSQLiteInsert(b *testing.B) {
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(b.TempDir(), "raw.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if _, err := db.W.ExecContext(ctx, `CREATE TABLE raw (id INTEGER PRIMARY KEY, k TEXT NOT NULL, amount BIGINT NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if _, err := db.W.ExecContext(ctx, `INSERT INTO raw(k, amount) VALUES ($1, $2)`, fmt.Sprint("k", i), i); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tx/s")
}

func BenchmarkLedgerTransfers64(b *testing.B) {
	benchTransfers(b, filepath.Join(b.TempDir(), "ledger.db"), false)
}

// BenchmarkLedgerTransfers64SyncInCommit: the same load with the fsync
// inside every batch's COMMIT (synchronous=FULL), as before the deferred
// sync of sync.go; compare within one run.
func BenchmarkLedgerTransfers64SyncInCommit(b *testing.B) {
	benchTransfers(b, filepath.Join(b.TempDir(), "ledger.db"), false, Options{SyncInCommit: true})
}

// BenchmarkLedgerTransfers64Pairs: random wallet → wallet transfers (no
// hot account; twice the random account pages per transfer).
func BenchmarkLedgerTransfers64Pairs(b *testing.B) {
	benchTransfers(b, filepath.Join(b.TempDir(), "ledger.db"), true)
}

func BenchmarkLedgerTransfers64Postgres(b *testing.B) {
	benchTransfers(b, storetest.Postgres(b), false)
}

// loadResult is one closed-loop run of the ledger under 64 callers.
type loadResult struct {
	n                  int
	elapsed            time.Duration
	p50, p99           time.Duration
	entriesPerBatch    float64
	msPerBatch         float64
	phases             [nPhases]float64 // ms per batch
	failed             int64
	tps                float64
	dialect, scenarios string
}

const benchWallets, benchCallers = 4000, 64

// The benchmark's accounts: residents' wallets, and the provider every
// fare credits.
var benchHot = ReceivableID("bus")

func benchWallet(i int) string { return WalletID(fmt.Sprint("r", i)) }

// benchLedger opens a ledger on dsn with 4,000 funded wallets and the hot
// account.
func benchLedger(tb testing.TB, dsn string, opts ...Options) *Ledger {
	ctx := context.Background()
	db, err := store.Open(ctx, dsn, store.Options{MaxConns: 8})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	var opt Options
	if len(opts) > 0 {
		opt = opts[0]
	}
	l, err := Open(ctx, db, opt)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(l.Close)
	if _, err := l.CreateAccount(ctx, Account{ID: benchHot, Kind: KindReceivable}); err != nil {
		tb.Fatal(err)
	}
	var fund []TransferRequest
	for i := 0; i < benchWallets; i++ {
		id := benchWallet(i)
		if _, err := l.CreateAccount(ctx, Account{ID: id, Kind: KindWallet}); err != nil {
			tb.Fatal(err)
		}
		fund = append(fund, TransferRequest{Key: "fund-" + id, Debit: AccountBank, Credit: id, Amount: 1 << 40})
	}
	for _, r := range l.Batch(ctx, fund) {
		if r.Err != nil {
			tb.Fatal(r.Err)
		}
	}
	return l
}

// runLoad makes 64 callers transfer until n transfers are done (n > 0) or
// for dur. Each transfer debits a random wallet and credits the hot
// account (as every fare credits its bus company), or with pairs another
// random wallet. Every transfer is durable before its caller is answered.
func runLoad(l *Ledger, prefix string, n int, dur time.Duration, pairs bool) loadResult {
	ctx := context.Background()
	s0 := l.Stats()
	var ph0 [nPhases]int64
	for i := range ph0 {
		ph0[i] = l.phases[i].Load()
	}
	lat := make([][]time.Duration, benchCallers)
	var next, failed atomic.Int64
	start := time.Now()
	deadline := start.Add(dur)
	var wg sync.WaitGroup
	for c := 0; c < benchCallers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 7))
			for {
				i := next.Add(1)
				if n > 0 && i > int64(n) || n == 0 && time.Now().After(deadline) {
					return
				}
				d := r.IntN(benchWallets)
				credit := benchHot
				if pairs {
					credit = benchWallet((d + 1 + r.IntN(benchWallets-1)) % benchWallets)
				}
				t0 := time.Now()
				_, err := l.Transfer(ctx, TransferRequest{Key: fmt.Sprint(prefix, i), Debit: benchWallet(d), Credit: credit,
					Amount: 1 + r.Int64N(500), Kind: "fare", Meta: map[string]string{"scenario": "bus"}})
				lat[c] = append(lat[c], time.Since(t0))
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	res := loadResult{elapsed: time.Since(start), failed: failed.Load()}
	all := slices.Concat(lat...)
	slices.Sort(all)
	res.n = len(all)
	if len(all) > 0 {
		res.p50, res.p99 = all[len(all)/2], all[int(0.99*float64(len(all)-1))]
	}
	res.tps = float64(res.n) / res.elapsed.Seconds()
	s1 := l.Stats()
	if nb := s1.Batches - s0.Batches; nb > 0 {
		res.entriesPerBatch = float64(s1.Entries-s0.Entries) / float64(nb)
		res.msPerBatch = float64((s1.BatchTime - s0.BatchTime).Microseconds()) / 1000 / float64(nb)
		for i := range res.phases {
			res.phases[i] = float64(l.phases[i].Load()-ph0[i]) / 1e6 / float64(nb)
		}
	}
	return res
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func benchTransfers(b *testing.B, dsn string, pairs bool, opts ...Options) {
	l := benchLedger(b, dsn, opts...)
	b.ResetTimer()
	res := runLoad(l, "b-", b.N, 0, pairs)
	b.StopTimer()
	if res.failed > 0 {
		b.Fatalf("%d transfers failed", res.failed)
	}
	b.ReportMetric(res.tps, "tx/s")
	b.ReportMetric(ms(res.p50), "p50-ms")
	b.ReportMetric(ms(res.p99), "p99-ms")
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(res.entriesPerBatch, "entries/batch")
	b.ReportMetric(res.msPerBatch, "ms/batch")
	for i, name := range []string{"load", "apply", "write", "commit", "sync"} {
		b.ReportMetric(res.phases[i], name+"-ms")
	}
	if r, err := l.Check(context.Background()); err != nil || !r.OK() {
		b.Fatalf("check after benchmark: %+v %v", r, err)
	}
}

// TestLedgerVsPgbench (YIKATONG_BENCH=1; docs/benchmarks.md, "Ledger on
// PostgreSQL vs pgbench") runs pgbench's TPC-B (scale 10, 64 clients, 2
// threads) and then the ledger's 64-caller benchmark on the same throwaway
// cluster, one after the other, and prints both with their ratio.
func TestLedgerVsPgbench(t *testing.T) {
	if os.Getenv("YIKATONG_BENCH") == "" {
		t.Skip("set YIKATONG_BENCH=1")
	}
	dur := 15 * time.Second
	if s := os.Getenv("YIKATONG_BENCH_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		dur = time.Duration(n) * time.Second
	}
	bin := storetest.FindBinDir()
	if bin == "" {
		t.Skip("no PostgreSQL binaries")
	}
	dsn := storetest.Postgres(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	pgb := func(args ...string) string {
		args = append([]string{"-h", u.Hostname(), "-p", u.Port(), "-U", u.User.Username()}, args...)
		args = append(args, strings.TrimPrefix(u.Path, "/"))
		out, err := exec.Command(filepath.Join(bin, "pgbench"), args...).CombinedOutput()
		if err != nil {
			t.Fatalf("pgbench %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	pgb("-i", "-q", "-s", "10")
	out := pgb("-c", "64", "-j", "2", "-T", strconv.Itoa(int(dur.Seconds())), "-r")
	m := regexp.MustCompile(`tps = ([0-9.]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no tps in pgbench output:\n%s", out)
	}
	pgtps, _ := strconv.ParseFloat(m[1], 64)
	lat := regexp.MustCompile(`latency average = ([0-9.]+) ms`).FindStringSubmatch(out)

	l := benchLedger(t, dsn)
	runLoad(l, "warm-", 0, 2*time.Second, false)
	cl, _ := storetest.SharedCluster()
	var cpu [2][2]float64 // per run: this process's and PostgreSQL's CPU µs per transfer
	measured := func(i int, res func() loadResult) loadResult {
		s0, p0 := procCPU(os.Getpid()), clusterCPU(cl)
		r := res()
		cpu[i] = [2]float64{1e6 * (procCPU(os.Getpid()) - s0) / float64(r.n), 1e6 * (clusterCPU(cl) - p0) / float64(r.n)}
		return r
	}
	hot := measured(0, func() loadResult { return runLoad(l, "hot-", 0, dur, false) })
	pairs := measured(1, func() loadResult { return runLoad(l, "pair-", 0, dur, true) })
	if hot.failed+pairs.failed > 0 {
		t.Fatalf("%d transfers failed", hot.failed+pairs.failed)
	}
	if r, err := l.Check(context.Background()); err != nil || !r.OK() {
		t.Fatalf("check: %+v %v", r, err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n| what (64 clients, %v each) | tx/s | p50 / p99 | entries/batch | ratio to pgbench |\n|---|---|---|---|---|\n", dur)
	avg := "—"
	if lat != nil {
		avg = lat[1] + " ms avg"
	}
	fmt.Fprintf(&sb, "| pgbench TPC-B, scale 10 | %.0f | %s | — | 1.0x |\n", pgtps, avg)
	for _, r := range []struct {
		name string
		res  loadResult
	}{{"ledger, wallet → hot account", hot}, {"ledger, wallet → wallet", pairs}} {
		fmt.Fprintf(&sb, "| %s | %.0f | %.1f / %.1f ms | %.1f | %.2fx |\n", r.name, r.res.tps, ms(r.res.p50), ms(r.res.p99), r.res.entriesPerBatch, r.res.tps/pgtps)
	}
	fmt.Fprintf(&sb, "\n| ledger run | ms/batch | load / apply / write / commit (ms per batch) | CPU µs per transfer: test process / PostgreSQL |\n|---|---|---|---|\n")
	for i, r := range []loadResult{hot, pairs} {
		fmt.Fprintf(&sb, "| %s | %.2f | %.2f / %.2f / %.2f / %.2f | %.0f / %.0f |\n", []string{"hot account", "wallet pairs"}[i], r.msPerBatch,
			r.phases[0], r.phases[1], r.phases[2], r.phases[3], cpu[i][0], cpu[i][1])
	}
	t.Log(sb.String())
}

// procCPU is a process's user+system CPU seconds (from /proc; 0 if unknown).
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	sy, _ := strconv.ParseFloat(f[12], 64)
	return (u + sy) / 100
}

// clusterCPU is the CPU seconds used so far by the test cluster's
// postmaster and its children (backends, WAL writer, checkpointer …).
func clusterCPU(cl *storetest.Cluster) float64 {
	if cl == nil {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(cl.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	ents, _ := os.ReadDir("/proc")
	total := 0.0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		f := strings.Fields(string(st)[strings.LastIndexByte(string(st), ')')+1:])
		if pid == pm || len(f) > 1 && f[1] == strconv.Itoa(pm) {
			total += procCPU(pid)
		}
	}
	return total
}

// BenchmarkResidentStatement: one page (100) of the statement of a
// resident whose wallet has 5,000 movements among 20,000 entries of other
// wallets, found through the chain (migration 0031), the oldest page
// (which walks the whole history) and the newest window (one day).
func BenchmarkResidentStatement(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) { benchStatement(b, filepath.Join(b.TempDir(), "ledger.db")) })
	b.Run("postgres", func(b *testing.B) { benchStatement(b, storetest.Postgres(b)) })
}

func benchStatement(b *testing.B, dsn string) {
	{
		l := benchLedger(b, dsn)
		ctx := context.Background()
		me := benchWallet(0)
		var reqs []TransferRequest
		for i := 0; i < 25_000; i++ {
			d := me
			if i%5 != 0 {
				d = benchWallet(1 + i%(benchWallets-1))
			}
			reqs = append(reqs, TransferRequest{Key: fmt.Sprint("hist-", i), Debit: d, Credit: benchHot, Amount: 1})
		}
		for len(reqs) > 0 {
			n := min(len(reqs), 2000)
			for _, r := range l.Batch(ctx, reqs[:n]) {
				if r.Err != nil {
					b.Fatal(r.Err)
				}
			}
			reqs = reqs[n:]
		}
		for _, w := range []struct {
			name     string
			from, to time.Time
		}{{"oldest-page", time.Time{}, time.Time{}}, {"last-day", time.Now().Add(-24 * time.Hour), time.Time{}}} {
			b.Run(w.name, func(b *testing.B) {
				for b.Loop() {
					es, _, err := l.Statement(ctx, me, w.from, w.to, "", 100)
					if err != nil || len(es) != 100 {
						b.Fatalf("%d entries, %v", len(es), err)
					}
				}
			})
		}
	}
}
