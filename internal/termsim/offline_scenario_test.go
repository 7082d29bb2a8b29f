package termsim_test

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/terminal"
	"github.com/yikatong/yikatong/internal/termsim"
)

// A terminal refuses at the gate what the node would reject: a scan of a
// scenario that may not run offline (medical.outpatient: offline_allowed
// false) is declined forbidden offline, with a reason in both languages,
// and nothing is queued; the rule, signed in the trust bundle (fetched
// without a token), holds with the node down. A scenario disabled is
// declined scenario_disabled at the next refresh, an unknown one
// not_found.
func TestOfflineRefusesScenarioNotAllowedOffline(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	ctx := context.Background()
	card := n.Demo.Residents[0].CardNumber
	dir := t.TempDir()
	hospital := demoTerminal(t, n.Demo, "medical.outpatient")
	open := func(node, id, scenario, state string) *termsim.Terminal {
		t.Helper()
		tm, err := termsim.New(termsim.Config{Node: node, ID: id, Scenario: scenario, StatePath: filepath.Join(dir, state)})
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}

	// No token: the trust bundle and the scenario are public.
	tm := open(n.URL, hospital.ID, "medical.outpatient", "hospital.json")
	if err := tm.RefreshTrust(ctx, false); err != nil {
		t.Fatal(err)
	}
	forbidden := func(tm *termsim.Terminal, what string) {
		t.Helper()
		d := tm.DecideOffline("", card, 0)
		if d.Decision != scan.Declined || d.Reason != apperr.Forbidden || !strings.Contains(d.Message, "may not run offline") || !strings.Contains(d.MessageZh, "不允许脱机") {
			t.Fatalf("%s: %+v", what, d)
		}
		if q := len(tm.State().Queue); q != 0 {
			t.Fatalf("%s: %d records queued", what, q)
		}
	}
	forbidden(tm, "medical.outpatient offline")
	code := issueCode(t, n, card)
	if d := tm.DecideOffline(code, "", 0); d.Reason != apperr.Forbidden {
		t.Fatalf("an e-code for medical.outpatient offline: %+v", d)
	}
	if err := tm.Save(); err != nil {
		t.Fatal(err)
	}
	// The node would reject such a record: the gate agrees with it.
	key, err := terminal.ParseBatchKey(hospital.BatchKey)
	if err != nil {
		t.Fatal(err)
	}
	rec := terminal.Record{ID: "probe-1", Seq: 1, At: time.Now().UTC(), Scenario: "medical.outpatient", CardNumber: card, AmountFen: 100}
	if rep, err := termsim.UploadRecords(ctx, http.DefaultClient, n.URL, hospital.Token, hospital.ID, key, []terminal.Record{rec}, time.Now()); err != nil ||
		rep.Rejected != 1 || rep.Items[0].Reason != apperr.Forbidden {
		t.Fatalf("the node on a medical.outpatient record made offline: %+v %v", rep, err)
	}

	// The node goes down: the terminal restarts from its state file and
	// still knows the rule.
	down := open("http://127.0.0.1:1", hospital.ID, "medical.outpatient", "hospital.json")
	if err := down.RefreshTrust(ctx, true); err != nil {
		t.Fatalf("node down with a bundle held: %v", err)
	}
	forbidden(down, "medical.outpatient offline, node down")

	// A scenario that may run offline is accepted.
	bus := demoTerminal(t, n.Demo, "transit.bus")
	bt := open(n.URL, bus.ID, "transit.bus", "bus.json")
	if err := bt.RefreshTrust(ctx, false); err != nil {
		t.Fatal(err)
	}
	if d := bt.DecideOffline("", card, 0); d.Decision != scan.Accepted || d.Message != "" {
		t.Fatalf("transit.bus offline: %+v", d)
	}
	// Disabled: declined as the node would decline its record, once the
	// terminal has refreshed; enabled again, accepted again.
	hr := n.Client(n.Demo.Staff["hr_admin"].Token)
	hr.JSON(t, "PUT", "/v1/scenarios/transit.bus/enabled", map[string]bool{"enabled": false}, 200, nil)
	if err := bt.RefreshTrust(ctx, true); err != nil {
		t.Fatal(err)
	}
	if d := bt.DecideOffline("", card, 0); d.Decision != scan.Declined || d.Reason != apperr.ScenarioDisabled || d.MessageZh == "" {
		t.Fatalf("disabled transit.bus offline: %+v", d)
	}
	hr.JSON(t, "PUT", "/v1/scenarios/transit.bus/enabled", map[string]bool{"enabled": true}, 200, nil)
	if err := bt.RefreshTrust(ctx, true); err != nil {
		t.Fatal(err)
	}
	if d := bt.DecideOffline("", card, 0); d.Decision != scan.Accepted {
		t.Fatalf("transit.bus enabled again: %+v", d)
	}

	// A scenario the node does not have.
	nt := open(n.URL, bus.ID, "transit.nope", "nope.json")
	if err := nt.RefreshTrust(ctx, false); err != nil {
		t.Fatal(err)
	}
	if d := nt.DecideOffline("", card, 0); d.Reason != apperr.NotFound {
		t.Fatalf("unknown scenario offline: %+v", d)
	}
}
