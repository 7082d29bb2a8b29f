package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestPreparedReads: QueryRow and Query answer like the pool's own
// methods, concurrently, across a schema change, past the cache's cap, and
// report a bad statement as an error.
func TestPreparedReads(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db := storetest.Open(t, dsn)
		for i := 0; i < 50; i++ {
			if _, err := db.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ($1, $2)`, fmt.Sprint("k", i), fmt.Sprint("v", i)); err != nil {
				t.Fatal(err)
			}
		}
		const q = `SELECT value FROM node_settings WHERE name = $1`
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 200; i++ {
					k := (i*7 + g) % 50
					var v string
					if err := db.QueryRow(ctx, q, fmt.Sprint("k", k)).Scan(&v); err != nil || v != fmt.Sprint("v", k) {
						errs <- fmt.Errorf("k%d: %q %v", k, v, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		var v string
		if err := db.QueryRow(ctx, q, "missing").Scan(&v); !errors.Is(err, sql.ErrNoRows) {
			t.Fatalf("missing row: %v", err)
		}
		// A schema change after the statement was prepared.
		if _, err := db.W.ExecContext(ctx, `ALTER TABLE node_settings ADD COLUMN note TEXT NOT NULL DEFAULT 'n'`); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow(ctx, q, "k3").Scan(&v); err != nil || v != "v3" {
			t.Fatalf("after a schema change: %q %v", v, err)
		}
		rows, err := db.Query(ctx, `SELECT name, note FROM node_settings WHERE name LIKE $1 ORDER BY name`, "k1%")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var name, note string
			if err := rows.Scan(&name, &note); err != nil || note != "n" {
				t.Fatalf("row %d: %q %q %v", n, name, note, err)
			}
			n++
		}
		rows.Close()
		if n != 11 { // k1, k10 … k19
			t.Fatalf("%d rows, want 11", n)
		}
		// More distinct texts than the cache holds: all still answer.
		for i := 0; i < 300; i++ {
			var got int
			if err := db.QueryRow(ctx, fmt.Sprintf(`SELECT %d + COUNT(*) - COUNT(*) FROM node_settings WHERE name = $1`, i), "k1").Scan(&got); err != nil || got != i {
				t.Fatalf("text %d: %d %v", i, got, err)
			}
		}
		if err := db.QueryRow(ctx, `SELECT nothing FROM no_such_table`).Scan(&v); err == nil {
			t.Fatal("a bad statement answered")
		}
		if _, err := db.Query(ctx, `SELECT nothing FROM no_such_table`); err == nil {
			t.Fatal("a bad statement answered")
		}
	})
}
