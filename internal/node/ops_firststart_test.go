package node_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestOpsProcessesFirstStartTogether: the node processes of a new city,
// started at the same moment on one fresh PostgreSQL database and one
// shared data directory (a deployment rolled out at once), all come up,
// and the city they make is one: one current signing key. The same for
// processes started at once on one new SQLite data directory (a unit
// file and an operator's manual start).
func TestOpsProcessesFirstStartTogether(t *testing.T) {
	t.Run("postgres", func(t *testing.T) {
		if testing.Short() {
			t.Skip("PostgreSQL")
		}
		firstStartTogether(t, storetest.Postgres)
	})
	t.Run("sqlite", func(t *testing.T) {
		firstStartTogether(t, func(testing.TB) string { return "" })
	})
}

func firstStartTogether(t *testing.T, newDB func(testing.TB) string) {
	for round := 0; round < 2; round++ {
		dsn := newDB(t)
		dir := filepath.Join(t.TempDir(), "data")
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		const procs = 4
		nodes := make([]*node.Node, procs)
		errs := make([]error, procs)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				nodes[i], errs[i] = node.Open(context.Background(), node.Config{DataDir: dir, DB: dsn, Logger: quiet})
			}()
		}
		close(start)
		wg.Wait()
		kids := map[string]bool{}
		for i, err := range errs {
			if err != nil {
				t.Errorf("round %d: process %d: %v", round, i, err)
				continue
			}
			defer nodes[i].Close()
			ks, err := nodes[i].Keys.PublicKeys(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, k := range ks {
				if k.NotAfter.IsZero() {
					kids[fmt.Sprintf("%x", k.Kid)] = true
				}
			}
		}
		if t.Failed() {
			return
		}
		if len(kids) != 1 {
			t.Errorf("round %d: %d current signing keys: %v", round, len(kids), kids)
		}
		t.Logf("round %d: %d signing keys known: %v", round, len(kids), kids)
	}
}
