package scan_test

import (
	"context"
	"encoding/hex"
	"regexp"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// TestReplayKeysAcrossTheUpgrade: nonces are stored time-ordered now; a
// code whose nonce an older version stored under the old key (issued
// before the cutover) is still refused replayed, online and offline, and
// new rows carry the new key.
func TestReplayKeysAcrossTheUpgrade(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		c := setup(t, dsn, []string{"transit.bus"})
		ctx := context.Background()
		adult := c.people[0]
		usedBefore := code(t, c.tn.Node, adult.card)
		usedOffline := code(t, c.tn.Node, adult.card)
		unused := code(t, c.tn.Node, adult.card)
		legacy := func(cd string) string {
			d, err := ecode.Decode(cd)
			if err != nil {
				t.Fatal(err)
			}
			return "YK1:" + d.Claims.Issuer + ":" + hex.EncodeToString(d.Claims.CTI)
		}
		// What the version before this one left: two rows keyed by the old
		// form, and a cutover after the codes were issued.
		for i, cd := range []string{usedBefore, usedOffline} {
			if _, err := c.tn.DB.W.ExecContext(ctx, `INSERT INTO scans(terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, charged_fen, at)
				VALUES ($1, $2, $3, $4, $5, 'transit.bus', $6, 'final', 'accepted', 200, $7)`,
				c.term, []string{"old-1", "old-2"}[i], []byte{1}, legacy(cd), c.provider, adult.id, time.Now().UnixMilli()); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := c.tn.DB.W.ExecContext(ctx, `UPDATE schema_migrations SET applied_at = $1 WHERE name = '0046_replay_keys_by_time'`, time.Now().Add(time.Minute).UnixMilli()); err != nil {
			t.Fatal(err)
		}
		dir := c.tn.Dir
		c.tn.Stop()
		c.tn = nodetest.Start(t, nodetest.Options{DB: dsn, Dir: dir})
		c.tc = c.tn.Client(c.tc.Token)

		if a, r := c.scan(t, map[string]any{"idempotency_key": "new-1", "scenario": "transit.bus", "code": usedBefore}); r.Status != 200 || a.Decision != "declined" || a.Reason != "replayed" {
			t.Fatalf("a code used under its old key: %d %+v", r.Status, a)
		}
		var rep scan.BatchReport
		c.tc.JSON(t, "POST", "/v1/terminals/"+c.term+"/batches", signBatch(t, c, "after-upgrade", []terminal.Record{
			{ID: "r1", Seq: 1, At: time.Now().Add(-time.Second), Scenario: "transit.bus", Code: usedOffline},
		}), 200, &rep)
		if len(rep.Items) != 1 || rep.Items[0].Status != "declined" || rep.Items[0].Reason != "replayed" {
			t.Fatalf("offline record of a code used under its old key: %+v", rep.Items)
		}
		if a, _ := c.scan(t, map[string]any{"idempotency_key": "new-2", "scenario": "transit.bus", "code": unused}); a.Decision != "accepted" {
			t.Fatalf("an unused code: %+v", a)
		}
		if a, _ := c.scan(t, map[string]any{"idempotency_key": "new-3", "scenario": "transit.bus", "code": unused}); a.Reason != "replayed" {
			t.Fatalf("its second use: %+v", a)
		}
		var cti string
		if err := c.tn.DB.R.QueryRowContext(ctx, `SELECT cti FROM scans WHERE terminal_id = $1 AND idem_key = 'new-2'`, c.term).Scan(&cti); err != nil {
			t.Fatal(err)
		}
		d, _ := ecode.Decode(unused)
		want := regexp.MustCompile(`^YK1:` + regexp.QuoteMeta(d.Claims.Issuer) + `:[0-9a-f]{10}:` + hex.EncodeToString(d.Claims.CTI) + `$`)
		if !want.MatchString(cti) {
			t.Fatalf("stored nonce key %q, want the time-ordered form", cti)
		}
		c.checkBooks(t, 200)
	})
}
