package node_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/auth"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/resident"
	"github.com/yikatong/yikatong/internal/store/storetest"
	"github.com/yikatong/yikatong/internal/terminal"
	"github.com/yikatong/yikatong/internal/termsim"
)

// The resume tests use a small demo city enrolled and funded a few
// residents per step, so that every kind of step has several instances.
const (
	resumeResidents = 30
	resumeChunk     = 7
)

var errCrash = errors.New("injected crash")

// demoEnv is a node's data directory and database ("" = SQLite in it).
type demoEnv struct{ dir, db string }

func newDemoEnv(t *testing.T, postgres bool) demoEnv {
	e := demoEnv{dir: t.TempDir()}
	if postgres {
		e.db = storetest.Postgres(t)
	}
	return e
}

func (e demoEnv) demoPath() string { return filepath.Join(e.dir, "demo.json") }

func openQuiet(t *testing.T, e demoEnv) *node.Node {
	t.Helper()
	n, err := node.Open(context.Background(), node.Config{DataDir: e.dir, DB: e.db, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	n.DemoResidents = resumeResidents
	n.Auth.PasswordIterations = 1000 // staff sign-in at test speed
	return n
}

// createDemo runs one start's demo creation on e: stopped (as by a
// crash) at the stop-th step when stop > 0. It returns the steps seen.
func createDemo(t *testing.T, e demoEnv, stop int) ([]string, error) {
	t.Helper()
	n := openQuiet(t, e)
	defer n.Close()
	var steps []string
	node.SetDemoHooks(n, func(step string) error {
		steps = append(steps, step)
		if len(steps) == stop {
			return errCrash
		}
		return nil
	}, resumeChunk)
	defer node.ClearDemoHooks(n)
	err := n.EnsureDemo(context.Background(), "http://127.0.0.1:1", e.demoPath())
	return steps, err
}

// demoShape is what a demo city is made of, counted in its database:
// equal for two complete demo cities of the same size.
func demoShape(t *testing.T, e demoEnv) map[string]string {
	t.Helper()
	n := openQuiet(t, e)
	defer n.Close()
	ctx := context.Background()
	shape := map[string]string{}
	for name, q := range map[string]string{
		"residents":         `SELECT COUNT(*) FROM residents`,
		"cards":             `SELECT COUNT(*) FROM cards`,
		"cards active":      `SELECT COUNT(*) FROM cards WHERE status = 'active'`,
		"cards with PIN":    `SELECT COUNT(*) FROM cards WHERE pin_hash <> ''`,
		"residents no card": `SELECT COUNT(*) FROM residents r WHERE NOT EXISTS (SELECT 1 FROM cards c WHERE c.resident_id = r.id)`,
		"staff":             `SELECT COUNT(*) FROM staff_users`,
		"providers":         `SELECT COUNT(*) FROM providers`,
		"terminals":         `SELECT COUNT(*) FROM terminals`,
		"terminals enabled": `SELECT COUNT(*) FROM terminals WHERE disabled = 0`,
		"journal":           `SELECT COUNT(*) FROM ledger_journal`,
		"tokens staff":      `SELECT COUNT(*) FROM auth_tokens WHERE revoked = 0 AND kind = 'staff'`,
		"tokens terminal":   `SELECT COUNT(*) FROM auth_tokens WHERE revoked = 0 AND kind = 'terminal'`,
	} {
		var v int64
		if err := n.DB.R.QueryRowContext(ctx, q).Scan(&v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		shape[name] = fmt.Sprint(v)
	}
	rows, err := n.DB.R.QueryContext(ctx, `SELECT kind, COUNT(*), SUM(balance_fen) FROM ledger_accounts GROUP BY kind`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var kind string
		var count, sum int64
		if err := rows.Scan(&kind, &count, &sum); err != nil {
			t.Fatal(err)
		}
		shape["accounts "+kind] = fmt.Sprintf("%d holding %d", count, sum)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	chk, err := n.Ledger.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	shape["ledger check"] = fmt.Sprintf("sum %d journal ok %v", chk.SumFen, chk.JournalOK)
	return shape
}

// demoFileShape is demo.json without its random parts.
func demoFileShape(t *testing.T, d *node.DemoFile) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "city %s staff", d.City)
	for _, role := range []string{"hr_admin", "finance", "operator"} {
		s := d.Staff[role]
		fmt.Fprintf(&b, " %s:%s:%v:%v", role, s.User, s.Password != "", s.Token != "")
	}
	b.WriteString(" residents")
	for _, r := range d.Residents {
		fmt.Fprintf(&b, " %s%v:%v", r.Category, r.Flags, r.CardNumber != "" && r.PIN != "" && r.ResidentID != "" && r.IDNumber != "" && r.Name != "")
	}
	b.WriteString(" terminals")
	for _, tm := range d.Terminals {
		fmt.Fprintf(&b, " %s:%v", tm.Scenario, tm.ID != "" && tm.Token != "" && tm.Provider != "" && tm.BatchKey != "")
	}
	return b.String()
}

// checkDemoWorks serves the demo city of e and uses every credential of
// its demo.json over HTTP: the staff passwords and tokens, the residents'
// PINs (an e-code scanned at the bus), every terminal's token and batch key.
func checkDemoWorks(t *testing.T, e demoEnv) {
	t.Helper()
	tn := nodetest.Start(t, nodetest.Options{Dir: e.dir, DB: e.db, Demo: true, DemoResidents: resumeResidents})
	defer tn.Stop()
	d := tn.Demo
	anon := tn.Client("")
	for role, s := range d.Staff {
		var tok struct{ Token, Role string }
		anon.JSON(t, "POST", "/v1/auth/staff", map[string]string{"user": s.User, "password": s.Password}, 200, &tok)
		if tok.Role != role {
			t.Fatalf("staff %s signs in as %q", s.User, tok.Role)
		}
	}
	var chk struct {
		Accounts  int   `json:"accounts"`
		SumFen    int64 `json:"sum_fen"`
		JournalOK bool  `json:"journal_ok"`
	}
	tn.Client(d.Staff["finance"].Token).JSON(t, "GET", "/v1/ledger/check", nil, 200, &chk)
	if chk.SumFen != 0 || !chk.JournalOK {
		t.Fatalf("ledger check %+v", chk)
	}
	hr := tn.Client(d.Staff["hr_admin"].Token)
	fin := tn.Client(d.Staff["finance"].Token)
	for _, r := range d.Residents {
		hr.JSON(t, "GET", "/v1/residents/"+r.ResidentID, nil, 200, nil)
		for _, acct := range []struct {
			id   string
			want int64
		}{{ledger.WalletID(r.ResidentID), node.DemoWalletFen}, {ledger.MedicalID(r.ResidentID), node.DemoMedicalFen}} {
			var a struct {
				BalanceFen int64 `json:"balance_fen"`
			}
			fin.JSON(t, "GET", "/v1/accounts/"+acct.id, nil, 200, &a)
			if a.BalanceFen != acct.want {
				t.Fatalf("%s holds %d, want %d", acct.id, a.BalanceFen, acct.want)
			}
		}
	}
	op := tn.Client(d.Staff["operator"].Token)
	keys := map[string]string{} // terminal id → public key
	for _, tm := range d.Terminals {
		if _, ok := keys[tm.ID]; ok {
			continue
		}
		var list []struct {
			ID        string `json:"id"`
			PublicKey string `json:"public_key"`
		}
		op.JSON(t, "GET", "/v1/providers/"+tm.Provider+"/terminals", nil, 200, &list)
		for _, x := range list {
			keys[x.ID] = x.PublicKey
		}
	}
	var bus node.DemoTerminal
	for _, tm := range d.Terminals {
		key, err := terminal.ParseBatchKey(tm.BatchKey)
		if err != nil {
			t.Fatalf("terminal %s: %v", tm.ID, err)
		}
		if got := base64.RawURLEncoding.EncodeToString(key.Public().(ed25519.PublicKey)); got != keys[tm.ID] {
			t.Fatalf("terminal %s (%s): the batch key of demo.json is not the terminal's", tm.ID, tm.Scenario)
		}
		res := tn.Client(tm.Token).Do(t, "POST", "/v1/scans", map[string]any{
			"idempotency_key": "resume-check-" + tm.ID, "scenario": tm.Scenario, "card_number": d.Residents[0].CardNumber, "amount_fen": 100})
		if res.Status == 401 || res.Status == 403 {
			t.Fatalf("terminal %s (%s) token refused: %d %s", tm.ID, tm.Scenario, res.Status, res.Body)
		}
		if tm.Scenario == "transit.bus" {
			bus = tm
		}
	}
	key, _ := terminal.ParseBatchKey(bus.BatchKey)
	if _, err := termsim.UploadRecords(context.Background(), http.DefaultClient, tn.URL, bus.Token, bus.ID, key,
		[]terminal.Record{{ID: "resume-1", Seq: 1, At: time.Now().UTC(), Scenario: "transit.bus", CardNumber: d.Residents[1].CardNumber}}, time.Now()); err != nil {
		t.Fatalf("bus terminal's batch: %v", err)
	}
	for i, r := range d.Residents {
		var tok struct {
			Token string `json:"token"`
		}
		anon.JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": r.CardNumber, "pin": r.PIN}, 200, &tok)
		if i != 0 {
			continue
		}
		var code struct {
			Code string `json:"code"`
		}
		tn.Client(tok.Token).JSON(t, "POST", "/v1/ecodes", nil, 200, &code)
		var ans struct {
			Decision string `json:"decision"`
			Reason   string `json:"reason"`
		}
		tn.Client(bus.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "resume-code", "scenario": "transit.bus", "code": code.Code}, 200, &ans)
		if ans.Decision != "accepted" {
			t.Fatalf("bus scan of the e-code: %+v", ans)
		}
	}
}

// TestDemoResumesAfterInterruption: a first start stopped at any step of
// the demo city's creation (a crash there: nothing after it runs) leaves
// no demo.json; the next start finishes the demo city. The result is a
// demo city like one created in one go: the same numbers of residents,
// cards, staff, providers, terminals, accounts, transfers and live tokens,
// the same balances (no top-up twice), balanced books, and a demo.json
// whose every credential works, those lost with the crash reissued.
func TestDemoResumesAfterInterruption(t *testing.T) {
	ref := newDemoEnv(t, false)
	steps, err := createDemo(t, ref, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := demoShape(t, ref)
	refDemo, err := node.ReadDemoFile(ref.demoPath())
	if err != nil {
		t.Fatal(err)
	}
	wantFile := demoFileShape(t, refDemo)
	t.Logf("%d steps; shape %v", len(steps), want)

	// Stop at the first step of each kind (staff created, staff signed
	// in, residents enrolled, funded, provider, terminal created, terminal
	// recorded, demo.json written), and at the last enrolment and funding
	// steps.
	kind := func(s string) string {
		parts := strings.Split(s, "/")
		if parts[len(parts)-1] == "created" {
			return parts[0] + "/created"
		}
		return parts[0]
	}
	var stops []int
	first, last := map[string]int{}, map[string]int{}
	for i, s := range steps {
		if _, ok := first[kind(s)]; !ok {
			first[kind(s)] = i + 1
		}
		last[kind(s)] = i + 1
	}
	for k := range first {
		stops = append(stops, first[k])
	}
	stops = append(stops, last["residents"], last["funded"])
	slices.Sort(stops)
	stops = slices.Compact(stops)
	if len(first) < 8 {
		t.Fatalf("steps of %d kinds: %v", len(first), steps)
	}
	resume := func(t *testing.T, e demoEnv, stops ...int) {
		t.Helper()
		for _, stop := range stops {
			if _, err := createDemo(t, e, stop); !errors.Is(err, errCrash) {
				t.Fatalf("start stopped at %s: %v", steps[stop-1], err)
			}
			if steps[stop-1] != "written" {
				if _, err := os.Stat(e.demoPath()); !os.IsNotExist(err) {
					t.Fatalf("demo.json after a start stopped at %s: %v", steps[stop-1], err)
				}
			}
		}
		if _, err := createDemo(t, e, 0); err != nil {
			t.Fatalf("the next start: %v", err)
		}
		if got := demoShape(t, e); !mapsEqual(got, want) {
			t.Fatalf("resumed demo city\n got %v\nwant %v", got, want)
		}
		d, err := node.ReadDemoFile(e.demoPath())
		if err != nil {
			t.Fatal(err)
		}
		if got := demoFileShape(t, d); got != wantFile {
			t.Fatalf("demo.json\n got %s\nwant %s", got, wantFile)
		}
		checkDemoWorks(t, e)
		if got := demoShape(t, e); got["residents"] != want["residents"] || got["terminals"] != want["terminals"] || got["staff"] != want["staff"] {
			t.Fatalf("serving the demo city (a third start) changed it: %v", got)
		}
		n := openQuiet(t, e)
		state, secrets, err := node.DemoRecord(n)
		n.Close()
		if err != nil || state != "done" || secrets != 0 {
			t.Fatalf("the demo record after the demo city is made: %q with %d secrets (%v)", state, secrets, err)
		}
	}
	for _, stop := range stops {
		t.Run(fmt.Sprintf("%02d-%s", stop, strings.ReplaceAll(steps[stop-1], "/", "-")), func(t *testing.T) {
			resume(t, newDemoEnv(t, false), stop)
		})
	}

	// Stopped twice, at different steps, then finished.
	t.Run("twice", func(t *testing.T) {
		resume(t, newDemoEnv(t, false), first["residents"]+1, first["terminal/created"]+2)
	})

	// On PostgreSQL: a terminal's credentials lost, and enrolment and
	// funding part done.
	t.Run("postgres", func(t *testing.T) {
		resume(t, newDemoEnv(t, true), first["terminal/created"])
		resume(t, newDemoEnv(t, true), first["funded"], first["residents"])
	})

	// A start stopped by its context (Ctrl-C) mid-way is finished too.
	t.Run("cancelled", func(t *testing.T) {
		e := newDemoEnv(t, false)
		n := openQuiet(t, e)
		ctx, cancel := context.WithCancel(context.Background())
		node.SetDemoHooks(n, func(step string) error {
			if step == fmt.Sprintf("funded/%d", resumeChunk) {
				cancel()
			}
			return nil
		}, resumeChunk)
		err := n.EnsureDemo(ctx, "http://127.0.0.1:1", e.demoPath())
		node.ClearDemoHooks(n)
		n.Close()
		if err == nil {
			t.Fatal("a cancelled start created the demo city")
		}
		resume(t, e)
	})
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestDemoRefusesRealCity: --demo on a node that holds a city's data (a
// resident, or only a staff user) and no demo is refused with the stable
// error, and creates nothing.
func TestDemoRefusesRealCity(t *testing.T) {
	for _, tc := range []struct {
		name string
		seed func(t *testing.T, n *node.Node)
	}{
		{"resident", func(t *testing.T, n *node.Node) {
			if _, err := n.Residents.Enrol(context.Background(), resident.EnrolInput{Name: "王芳", IDNumber: "11010519491231002X", Category: resident.CategoryLocal}); err != nil {
				t.Fatal(err)
			}
		}},
		{"staff", func(t *testing.T, n *node.Node) {
			if _, err := n.Auth.CreateStaff(context.Background(), "admin", "管理员", auth.RoleHRAdmin, "a-long-password", ""); err != nil {
				t.Fatal(err)
			}
		}},
		{"provider", func(t *testing.T, n *node.Node) {
			if _, err := n.CreateProvider(context.Background(), "郑州公交集团 Zhengzhou Bus", "transit", []string{"transit.bus"}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newDemoEnv(t, false)
			n := openQuiet(t, e)
			tc.seed(t, n)
			n.Close()
			before := demoShape(t, e)
			for range 2 {
				n := openQuiet(t, e)
				err := n.EnsureDemo(context.Background(), "http://127.0.0.1:1", e.demoPath())
				demoMode := n.DemoMode.Load()
				n.Close()
				if !errors.Is(err, node.ErrNotDemoCity) {
					t.Fatalf("EnsureDemo on a city: %v", err)
				}
				if msg := err.Error(); !strings.Contains(msg, "not a demo city") || !strings.Contains(msg, "演示城市") {
					t.Fatalf("the refusal is not in English and Chinese: %s", msg)
				}
				if demoMode {
					t.Fatal("a city refused as a demo is in demo mode (the gate simulator open to anyone)")
				}
				if _, err := os.Stat(e.demoPath()); !os.IsNotExist(err) {
					t.Fatalf("demo.json: %v", err)
				}
				if after := demoShape(t, e); !mapsEqual(after, before) {
					t.Fatalf("the refused demo changed the city\n got %v\nwant %v", after, before)
				}
			}
		})
	}
}

// TestDemoFileMissing: a finished demo city whose demo.json was deleted
// is not created again (its secrets are gone): a stable error says so,
// and nothing changes.
func TestDemoFileMissing(t *testing.T) {
	e := newDemoEnv(t, false)
	if _, err := createDemo(t, e, 0); err != nil {
		t.Fatal(err)
	}
	before := demoShape(t, e)
	if err := os.Remove(e.demoPath()); err != nil {
		t.Fatal(err)
	}
	if _, err := createDemo(t, e, 0); !errors.Is(err, node.ErrDemoFileMissing) {
		t.Fatalf("EnsureDemo without demo.json: %v", err)
	}
	if after := demoShape(t, e); !mapsEqual(after, before) {
		t.Fatalf("changed\n got %v\nwant %v", after, before)
	}
}
