package scan_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

// A stored scan's request hash must not give its PIN away: every other
// input of the hash (card number, scenario, amount) can be read from the
// database, so an unkeyed hash could be searched through all million PINs
// by anyone holding a copy of it.
func TestStoredHashHidesThePIN(t *testing.T) {
	ctx := context.Background()
	c := setup(t, storetest.SQLite(t), []string{"library.loan"})
	p := c.people[0]
	body := map[string]any{"idempotency_key": "pin-1", "scenario": "library.loan", "card_number": p.card, "pin": p.pin}
	a, r1 := c.scan(t, body)
	if a.Decision != "accepted" {
		t.Fatalf("scan: %s", r1.Body)
	}
	var stored []byte
	if err := c.tn.DB.R.QueryRowContext(ctx, `SELECT req_hash FROM scans WHERE idem_key = 'pin-1'`).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	// The search an attacker with the database would run.
	for pin := 0; pin < 1_000_000; pin++ {
		if bytes.Equal(stored, scan.UnkeyedRequestHash("library.loan", "", p.card, 0, fmt.Sprintf("%06d", pin))) {
			t.Fatalf("the stored hash gives the PIN away: %06d", pin)
		}
		if pin == 2000 && testing.Short() {
			break
		}
	}
	// Retries still work: same PIN, same answer; another PIN, a conflict.
	if _, r := c.scan(t, body); string(r.Body) != string(r1.Body) {
		t.Fatalf("retry: %s", r.Body)
	}
	other := map[string]any{"idempotency_key": "pin-1", "scenario": "library.loan", "card_number": p.card, "pin": "000001"}
	if p.pin == "000001" {
		other["pin"] = "000002"
	}
	if _, r := c.scan(t, other); r.Status != 409 || r.Code() != "idempotency_conflict" {
		t.Fatalf("other PIN: %d %s", r.Status, r.Body)
	}
	// A row an older version stored with the unkeyed hash: a retry that
	// spans the upgrade is still recognised.
	if _, err := c.tn.DB.W.ExecContext(ctx, `UPDATE scans SET req_hash = $1 WHERE idem_key = 'pin-1'`,
		scan.UnkeyedRequestHash("library.loan", "", p.card, 0, p.pin)); err != nil {
		t.Fatal(err)
	}
	if _, r := c.scan(t, body); string(r.Body) != string(r1.Body) {
		t.Fatalf("retry of an older row: %d %s", r.Status, r.Body)
	}
	if _, r := c.scan(t, other); r.Status != 409 {
		t.Fatalf("other PIN on an older row: %d %s", r.Status, r.Body)
	}
}
