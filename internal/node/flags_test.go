package node_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
)

// TestResidentFlags: hr_admin (only) sets a resident's holder flags over
// the API, audited without naming them; the staff view shows them; the
// next scan decides with them, by card and by e-code, and new e-codes
// carry them; a flag removed stops working at once online, even for a
// code issued while it was set.
func TestResidentFlags(t *testing.T) {
	storetest.Each(t, func(t *testing.T, dsn string) {
		if strings.HasSuffix(dsn, ".db") {
			dsn = "" // SQLite in the node's data dir
		}
		tn := nodetest.Start(t, nodetest.Options{DB: dsn, Demo: true, DemoResidents: 3})
		ctx := t.Context()
		d := tn.Demo
		hr := tn.Client(d.Staff["hr_admin"].Token)
		op := tn.Client(d.Staff["operator"].Token)
		rng := rand.New(rand.NewPCG(11, 12))

		type view struct {
			ID        string    `json:"id"`
			Flags     *[]string `json:"flags"`
			BirthDate string    `json:"birth_date"`
		}
		enrol := func(flags []string) (id, card string) {
			t.Helper()
			num := idnum.Generate(rng, idnum.KindCitizen, "410105", time.Now().AddDate(-30, 0, -10), "F")
			body := map[string]any{"name": "周同学", "id_number": num, "category": "local", "pin": "246810"}
			if flags != nil {
				body["flags"] = flags
			}
			var out struct {
				Resident view `json:"resident"`
				Card     struct {
					Number string `json:"card_number"`
				} `json:"card"`
			}
			hr.JSON(t, "POST", "/v1/residents", body, 201, &out)
			if out.Resident.Flags == nil || !slices.Equal(*out.Resident.Flags, append([]string{}, flags...)) {
				t.Fatalf("enrolled with flags %q: %+v", flags, out.Resident.Flags)
			}
			return out.Resident.ID, out.Card.Number
		}
		setFlags := func(id string, flags ...string) view {
			t.Helper()
			var v view
			hr.JSON(t, "PUT", "/v1/residents/"+id+"/flags", map[string]any{"flags": append([]string{}, flags...)}, 200, &v)
			if v.ID != id || v.Flags == nil || !slices.Equal(*v.Flags, flags) || v.BirthDate != "" {
				t.Fatalf("PUT flags %q: %+v", flags, v)
			}
			return v
		}

		pupil, pupilCard := enrol(nil)

		// Who may set flags.
		body := map[string]any{"flags": []string{"student"}}
		resTok := func() string {
			var tok struct{ Token string }
			tn.Client("").JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": pupilCard, "pin": "246810"}, 200, &tok)
			return tok.Token
		}()
		for name, c := range map[string]*nodetest.Client{
			"finance": tn.Client(d.Staff["finance"].Token), "operator": op,
			"resident": tn.Client(resTok), "terminal": tn.Client(d.Terminals[0].Token),
		} {
			if r := c.Do(t, "PUT", "/v1/residents/"+pupil+"/flags", body); r.Status != 403 || r.Code() != "forbidden" {
				t.Errorf("%s: %d %s, want 403", name, r.Status, r.Body)
			}
		}
		if r := tn.Client("").Do(t, "PUT", "/v1/residents/"+pupil+"/flags", body); r.Status != 401 {
			t.Errorf("anonymous: %d %s, want 401", r.Status, r.Body)
		}
		for _, bad := range []any{map[string]any{"flags": []string{"student", "wizard"}}, map[string]any{}, map[string]any{"flags": []string{"senior_65"}}} {
			if r := hr.Do(t, "PUT", "/v1/residents/"+pupil+"/flags", bad); r.Status != 422 || r.Code() != "validation_failed" || r.Problem()["detail_zh"] == "" {
				t.Errorf("%v: %d %s, want 422 validation_failed", bad, r.Status, r.Body)
			}
		}
		if r := hr.Do(t, "PUT", "/v1/residents/res_nope/flags", body); r.Status != 404 {
			t.Errorf("unknown resident: %d %s", r.Status, r.Body)
		}
		var v view
		hr.JSON(t, "GET", "/v1/residents/"+pupil, nil, 200, &v)
		if v.Flags == nil || len(*v.Flags) != 0 {
			t.Fatalf("flags after refusals: %+v", v.Flags)
		}

		// A school's gate.
		var prov terminal.Provider
		op.JSON(t, "POST", "/v1/providers", map[string]any{"name": "郑州一中", "kind": "school", "scenarios": []string{"campus.gate"}}, 201, &prov)
		var tc struct {
			Credentials terminal.Credentials `json:"credentials"`
		}
		op.JSON(t, "POST", "/v1/providers/"+prov.ID+"/terminals", map[string]any{"name": "north gate"}, 201, &tc)
		gate := tn.Client(tc.Credentials.Token)
		var bus *nodetest.Client
		for _, term := range d.Terminals {
			if term.Scenario == "transit.bus" {
				bus = tn.Client(term.Token)
			}
		}
		if bus == nil {
			t.Fatal("no bus terminal in the demo")
		}
		n := 0
		scan := func(c *nodetest.Client, scenario, card, code string) (decision, reason string, view map[string]any) {
			t.Helper()
			n++
			body := map[string]any{"idempotency_key": fmt.Sprintf("flags-%d", n), "scenario": scenario}
			if code != "" {
				body["code"] = code
			} else {
				body["card_number"] = card
			}
			var a struct {
				Decision, Reason string
				View             map[string]any
			}
			c.JSON(t, "POST", "/v1/scans", body, 200, &a)
			return a.Decision, a.Reason, a.View
		}
		code := func(card string) (string, []string) {
			t.Helper()
			c, _, err := tn.IssueCode(ctx, card)
			if err != nil {
				t.Fatal(err)
			}
			dec, err := ecode.Decode(c)
			if err != nil {
				t.Fatal(err)
			}
			return c, dec.Claims.Flags
		}
		wantGate := func(what, card, c, decision, reason string) {
			t.Helper()
			if gd, gr, _ := scan(gate, "campus.gate", card, c); gd != decision || gr != reason {
				t.Errorf("%s: %s %s, want %s %s", what, gd, gr, decision, reason)
			}
		}

		// Not a student yet: declined, by card and by code.
		c0, claims := code(pupilCard)
		if slices.Contains(claims, "student") {
			t.Fatalf("a code claims %q before the flag", claims)
		}
		wantGate("card before the flag", pupilCard, "", "declined", "not_eligible")
		wantGate("code before the flag", "", c0, "declined", "not_eligible")

		// A student: admitted at once (the scan path cached the resident
		// a moment ago), by card and by a new code that claims it.
		setFlags(pupil, "student")
		hr.JSON(t, "GET", "/v1/residents/"+pupil, nil, 200, &v)
		if v.Flags == nil || !slices.Equal(*v.Flags, []string{"student"}) {
			t.Fatalf("GET after PUT: %+v", v.Flags)
		}
		log, err := tn.Auth.AuditLog(ctx, pupil, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		set := 0
		for _, e := range log {
			if e.Action == "set_flags" {
				set++
				if e.ActorRole != auth.RoleHRAdmin || strings.Contains(e.Detail, "student") {
					t.Errorf("audit row %+v", e)
				}
			}
		}
		if set != 1 {
			t.Fatalf("%d set_flags audit rows for %s: %+v", set, pupil, log)
		}
		wantGate("card as a student", pupilCard, "", "accepted", "")
		c1, claims := code(pupilCard)
		if !slices.Equal(claims, []string{"student"}) {
			t.Fatalf("a student's code claims %q", claims)
		}
		wantGate("code as a student", "", c1, "accepted", "")
		held, _ := code(pupilCard) // issued while a student, scanned after

		// No longer a student: declined at once, the code issued while
		// a student too (online, the record wins over the code's claim).
		setFlags(pupil)
		wantGate("card after removal", pupilCard, "", "declined", "not_eligible")
		wantGate("code issued before removal", "", held, "declined", "not_eligible")
		c2, claims := code(pupilCard)
		if slices.Contains(claims, "student") {
			t.Fatalf("a code claims %q after removal", claims)
		}
		wantGate("new code after removal", "", c2, "declined", "not_eligible")

		// Enrolled as a teacher: admitted; the enrolment's flags audited.
		teacher, teacherCard := enrol([]string{"teacher"})
		wantGate("teacher enrolled with the flag", teacherCard, "", "accepted", "")
		if log, _ := tn.Auth.AuditLog(ctx, teacher, 0, 100); !slices.ContainsFunc(log, func(e auth.AuditEntry) bool { return e.Action == "set_flags" }) {
			t.Errorf("the enrolment's flags are not audited: %+v", log)
		}

		// A disabled resident rides free where the scenario says so.
		rider, riderCard := enrol(nil)
		wallet, _, err := tn.Ledger.OpenResidentAccounts(ctx, rider)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tn.Ledger.TopUp(ctx, "flags-top:"+rider, wallet, 1000, nil); err != nil {
			t.Fatal(err)
		}
		if dd, _, vw := scan(bus, "transit.bus", riderCard, ""); dd != "accepted" || vw["charged_fen"] != 200.0 {
			t.Fatalf("the fare before the flag: %s %v", dd, vw)
		}
		setFlags(rider, "disabled")
		rc, claims := code(riderCard)
		if !slices.Equal(claims, []string{"disabled"}) {
			t.Fatalf("a disabled resident's code claims %q", claims)
		}
		for _, via := range []struct{ card, code string }{{riderCard, ""}, {"", rc}} {
			if dd, _, vw := scan(bus, "transit.bus", via.card, via.code); dd != "accepted" || vw["charged_fen"] != 0.0 || vw["concession"] != "disabled_free" {
				t.Fatalf("the fare for a disabled holder (card %q): %s %v", via.card, dd, vw)
			}
		}
		bal, err := tn.Ledger.Balance(ctx, wallet)
		if err != nil || bal.Balance != 800 {
			t.Fatalf("wallet %d %v, want 800 (one fare before the flag)", bal.Balance, err)
		}
	})
}

// TestDemoStudentAtCampusGate: the demo city's schoolchild is a student,
// so the demo's campus gate admits them by card and turns an adult away.
func TestDemoStudentAtCampusGate(t *testing.T) {
	tn := nodetest.Start(t, nodetest.Options{Demo: true})
	d := tn.Demo
	gate := demoTerminal(t, d, "campus.gate")
	var student, adult node.DemoResident
	for _, r := range d.Residents {
		switch {
		case slices.Contains(r.Flags, "student"):
			student = r
		case len(r.Flags) == 0 && adult.CardNumber == "":
			adult = r
		}
	}
	if student.CardNumber == "" {
		t.Fatalf("no student among the demo residents: %+v", d.Residents)
	}
	var a struct{ Decision, Reason string }
	tn.Client(gate.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "demo-stu", "scenario": "campus.gate", "card_number": student.CardNumber}, 200, &a)
	if a.Decision != "accepted" {
		t.Fatalf("the demo student at the campus gate: %+v", a)
	}
	tn.Client(gate.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "demo-adult", "scenario": "campus.gate", "card_number": adult.CardNumber}, 200, &a)
	if a.Decision != "declined" || a.Reason != "not_eligible" {
		t.Fatalf("an adult without flags at the campus gate: %+v", a)
	}
}
