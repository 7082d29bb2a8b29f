package store_test

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

func TestMain(m *testing.M) { os.Exit(storetest.Main(m)) }

func TestOpenMigratesOnceOnBothBackends(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db, err := store.Open(ctx, dsn, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ms, _ := store.Migrations(db.Dialect)
		var n int
		if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != len(ms) || n == 0 {
			t.Fatalf("applied %d migrations, embedded %d", n, len(ms))
		}
		db.Close()
		// A second open applies nothing new and keeps the data.
		db, err = store.Open(ctx, dsn, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != len(ms) {
			t.Fatalf("after reopen %d migrations recorded, want %d", n, len(ms))
		}
		// Unique violations are recognised on both backends.
		if _, err := db.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ($1, $2)`, "k", "v"); err != nil {
			t.Fatal(err)
		}
		_, err = db.W.ExecContext(ctx, `INSERT INTO node_settings(name, value) VALUES ($1, $2)`, "k", "v2")
		if !store.IsUniqueViolation(err) {
			t.Fatalf("want unique violation, got %v", err)
		}
	})
}

func TestBothDialectsHaveTheSameMigrations(t *testing.T) {
	a, _ := store.Migrations(store.SQLite)
	b, _ := store.Migrations(store.Postgres)
	if len(a) != len(b) {
		t.Fatalf("sqlite has %d migrations, postgres %d", len(a), len(b))
	}
	for i := range a {
		if a[i].Name != b[i].Name {
			t.Fatalf("migration %d: sqlite %s, postgres %s", i, a[i].Name, b[i].Name)
		}
	}
}

func TestWrongPostgresPasswordIsAPlainMessage(t *testing.T) {
	c, err := storetest.SharedCluster()
	if err != nil {
		t.Skip(err)
	}
	_ = c
	// Port 1 on loopback: nothing listens; the error must say where, not panic.
	_, err = store.Open(context.Background(), "postgres://bob:sekret@127.0.0.1:1/city?sslmode=disable", store.Options{})
	if err == nil {
		t.Fatal("want an error")
	}
	if strings.Contains(err.Error(), "sekret") {
		t.Fatalf("error leaks the password: %v", err)
	}
	if !strings.Contains(err.Error(), "cannot connect to PostgreSQL bob@127.0.0.1:1/city") {
		t.Fatalf("unhelpful error: %v", err)
	}
}
