package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// `yikatong ledger check` runs beside a running node, on both backends:
// exit 0 and ok on right books; exit 1, the problem and a loud line when
// a balance was edited behind the ledger's back.
func TestCmdLedgerCheck(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		n := nodetest.Start(t, nodetest.Options{DB: dsn, Demo: true, DemoResidents: 20})
		args := []string{"ledger", "check", "--data", n.Dir, "--db", dsn}
		type answer struct {
			OK        bool     `json:"ok"`
			Transfers int64    `json:"transfers"`
			SumFen    int64    `json:"sum_fen"`
			JournalOK bool     `json:"journal_ok"`
			Problems  []string `json:"problems"`
		}
		check := func() (int, answer, string) {
			var out, errb strings.Builder
			code := run(args, strings.NewReader(""), &out, &errb)
			var a answer
			if code != 2 {
				if err := json.Unmarshal([]byte(out.String()), &a); err != nil {
					t.Fatalf("ledger check printed %q (%v); stderr %s", out.String(), err, errb.String())
				}
			}
			return code, a, errb.String()
		}
		code, a, msg := check()
		if code != 0 || !a.OK || !a.JournalOK || a.SumFen != 0 || a.Transfers < 40 {
			t.Fatalf("right books: exit %d %+v %s", code, a, msg)
		}
		if _, err := n.DB.W.ExecContext(context.Background(), `UPDATE ledger_accounts SET balance_fen = balance_fen + 1 WHERE id = 'ext:bank'`); err != nil {
			t.Fatal(err)
		}
		code, a, msg = check()
		if code != 1 || a.OK || a.SumFen != 1 || len(a.Problems) == 0 || !strings.Contains(msg, "NOT RIGHT") {
			t.Fatalf("edited balance: exit %d %+v %s", code, a, msg)
		}
		var out, errb strings.Builder
		if code := run([]string{"ledger", "check", "--data", n.Dir, "extra"}, strings.NewReader(""), &out, &errb); code != 2 {
			t.Fatalf("an extra argument: exit %d", code)
		}
		if code := run([]string{"ledger"}, strings.NewReader(""), &out, &errb); code != 2 {
			t.Fatalf("no subcommand: exit %d", code)
		}
		// Without --db a data directory that holds no SQLite database (a
		// node on PostgreSQL, or here one whose database is elsewhere) is
		// refused; no empty database is created to report on.
		errb.Reset()
		if code := run([]string{"ledger", "check", "--data", n.Dir}, strings.NewReader(""), &out, &errb); code != 1 || !strings.Contains(errb.String(), "holds no SQLite database") {
			t.Fatalf("no --db: exit %d %s", code, errb.String())
		}
		if _, err := os.Stat(filepath.Join(n.Dir, "yikatong.db")); !os.IsNotExist(err) {
			t.Fatalf("ledger check created a database in the data directory (%v)", err)
		}
	})
}
