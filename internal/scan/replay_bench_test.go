package scan

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/store"
)

// BenchmarkReplayKeyOrder writes scan rows the way a ledger batch does (16
// per commit, one multi-row INSERT) into a scans table that already holds
// 200,000 rows, with the nonce keyed as it comes (random) or time-ordered
// (replayKeys). Reported: µs per row, and WAL frames (pages) per commit.
// Durability is off (synchronous=OFF), so the figure is the B-tree and WAL
// work the committer does, not the disk's fsync.
//
//	go test ./internal/scan -run '^$' -bench ReplayKeyOrder -benchtime 3000x
func BenchmarkReplayKeyOrder(b *testing.B) {
	for _, mode := range []string{"random", "time-ordered"} {
		b.Run(mode, func(b *testing.B) {
			ctx := context.Background()
			db, err := store.Open(ctx, filepath.Join(b.TempDir(), "bench.db"), store.Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			conn, err := db.W.Conn(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.ExecContext(ctx, "PRAGMA synchronous=OFF"); err != nil {
				b.Fatal(err)
			}
			const per = 16
			q := insertSQL(false, per)
			answer := make([]byte, 180)
			hexN := func(n int) string { x := make([]byte, n); rand.Read(x); return hex.EncodeToString(x) }
			batch := func() {
				args := make([]any, 0, per*rowCols)
				for i := 0; i < per; i++ {
					cti := "YK1:CN-410100:" + hexN(16)
					if mode == "time-ordered" {
						cti = fmt.Sprintf("YK1:CN-410100:%010x:%s", time.Now().Unix(), hexN(16))
					}
					args = append(args, fmt.Sprintf("term-%03d", i*7%64), hexN(16), []byte(hexN(16)), cti, "prov-1", "library.entry",
						"res-"+hexN(8), stateFinal, Accepted, "", 0, 0, 0, "", answer, time.Now().UnixMilli())
				}
				tx, err := conn.BeginTx(ctx, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := tx.ExecContext(ctx, q, args...); err != nil {
					b.Fatal(err)
				}
				if err := tx.Commit(); err != nil {
					b.Fatal(err)
				}
			}
			for i := 0; i < 200_000/per; i++ {
				batch()
			}
			b.ResetTimer()
			t0 := time.Now()
			for i := 0; i < b.N; i++ {
				batch()
			}
			b.ReportMetric(float64(time.Since(t0).Microseconds())/float64(b.N*per), "µs/row")
			// Pages written to the WAL per commit: 100 more batches with
			// automatic checkpoints off, then the log's length.
			b.StopTimer()
			for _, q := range []string{"PRAGMA wal_checkpoint(TRUNCATE)", "PRAGMA wal_autocheckpoint=0"} {
				if _, err := conn.ExecContext(ctx, q); err != nil {
					b.Fatal(err)
				}
			}
			for i := 0; i < 100; i++ {
				batch()
			}
			var busy, frames, copied int
			if err := conn.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &frames, &copied); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(frames)/100, "frames/commit")
		})
	}
}
