package scan

import (
	"context"
	"database/sql"
	"testing"

	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// TestDebtCheckWriteInATransaction: debtCheck answers through Write as
// well, in a batch that needs a database/sql transaction (one that mixes
// it with an attacher that is not a PipelineAttacher): a resident with an
// accepted debt row may owe, one whose debt row was declined and one with
// none do not; more residents than one query takes are answered too.
func TestDebtCheckWriteInATransaction(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		db := storetest.Open(t, dsn)
		ctx := context.Background()
		for i, r := range []struct {
			resident, decision string
			debt               int64
		}{{"r_owes", "accepted", 200}, {"r_declined", "declined", 200}, {"r_paid", "accepted", 0}} {
			if _, err := db.W.ExecContext(ctx, `INSERT INTO scans(terminal_id, idem_key, req_hash, provider_id, scenario, resident_id, state, decision, debt_fen, at)
				VALUES ('trm_t', $1, $2, 'prv_bus', 'transit.bus', $3, 'final', $4, $5, 1)`, "k"+r.resident, []byte{byte(i)}, r.resident, r.decision, r.debt); err != nil {
				t.Fatal(err)
			}
		}
		d := debtCheck{&debtProbe{s: &Service{Deps: Deps{DB: db}}}}
		var atts []*ledger.Attachment
		ask := map[string]*debtAsk{}
		for _, id := range []string{"r_owes", "r_declined", "r_paid", "r_none"} {
			ask[id] = &debtAsk{resident: id}
			atts = append(atts, &ledger.Attachment{To: d, Value: ask[id]})
		}
		for i := 0; i < maxClass+10; i++ { // a second query's worth
			atts = append(atts, &ledger.Attachment{To: d, Value: &debtAsk{resident: "r_many"}})
		}
		err := db.Tx(ctx, func(tx *sql.Tx) error {
			if err := d.Claim(ctx, tx, atts); err != nil {
				return err
			}
			return d.Write(ctx, tx, atts)
		})
		if err != nil {
			t.Fatal(err)
		}
		for id, want := range map[string]bool{"r_owes": true, "r_declined": false, "r_paid": false, "r_none": false} {
			if got := ask[id].has(); got != want {
				t.Errorf("%s: may owe %v, want %v", id, got, want)
			}
		}
		if calls, queries := d.p.stats(); calls != int64(len(atts)) || queries != 2 {
			t.Errorf("counted %d questions in %d queries, want %d in 2", calls, queries, len(atts))
		}
	})
}
