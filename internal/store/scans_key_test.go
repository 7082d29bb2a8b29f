package store_test

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// The scans table as migrations 0041–0046 left it: primary key
// (terminal_id, idem_key).
const scansBefore0047 = `DROP TABLE scans;
CREATE TABLE scans (
    terminal_id TEXT NOT NULL,
    idem_key    TEXT NOT NULL,
    req_hash    BLOB NOT NULL,
    cti         TEXT UNIQUE,
    provider_id TEXT NOT NULL,
    scenario    TEXT NOT NULL,
    resident_id TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL,
    decision    TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    charged_fen BIGINT NOT NULL DEFAULT 0,
    debt_fen    BIGINT NOT NULL DEFAULT 0,
    plan        TEXT NOT NULL DEFAULT '',
    offline     INTEGER NOT NULL DEFAULT 0,
    answer      BLOB,
    at          BIGINT NOT NULL,
    PRIMARY KEY (terminal_id, idem_key)
);
CREATE INDEX scans_provider_at ON scans(provider_id, at);
CREATE INDEX scans_debt ON scans(resident_id) WHERE debt_fen > 0;
CREATE INDEX scans_pending ON scans(state, at) WHERE state = 'pending';
DELETE FROM schema_migrations WHERE name IN ('0047_scans_key_first', '0048_scans_cti_partial');`

// TestScansKeyFirstMigrationKeepsEveryRow: upgrading a database whose
// scans table has the terminal first in its primary key (through both
// rebuilds, 0047 and 0048) keeps every row and column, and afterwards the
// key (idem_key, terminal_id), the one use of a code's nonce (now a
// partial index: scans without a nonce are not in it) and the three
// secondary indexes hold as before.
func TestScansKeyFirstMigrationKeepsEveryRow(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		ctx := context.Background()
		db, err := store.Open(ctx, dsn, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		old := scansBefore0047
		if db.Dialect == store.Postgres {
			old = store.ForPostgres(old)
		}
		for _, stmt := range strings.Split(old, ";\n") {
			if _, err := db.W.ExecContext(ctx, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
		ins := `INSERT INTO scans(terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, plan, offline, answer, at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)`
		type row struct {
			terminal, key string
			hash          []byte
			cti           any
			provider      string
			scenario      string
			resident      string
			state         string
			decision      string
			reason        string
			charged, debt int64
			plan          string
			offline       int64
			answer        []byte
			at            int64
		}
		want := []row{
			{"trm_a", "k1", []byte{1, 2}, "YK1:iss:0000000001:n1", "bus", "transit.bus", "r1", "final", "accepted", "", 200, 0, "", 0, []byte("sealed"), 1000},
			{"trm_b", "k1", []byte{3}, nil, "bus", "transit.bus", "r2", "pending", "", "", 0, 0, `[{"a":1}]`, 0, nil, 2000},
			{"trm_a", "off:7", []byte{4}, nil, "metro", "transit.metro_exit", "r3", "final", "accepted", "", 500, 300, `[{"b":2}]`, 1, nil, 3000},
		}
		for _, r := range want {
			if _, err := db.W.ExecContext(ctx, ins, r.terminal, r.key, r.hash, r.cti, r.provider, r.scenario, r.resident, r.state, r.decision, r.reason, r.charged, r.debt, r.plan, r.offline, r.answer, r.at); err != nil {
				t.Fatal(err)
			}
		}
		ms, err := store.Migrations(db.Dialect)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.MigrateWith(ctx, db, ms); err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"0047_scans_key_first", "0048_scans_cti_partial"} {
			var applied int
			if err := db.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE name = $1`, m).Scan(&applied); err != nil || applied != 1 {
				t.Fatalf("%s recorded %d times (%v)", m, applied, err)
			}
		}
		for _, w := range want {
			var g row
			var cti *string
			err := db.R.QueryRowContext(ctx, `SELECT terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, plan, offline, answer, at
				FROM scans WHERE terminal_id = $1 AND idem_key = $2`, w.terminal, w.key).Scan(
				&g.terminal, &g.key, &g.hash, &cti, &g.provider, &g.scenario, &g.resident, &g.state, &g.decision, &g.reason, &g.charged, &g.debt, &g.plan, &g.offline, &g.answer, &g.at)
			if err != nil {
				t.Fatalf("row %s/%s after the migration: %v", w.terminal, w.key, err)
			}
			if cti != nil {
				g.cti = *cti
			}
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("row %s/%s: %+v, want %+v", w.terminal, w.key, g, w)
			}
		}
		// The key is still unique per terminal, and only per terminal; a
		// nonce is still used once.
		if _, err := db.W.ExecContext(ctx, ins, "trm_a", "k1", []byte{9}, nil, "bus", "transit.bus", "", "final", "declined", "", 0, 0, "", 0, nil, 4000); !store.IsUniqueViolation(err) {
			t.Fatalf("the same key of the same terminal again: %v, want a unique violation", err)
		}
		if _, err := db.W.ExecContext(ctx, ins, "trm_c", "k1", []byte{9}, nil, "bus", "transit.bus", "", "final", "declined", "", 0, 0, "", 0, nil, 4000); err != nil {
			t.Fatalf("the same key of another terminal: %v", err)
		}
		if _, err := db.W.ExecContext(ctx, ins, "trm_c", "k2", []byte{9}, "YK1:iss:0000000001:n1", "bus", "transit.bus", "", "final", "declined", "", 0, 0, "", 0, nil, 4000); !store.IsUniqueViolation(err) {
			t.Fatalf("a used nonce again: %v, want a unique violation", err)
		}
		var idx []string
		q := `SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'scans' AND name LIKE 'scans_%' ORDER BY name`
		if db.Dialect == store.Postgres {
			q = `SELECT indexname FROM pg_indexes WHERE tablename = 'scans' AND indexname LIKE 'scans_%' AND indexname NOT LIKE '%pkey' ORDER BY indexname`
		}
		rows, err := db.R.QueryContext(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var n string
			rows.Scan(&n)
			idx = append(idx, n)
		}
		rows.Close()
		if got := strings.Join(idx, " "); got != "scans_cti scans_debt scans_pending scans_provider_at" {
			t.Fatalf("indexes on scans after the migration: %q", got)
		}
	})
}
