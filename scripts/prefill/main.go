// Command prefill ages a stopped node's SQLite database for benchmarks: it
// adds scans, ledger journal entries and wallet accounts of residents who
// do not exist, so that the tables and their indexes are as large as after
// months of a city's traffic, and scripts/bench-scans.sh can measure a node
// that is not fresh (PREFILL_SCANS=…, docs/benchmarks.md).
//
//	go run ./scripts/prefill --db DATA/yikatong.db --scans 5000000 --accounts 2000000 --journal 5000000
//
// What it writes is shaped like real rows where the indexes care: scans
// spread over the node's terminals and 3,000 more, random idempotency keys,
// code nonces in issue-time order; journal entries with random idempotency
// keys under negative sequence numbers (before every real entry, so the
// chain the ledger continues is untouched), between accounts nobody uses.
// Balances stay zero-sum: the fake entries move money only between fake
// accounts, and the fake wallets hold nothing. Never run it on a real
// city's database.
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"time"

	_ "modernc.org/sqlite"
)

func main() {
	db := flag.String("db", "", "the node's SQLite file (the node must be stopped)")
	scans := flag.Int("scans", 0, "scans to add")
	accounts := flag.Int("accounts", 0, "wallet accounts to add")
	journal := flag.Int("journal", 0, "journal entries to add")
	flag.Parse()
	if *db == "" || *scans < 0 || *accounts < 0 || *journal < 0 {
		fmt.Fprintln(os.Stderr, "usage: prefill --db FILE [--scans N] [--accounts N] [--journal N]")
		os.Exit(2)
	}
	if err := run(*db, *scans, *accounts, *journal); err != nil {
		fmt.Fprintln(os.Stderr, "prefill:", err)
		os.Exit(1)
	}
}

// chunk rows go in per transaction.
const chunk = 250_000

func run(path string, scans, accounts, journal int) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	var terminals int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM terminals`).Scan(&terminals); err != nil {
		return err
	}
	if terminals == 0 {
		return fmt.Errorf("%s has no terminals: start the node with --demo once first", path)
	}
	var minSeq int64
	if err := db.QueryRowContext(ctx, `SELECT COALESCE(MIN(seq), 1) FROM ledger_journal`).Scan(&minSeq); err != nil {
		return err
	}
	minSeq = min(minSeq, 1)
	start := time.Now()
	base := time.Now().Add(-90 * 24 * time.Hour).UnixMilli()
	steps := []struct {
		what string
		n    int
		sql  string
	}{
		// One scan in five on a real terminal (its provider's), the rest on
		// 3,000 terminals of the same providers that the node does not know.
		{"scans", scans, `WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i+1 FROM n WHERE i < ?2),
			t AS (SELECT id, provider_id, row_number() OVER (ORDER BY id) - 1 AS k FROM terminals)
			INSERT INTO scans(terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, at)
			SELECT CASE WHEN i % 5 = 0 THEN t.id ELSE 'trm_aged' || (i % 3000) END, lower(hex(randomblob(8))), randomblob(32),
				'YK1:CN-000000:' || printf('%010x', (?3 + i * 2) / 1000) || ':' || lower(hex(randomblob(12))),
				t.provider_id, 'aged', 'res_aged' || lower(hex(randomblob(8))), 'final', 'accepted', ?3 + i * 2
			FROM n JOIN t ON t.k = i % ?4`},
		{"accounts", accounts, `WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i+1 FROM n WHERE i < ?2)
			INSERT INTO ledger_accounts(id, kind, currency, created_at)
			SELECT 'w:res_aged' || lower(hex(randomblob(8))), 'wallet', 'CNY', ?3 FROM n`},
		{"journal entries", journal, `WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i+1 FROM n WHERE i < ?2)
			INSERT INTO ledger_journal(seq, idem_key, type, kind, debit, credit, amount, currency, at, hash)
			SELECT ?5 - ?6 + i - 1, 'scan:trm_aged' || (i % 3000) || ':' || lower(hex(randomblob(8))) || ':0', 'transfer', 'aged',
				'w:res_aged-nobody', 'prv:aged-nobody', 1, 'CNY', ?3 + i * 2, randomblob(32)
			FROM n`},
	}
	for _, st := range steps {
		for done := 0; done < st.n; done += chunk {
			n := min(chunk, st.n-done)
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, st.sql, done+1, done+n, base, terminals, minSeq, journal); err != nil {
				tx.Rollback()
				return fmt.Errorf("%s: %w", st.what, err)
			}
			if err := tx.Commit(); err != nil {
				return err
			}
		}
		if st.n > 0 {
			fmt.Fprintf(os.Stderr, "prefill: %d %s (%s)\n", st.n, st.what, time.Since(start).Round(time.Second))
		}
	}
	_, err = db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`)
	return err
}
