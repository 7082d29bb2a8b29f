package ledger

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
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
	benchTransfers(b, filepath.Join(b.TempDir(), "ledger.db"))
}

func BenchmarkLedgerTransfers64Postgres(b *testing.B) {
	benchTransfers(b, storetest.Postgres(b))
}

// benchTransfers: 64 concurrent callers; each transfer debits a random one
// of 4,000 wallets and credits one hot account (as every fare on a bus
// company's lines credits that company).
func benchTransfers(b *testing.B, dsn string) {
	ctx := context.Background()
	db, err := store.Open(ctx, dsn, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	l, err := Open(ctx, db, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	const wallets, callers = 4000, 64
	if _, err := l.CreateAccount(ctx, Account{ID: "hot", Kind: KindReceivable}); err != nil {
		b.Fatal(err)
	}
	var fund []TransferRequest
	for i := 0; i < wallets; i++ {
		id := fmt.Sprint("w", i)
		if _, err := l.CreateAccount(ctx, Account{ID: id, Kind: KindWallet}); err != nil {
			b.Fatal(err)
		}
		fund = append(fund, TransferRequest{Key: "fund-" + id, Debit: AccountBank, Credit: id, Amount: 1 << 40})
	}
	for _, r := range l.Batch(ctx, fund) {
		if r.Err != nil {
			b.Fatal(r.Err)
		}
	}
	s0 := l.Stats()
	lat := make([][]time.Duration, callers)
	var next atomic.Int64
	var failed atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(c), 7))
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				t0 := time.Now()
				_, err := l.Transfer(ctx, TransferRequest{Key: fmt.Sprint("b-", i), Debit: fmt.Sprint("w", r.IntN(wallets)), Credit: "hot",
					Amount: 1 + r.Int64N(500), Kind: "fare", Meta: map[string]string{"scenario": "bus"}})
				lat[c] = append(lat[c], time.Since(t0))
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	if failed.Load() > 0 {
		b.Fatalf("%d transfers failed", failed.Load())
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000 }
	b.ReportMetric(float64(b.N)/el.Seconds(), "tx/s")
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
	s1 := l.Stats()
	if n := s1.Batches - s0.Batches; n > 0 {
		b.ReportMetric(float64(s1.Entries-s0.Entries)/float64(n), "entries/batch")
		b.ReportMetric(float64((s1.BatchTime-s0.BatchTime).Microseconds())/1000/float64(n), "ms/batch")
	}
	if r, err := l.Check(ctx); err != nil || !r.OK() {
		b.Fatalf("check after benchmark: %+v %v", r, err)
	}
}
