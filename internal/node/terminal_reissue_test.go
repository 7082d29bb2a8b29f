package node_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/terminal"
	"github.com/yikatong/yikatong/internal/termsim"
)

// A bus company replaces a validator (or its token leaked): the operator
// reissues the terminal's credentials over the API. The old token and
// batch key stop working at once, the new ones work, the replacement
// numbers its offline records after the mark it is handed, and a
// disabled terminal comes back into service only this way.
func TestReissueTerminalCredentials(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	var bus node.DemoTerminal
	for _, tm := range tn.Demo.Terminals {
		if tm.Scenario == "transit.bus" {
			bus = tm
		}
	}
	if bus.ID == "" {
		t.Fatal("no bus terminal")
	}
	card := tn.Demo.Residents[0].CardNumber
	op := tn.Client(tn.Demo.Staff["operator"].Token)
	ctx := context.Background()
	scan := func(token string) nodetest.Response {
		return nodetest.NewClient(tn.URL, token).Do(t, "POST", "/v1/scans", map[string]any{
			"idempotency_key": fmt.Sprintf("rk-%d", time.Now().UnixNano()), "scenario": "transit.bus", "card_number": card})
	}
	upload := func(token, batchKey string, recs ...terminal.Record) (int, error) {
		key, err := terminal.ParseBatchKey(batchKey)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := termsim.UploadRecords(ctx, http.DefaultClient, tn.URL, token, bus.ID, key, recs, time.Now())
		return rep.Applied, err
	}
	rec := func(seq int64, at time.Time) terminal.Record {
		return terminal.Record{ID: fmt.Sprintf("rk-rec-%d", seq), Seq: seq, At: at.UTC(), Scenario: "transit.bus", CardNumber: card}
	}

	// The old device uploads two offline records: the mark is at 2.
	now := time.Now()
	if n, err := upload(bus.Token, bus.BatchKey, rec(1, now.Add(-2*time.Minute)), rec(2, now.Add(-time.Minute))); err != nil || n != 2 {
		t.Fatalf("old device's batch: applied %d, %v", n, err)
	}

	var out node.ReissuedTerminal
	op.JSON(t, "POST", "/v1/terminals/"+bus.ID+"/credentials", nil, 200, &out)
	if out.Terminal.ID != bus.ID || out.Terminal.Disabled || out.OfflineSeq != 2 {
		t.Fatalf("reissue answered %+v", out)
	}
	if out.Credentials.Token == "" || out.Credentials.Token == bus.Token || out.Credentials.BatchKey == "" || out.Credentials.BatchKey == bus.BatchKey {
		t.Fatalf("reissue did not hand out new credentials: %+v", out.Credentials)
	}
	if out.Terminal.PublicKey == "" {
		t.Fatal("reissued terminal has no public key")
	}

	// Old token: refused at once on this node. New one: scans.
	if r := scan(bus.Token); r.Status != 401 {
		t.Fatalf("old token after reissue: %d %s", r.Status, r.Code())
	}
	if r := scan(out.Credentials.Token); r.Status != 200 {
		t.Fatalf("new token: %d %s", r.Status, r.Code())
	}
	// A batch signed with the old key, sent with the new token: refused.
	if _, err := upload(out.Credentials.Token, bus.BatchKey, rec(3, time.Now())); apperr.CodeOf(err) != apperr.BatchTampered {
		t.Fatalf("batch signed with the old key after reissue: %v (code %s), want batch_tampered", err, apperr.CodeOf(err))
	}
	// The replacement numbers after the mark it was handed: applied.
	if n, err := upload(out.Credentials.Token, out.Credentials.BatchKey, rec(out.OfflineSeq+1, time.Now())); err != nil || n != 1 {
		t.Fatalf("replacement's first batch: applied %d, %v", n, err)
	}

	// Disabled, then reissued: back in service with the newest credentials only.
	op.JSON(t, "POST", "/v1/terminals/"+bus.ID+"/disable", nil, 200, nil)
	if r := scan(out.Credentials.Token); r.Code() != string(apperr.TerminalDisabled) && r.Status != 401 {
		t.Fatalf("disabled terminal scanned: %d %s", r.Status, r.Code())
	}
	var again node.ReissuedTerminal
	op.JSON(t, "POST", "/v1/terminals/"+bus.ID+"/credentials", nil, 200, &again)
	if again.Terminal.Disabled || again.OfflineSeq != 3 {
		t.Fatalf("reissue of a disabled terminal answered %+v", again)
	}
	if r := scan(out.Credentials.Token); r.Status != 401 {
		t.Fatalf("token from before the disable works again: %d %s", r.Status, r.Code())
	}
	if r := scan(again.Credentials.Token); r.Status != 200 {
		t.Fatalf("reissued token of a re-enabled terminal: %d %s", r.Status, r.Code())
	}

	// Who may: the operator only; a provider's staff may not hand out
	// credentials, even for their own terminal.
	_, busStaff := providerStaff(t, tn, bus.Provider, "bus_wu")
	if r := tn.Client(busStaff).Do(t, "POST", "/v1/terminals/"+bus.ID+"/credentials", nil); r.Status != 403 {
		t.Fatalf("provider staff reissued: %d %s", r.Status, r.Code())
	}
	if r := op.Do(t, "POST", "/v1/terminals/trm_nosuch/credentials", nil); r.Status != 404 || r.Code() != string(apperr.NotFound) {
		t.Fatalf("unknown terminal: %d %s", r.Status, r.Code())
	}
	if r := scan(again.Credentials.Token); r.Status != 200 {
		t.Fatalf("refused reissues touched the terminal: %d %s", r.Status, r.Code())
	}

	// A terminal of a disabled provider stays disabled: conflict.
	op.JSON(t, "POST", "/v1/providers/"+bus.Provider+"/disable", nil, 200, nil)
	r := op.Do(t, "POST", "/v1/terminals/"+bus.ID+"/credentials", nil)
	if r.Status != 409 || r.Code() != string(apperr.Conflict) {
		t.Fatalf("reissue for a disabled provider's terminal: %d %s", r.Status, r.Code())
	}
	if r := scan(again.Credentials.Token); r.Status == 200 {
		t.Fatal("terminal of a disabled provider scans after a refused reissue")
	}

	// Each reissue is audited, naming the terminal.
	if rows := auditRows(t, tn, "reissue_terminal", bus.ID); len(rows) != 2 {
		t.Fatalf("reissue_terminal audited %d times, want 2: %+v", len(rows), rows)
	}
}

// GET /v1/terminals/{id}: the operator reads any terminal with its
// offline mark, a provider's staff their own, a terminal only itself.
func TestReadTerminalWithMark(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 5})
	var bus, lib node.DemoTerminal
	for _, tm := range tn.Demo.Terminals {
		switch tm.Scenario {
		case "transit.bus":
			bus = tm
		case "library.loan":
			lib = tm
		}
	}
	if bus.ID == "" || lib.ID == "" || bus.Provider == lib.Provider {
		t.Fatalf("demo terminals: %+v %+v", bus, lib)
	}
	key, err := terminal.ParseBatchKey(bus.BatchKey)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(-time.Minute).UTC().Truncate(time.Millisecond)
	rec := terminal.Record{ID: "mark-1", Seq: 7, At: at, Scenario: "transit.bus", CardNumber: tn.Demo.Residents[0].CardNumber}
	if rep, err := termsim.UploadRecords(context.Background(), http.DefaultClient, tn.URL, bus.Token, bus.ID, key, []terminal.Record{rec}, time.Now()); err != nil || rep.Applied != 1 {
		t.Fatalf("upload: %+v %v", rep, err)
	}
	var self node.TerminalView
	tn.Client(bus.Token).JSON(t, "GET", "/v1/terminals/"+bus.ID, nil, 200, &self)
	if self.ID != bus.ID || self.OfflineSeq != 7 || !self.OfflineAt.Equal(at) || self.ProviderID != bus.Provider {
		t.Fatalf("the terminal reading itself: %+v", self)
	}
	var fresh map[string]any
	tn.Client(tn.Demo.Staff["operator"].Token).JSON(t, "GET", "/v1/terminals/"+lib.ID, nil, 200, &fresh)
	if fresh["offline_seq"] != float64(0) || fresh["offline_at"] != nil || fresh["id"] != lib.ID {
		t.Fatalf("a terminal with no offline record: %v", fresh)
	}
	if r := tn.Client(bus.Token).Do(t, "GET", "/v1/terminals/"+lib.ID, nil); r.Status != 403 {
		t.Fatalf("a terminal reading another: %d", r.Status)
	}
	if r := tn.Client(tn.Demo.Staff["hr_admin"].Token).Do(t, "GET", "/v1/terminals/"+bus.ID, nil); r.Status != 403 {
		t.Fatalf("hr_admin reading a terminal: %d", r.Status)
	}
	if r := tn.Client(tn.Demo.Staff["operator"].Token).Do(t, "GET", "/v1/terminals/trm_nosuch", nil); r.Status != 404 {
		t.Fatalf("unknown terminal: %d", r.Status)
	}
	_, libStaff := providerStaff(t, tn, lib.Provider, "lib_qian")
	if r := tn.Client(libStaff).Do(t, "GET", "/v1/terminals/"+bus.ID, nil); r.Status != 403 {
		t.Fatalf("another provider's staff: %d", r.Status)
	}
	tn.Client(libStaff).JSON(t, "GET", "/v1/terminals/"+lib.ID, nil, 200, nil)
}
