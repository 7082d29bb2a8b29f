package node_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/terminal"
	"github.com/yikatong/yikatong/internal/termsim"
)

// Two node processes share one database: a terminal disabled on one must
// be refused on the other within the stated bound (terminal.CacheTTL and
// auth's CacheTTL, 2 s), for online scans and batch uploads, even when the
// other node had just served it (caches warm).
func TestDisableAcrossTwoNodes(t *testing.T) {
	a := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	b := nodetest.Start(t, nodetest.Options{Dir: a.Dir})
	var bus *node.DemoTerminal
	for i, tm := range a.Demo.Terminals {
		if tm.Scenario == "transit.bus" {
			bus = &a.Demo.Terminals[i]
		}
	}
	if bus == nil {
		t.Fatal("no bus terminal")
	}
	card := a.Demo.Residents[0].CardNumber
	scanOn := func(base, token string, i int) (int, string) {
		r := nodetest.NewClient(base, token).Do(t, "POST", "/v1/scans", map[string]any{
			"idempotency_key": fmt.Sprintf("rv-%d-%d", time.Now().UnixNano(), i), "scenario": "transit.bus", "card_number": card})
		return r.Status, r.Code()
	}
	// Warm b's caches.
	if st, code := scanOn(b.URL, bus.Token, 0); st != 200 {
		t.Fatalf("scan on b: %d %s", st, code)
	}
	op := a.Client(a.Demo.Staff["operator"].Token)
	op.JSON(t, "POST", "/v1/terminals/"+bus.ID+"/disable", nil, 200, nil)
	// On a: at once.
	if st, code := scanOn(a.URL, bus.Token, 1); st == 200 {
		t.Fatalf("disabled terminal scanned on the node that disabled it: %d %s", st, code)
	}
	time.Sleep(terminal.CacheTTL + 300*time.Millisecond)
	if st, code := scanOn(b.URL, bus.Token, 2); st == 200 {
		t.Fatalf("disabled terminal still scans on the other node after %v: %d %s", terminal.CacheTTL, st, code)
	}
	key, err := terminal.ParseBatchKey(bus.BatchKey)
	if err != nil {
		t.Fatal(err)
	}
	_, err = termsim.UploadRecords(context.Background(), http.DefaultClient, b.URL, bus.Token, bus.ID, key,
		[]terminal.Record{{ID: "rv-1", Seq: 1, At: time.Now().UTC(), Scenario: "transit.bus", CardNumber: card}}, time.Now())
	if err == nil {
		t.Fatal("disabled terminal uploaded a batch on the other node")
	}
}
