package node_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/terminal"
)

// Two node processes share one database: a holder flag set or removed
// through one is decided with on the other within scan.ResidentCacheTTL,
// even when the other had just scanned the resident (cache warm).
func TestFlagsAcrossTwoNodes(t *testing.T) {
	a := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 3})
	b := nodetest.Start(t, nodetest.Options{Dir: a.Dir})
	hr := a.Client(a.Demo.Staff["hr_admin"].Token)
	op := a.Client(a.Demo.Staff["operator"].Token)
	rng := rand.New(rand.NewPCG(21, 22))
	num := idnum.Generate(rng, idnum.KindCitizen, "410105", time.Now().AddDate(-17, 0, -3), "M")
	var enrolled struct {
		Resident struct {
			ID string `json:"id"`
		} `json:"resident"`
		Card struct {
			Number string `json:"card_number"`
		} `json:"card"`
	}
	hr.JSON(t, "POST", "/v1/residents", map[string]any{"name": "钱同学", "id_number": num, "category": "local", "pin": "135790"}, 201, &enrolled)
	var prov terminal.Provider
	op.JSON(t, "POST", "/v1/providers", map[string]any{"name": "郑州二中", "kind": "school", "scenarios": []string{"campus.gate"}}, 201, &prov)
	var tc struct {
		Credentials terminal.Credentials `json:"credentials"`
	}
	op.JSON(t, "POST", "/v1/providers/"+prov.ID+"/terminals", map[string]any{"name": "south gate"}, 201, &tc)
	n := 0
	gateOn := func(base string) string {
		t.Helper()
		n++
		var ans struct{ Decision, Reason string }
		nodetest.NewClient(base, tc.Credentials.Token).JSON(t, "POST", "/v1/scans",
			map[string]any{"idempotency_key": fmt.Sprintf("f2-%d", n), "scenario": "campus.gate", "card_number": enrolled.Card.Number}, 200, &ans)
		return ans.Decision
	}
	setFlags := func(flags ...string) {
		hr.JSON(t, "PUT", "/v1/residents/"+enrolled.Resident.ID+"/flags", map[string]any{"flags": append([]string{}, flags...)}, 200, nil)
	}
	// Within the bound, polled: the other node may pick it up sooner.
	within := func(want string) {
		t.Helper()
		deadline := time.Now().Add(scan.ResidentCacheTTL + time.Second)
		for {
			got := gateOn(b.URL)
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the other node still decides %s %v after the change, want %s", got, scan.ResidentCacheTTL, want)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	if d := gateOn(b.URL); d != scan.Declined {
		t.Fatalf("not a student yet, on b: %s", d)
	}
	setFlags("student")
	if d := gateOn(a.URL); d != scan.Accepted {
		t.Fatalf("student, on the node that set it: %s", d)
	}
	within(scan.Accepted)
	setFlags()
	if d := gateOn(a.URL); d != scan.Declined {
		t.Fatalf("flag removed, on the node that removed it: %s", d)
	}
	within(scan.Declined)
}
