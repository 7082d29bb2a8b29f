package scan

import (
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/store"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestScanKeyLookupsSearchThePrimaryKey: every read of scans by
// (terminal, key) — the ledger batch's Claim, a re-sent offline batch, a
// retried scan — searches the primary key (idem_key, terminal_id) on
// SQLite, whichever order the query names the columns in (migration 0047
// turned the key round). A read that fell back to scanning the table
// would go unnoticed by every functional test and cost a whole-table read
// per batch.
func TestScanKeyLookupsSearchThePrimaryKey(t *testing.T) {
	db := storetest.Open(t, storetest.SQLite(t))
	for _, c := range []struct {
		name, sql string
		args      []any
	}{
		{"Claim (keysSQL)", keysSQL(false, 2), []any{"k1", "trm_a", "k2", "trm_b"}},
		{"one retried scan", `SELECT ` + recordCols + ` FROM scans WHERE terminal_id = $1 AND idem_key = $2`, []any{"trm_a", "k1"}},
		{"a re-sent batch (lookupMany)", `SELECT ` + recordCols + ` FROM scans WHERE terminal_id = $1 AND idem_key IN ($2, $3)`, []any{"trm_a", "off:1", "off:2"}},
	} {
		p := storetest.QueryPlan(t, db.R, c.sql, c.args...)
		if !strings.Contains(p, "SEARCH scans USING INDEX sqlite_autoindex_scans") || !strings.Contains(p, "idem_key=? AND terminal_id=?") {
			t.Errorf("%s: plan %q, want a search of the primary key (idem_key, terminal_id)", c.name, p)
		}
	}
}

// TestNonceLookupsUseThePartialIndex: a code's nonce is unique through a
// partial index of the scans that have one (migration 0048), and every
// read of scans by nonce — the batch's Claim, the legacy check of a nonce
// stored under its old key — searches that index on both backends. A
// planner that could not prove the index applies would read the whole
// table once per batch.
func TestNonceLookupsUseThePartialIndex(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		db := storetest.Open(t, dsn)
		pg := db.Dialect == store.Postgres
		for _, c := range []struct {
			name, sql string
			args      []any
		}{
			{"Claim (ctiPrefix)", listSQL(pg, ctiPrefix, 2), []any{"YK1:iss:1:n1", "YK1:iss:1:n2"}},
			{"a nonce under its old key", legacyNonceSQL, []any{"n1"}},
		} {
			if plan := storetest.Plan(t, db, c.sql, c.args...); !strings.Contains(plan, "scans_cti") {
				t.Errorf("%s: plan %q, want a search of scans_cti", c.name, plan)
			}
		}
	})
}
