package node_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// TestGateOpenOnlyOnDemoNodes: a scan moves real money, so the gate
// simulator is open to anyone only on a demo city; on a real node an
// anonymous visitor is sent to sign in and no scan runs.
func TestGateOpenOnlyOnDemoNodes(t *testing.T) {
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	demo := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	resp, err := noRedirect.Get(demo.URL + "/gate")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("demo gate: %d", resp.StatusCode)
	}

	// The same data served without --demo: the gate needs a staff session.
	dir := demo.Dir
	bus := ""
	for _, term := range demo.Demo.Terminals {
		if term.Scenario == "transit.bus" {
			bus = term.ID + "/" + term.Scenario
		}
	}
	card := demo.Demo.Residents[0].CardNumber
	demo.Stop()
	real := nodetest.Start(t, nodetest.Options{Dir: dir})
	for _, method := range []string{"GET", "POST"} {
		var resp *http.Response
		if method == "GET" {
			resp, err = noRedirect.Get(real.URL + "/gate")
		} else {
			resp, err = noRedirect.PostForm(real.URL+"/gate", url.Values{"terminal": {bus}, "card_number": {card}, "csrf": {"x"}})
		}
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(resp.Header.Get("Location"), "/console/login") {
			t.Fatalf("%s /gate on a real node: %d %s", method, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	var n int
	if err := real.DB.R.QueryRow(`SELECT COUNT(*) FROM scans`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("scans after anonymous gate posts: %d %v", n, err)
	}
}
