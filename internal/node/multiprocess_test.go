package node_test

// Several `yikatong serve` processes on one PostgreSQL database, and
// PostgreSQL failing under them. These tests run the real binary
// (nodetest.StartProcess) so they exercise exactly what a city deploys:
// stateless API processes sharing a database and a data directory.

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/ledger"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/node/nodetest"
	"github.com/yikatong/yikatong/internal/store/storetest"
)

type scanAnswer struct {
	Decision   string `json:"decision"`
	Reason     string `json:"reason"`
	ChargedFen *int64 `json:"charged_fen"`
}

type accountAnswer struct {
	BalanceFen   int64 `json:"balance_fen"`
	AvailableFen int64 `json:"available_fen"`
	FloorFen     int64 `json:"floor_fen"`
}

func demoTerminal(t *testing.T, d *node.DemoFile, scenario string) node.DemoTerminal {
	t.Helper()
	for _, tm := range d.Terminals {
		if tm.Scenario == scenario {
			return tm
		}
	}
	t.Fatalf("demo.json has no %s terminal", scenario)
	return node.DemoTerminal{}
}

// signIn signs a demo resident in at base and returns the session token.
func signIn(t *testing.T, base string, r node.DemoResident) string {
	t.Helper()
	var out struct {
		Token string `json:"token"`
	}
	nodetest.NewClient(base, "").JSON(t, "POST", "/v1/auth/resident", map[string]string{"card_number": r.CardNumber, "pin": r.PIN}, 200, &out)
	if out.Token == "" {
		t.Fatal("resident sign-in gave no token")
	}
	return out.Token
}

// issueCode asks base for a fresh e-code for the signed-in resident.
func issueCode(t *testing.T, base, token string) string {
	t.Helper()
	var out struct {
		Code string `json:"code"`
	}
	nodetest.NewClient(base, token).JSON(t, "POST", "/v1/ecodes", nil, 200, &out)
	return out.Code
}

func codeKid(t *testing.T, code string) string {
	t.Helper()
	d, err := ecode.Decode(code)
	if err != nil {
		t.Fatalf("decoding a code the node issued: %v", err)
	}
	return ecode.PublicKey{Kid: d.Header.Kid}.KidString()
}

// TestTwoProcessesOnePostgres runs two serve processes on one database and
// one data directory (shared vault master key and key files) and checks that
// together they behave as one node.
func TestTwoProcessesOnePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dsn := storetest.Postgres(t)
	dir := t.TempDir()
	// Peers pick up a key rotated elsewhere within this interval (15 s in production).
	t.Setenv("YIKATONG_KEY_REFRESH", "300ms")
	a := nodetest.StartProcess(t, dir, "--db", dsn, "--demo")
	b := nodetest.StartProcess(t, dir, "--db", dsn)
	demo, err := node.ReadDemoFile(filepath.Join(dir, "demo.json"))
	if err != nil {
		t.Fatal(err)
	}
	procs := []string{a.URL, b.URL}
	finance := demo.Staff["finance"].Token
	operator := demo.Staff["operator"].Token
	bus := demoTerminal(t, demo, "transit.bus")
	museum := demoTerminal(t, demo, "museum.entry")

	t.Run("concurrent charges never overspend", func(t *testing.T) {
		r := demo.Residents[0]
		wallet := ledger.WalletID(r.ResidentID)
		var before accountAnswer
		nodetest.NewClient(a.URL, finance).JSON(t, "GET", "/v1/accounts/"+wallet, nil, 200, &before)
		if before.BalanceFen <= 0 {
			t.Fatalf("demo wallet is empty: %+v", before)
		}
		// Enough scans to drain the wallet twice over, spread over both
		// processes, 8 at a time.
		const fare = 200
		n := int(before.BalanceFen/fare)*2 + 10
		var (
			mu       sync.Mutex
			accepted int
			charged  int64
			wg       sync.WaitGroup
			next     atomic.Int64
		)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
						return
					}
					c := nodetest.NewClient(procs[i%2], bus.Token)
					resp, err := c.Try("POST", "/v1/scans", map[string]any{"idempotency_key": fmt.Sprintf("drain-%d", i), "scenario": "transit.bus", "card_number": r.CardNumber})
					if err != nil || resp.Status != 200 {
						t.Errorf("scan %d on process %d: %v %d %s", i, i%2, err, resp.Status, resp.Body)
						return
					}
					var ans scanAnswer
					resp.Decode(t, &ans)
					mu.Lock()
					switch {
					case ans.Decision == "accepted" && ans.ChargedFen != nil && *ans.ChargedFen > 0:
						accepted++
						charged += *ans.ChargedFen
					case ans.Decision == "declined" && ans.Reason == "insufficient_funds":
					default:
						t.Errorf("scan %d: unexpected answer %s", i, resp.Body)
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		var after accountAnswer
		nodetest.NewClient(b.URL, finance).JSON(t, "GET", "/v1/accounts/"+wallet, nil, 200, &after)
		if after.BalanceFen < after.FloorFen {
			t.Fatalf("wallet overspent: balance %d below floor %d", after.BalanceFen, after.FloorFen)
		}
		if got := before.BalanceFen - after.BalanceFen; got != charged {
			t.Fatalf("accepted charges sum to %d fen but %d left the wallet", charged, got)
		}
		if after.BalanceFen >= fare {
			t.Fatalf("wallet still holds %d fen after %d scans: charges were refused that should not have been", after.BalanceFen, n)
		}
		t.Logf("%d scans over two processes: %d accepted (%d fen), wallet %d → %d", n, accepted, charged, before.BalanceFen, after.BalanceFen)
	})

	t.Run("idempotency key honoured across processes", func(t *testing.T) {
		r := demo.Residents[1]
		body := map[string]any{"idempotency_key": "mp-topup-1", "card_number": r.CardNumber, "amount_fen": 1234, "channel": "bank"}
		var first, second struct {
			ID        string `json:"id"`
			AmountFen int64  `json:"amount_fen"`
		}
		nodetest.NewClient(a.URL, finance).JSON(t, "POST", "/v1/topups", body, 200, &first)
		nodetest.NewClient(b.URL, finance).JSON(t, "POST", "/v1/topups", body, 200, &second)
		if first.ID == "" || first != second {
			t.Fatalf("same top-up on A then B: %+v then %+v", first, second)
		}
		other := map[string]any{"idempotency_key": "mp-topup-1", "card_number": r.CardNumber, "amount_fen": 999, "channel": "bank"}
		if resp := nodetest.NewClient(b.URL, finance).Do(t, "POST", "/v1/topups", other); resp.Status != 409 || resp.Code() != "idempotency_conflict" {
			t.Fatalf("same key, other body on B: %d %s", resp.Status, resp.Body)
		}
		// The same for a scan: same key and body → same answer; another body → conflict.
		scan := map[string]any{"idempotency_key": "mp-scan-1", "scenario": "transit.bus", "card_number": r.CardNumber}
		ra := nodetest.NewClient(a.URL, bus.Token).JSON(t, "POST", "/v1/scans", scan, 200, nil)
		rb := nodetest.NewClient(b.URL, bus.Token).JSON(t, "POST", "/v1/scans", scan, 200, nil)
		var sa, sb scanAnswer
		ra.Decode(t, &sa)
		rb.Decode(t, &sb)
		if sa.Decision != "accepted" || sb.Decision != sa.Decision || sb.ChargedFen == nil || *sb.ChargedFen != *sa.ChargedFen {
			t.Fatalf("same scan on A then B: %s then %s", ra.Body, rb.Body)
		}
		scan["card_number"] = demo.Residents[2].CardNumber
		if resp := nodetest.NewClient(b.URL, bus.Token).Do(t, "POST", "/v1/scans", scan); resp.Status != 409 || resp.Code() != "idempotency_conflict" {
			t.Fatalf("same scan key, other card on B: %d %s", resp.Status, resp.Body)
		}
	})

	t.Run("e-code replay refused across processes", func(t *testing.T) {
		tok := signIn(t, a.URL, demo.Residents[3])
		code := issueCode(t, a.URL, tok)
		var first, second scanAnswer
		nodetest.NewClient(a.URL, museum.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "cti-1", "scenario": "museum.entry", "code": code}, 200, &first)
		nodetest.NewClient(b.URL, museum.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": "cti-2", "scenario": "museum.entry", "code": code}, 200, &second)
		if first.Decision != "accepted" {
			t.Fatalf("first scan on A: %+v", first)
		}
		if second.Decision != "declined" || second.Reason != "replayed" {
			t.Fatalf("the same code on B: %+v, want declined/replayed", second)
		}
	})

	t.Run("keys created by one process are trusted by the other", func(t *testing.T) {
		r := demo.Residents[4]
		tokA := signIn(t, a.URL, r)
		tokB := signIn(t, b.URL, r)
		scanAt := func(base, key, code string) scanAnswer {
			var ans scanAnswer
			nodetest.NewClient(base, museum.Token).JSON(t, "POST", "/v1/scans", map[string]any{"idempotency_key": key, "scenario": "museum.entry", "code": code}, 200, &ans)
			return ans
		}
		if ans := scanAt(b.URL, "keys-1", issueCode(t, a.URL, tokA)); ans.Decision != "accepted" {
			t.Fatalf("a code issued by A, scanned at B: %+v", ans)
		}
		oldKid := codeKid(t, issueCode(t, a.URL, tokA))
		var rot struct {
			Kid string `json:"kid"`
		}
		nodetest.NewClient(a.URL, operator).JSON(t, "POST", "/v1/keys/rotate", nil, 200, &rot)
		if rot.Kid == "" || rot.Kid == oldKid {
			t.Fatalf("rotation gave kid %q (old %q)", rot.Kid, oldKid)
		}
		newCode := issueCode(t, a.URL, tokA)
		if k := codeKid(t, newCode); k != rot.Kid {
			t.Fatalf("A signs with %s after rotating to %s", k, rot.Kid)
		}
		// B verifies it within the refresh interval. (B's verifier refetches
		// keys on an unknown kid at most once a second, so a scan in the
		// first second after B's previous fetch may still be declined
		// unknown_key.)
		verified := false
		for i := 0; i < 20 && !verified; i++ {
			ans := scanAt(b.URL, fmt.Sprintf("keys-2-%d", i), newCode)
			switch {
			case ans.Decision == "accepted":
				verified = true
			case ans.Reason == "unknown_key":
				t.Logf("attempt %d: B does not know the new key yet", i)
				time.Sleep(250 * time.Millisecond)
			default:
				t.Fatalf("a code signed by A's new key, scanned at B: %+v", ans)
			}
		}
		if !verified {
			t.Fatalf("B still declines a code signed by A's new key 5 s after the rotation")
		}
		// Within the refresh interval (plus the 5 s bundle cache) B signs
		// with the new key and its trust bundle lists it.
		deadline := time.Now().Add(10 * time.Second)
		var signs, listed bool
		for time.Now().Before(deadline) && !(signs && listed) {
			signs = codeKid(t, issueCode(t, b.URL, tokB)) == rot.Kid
			resp := nodetest.NewClient(b.URL, "").JSON(t, "GET", "/v1/trust", nil, 200, nil)
			listed = strings.Contains(string(resp.Body), `"`+rot.Kid+`"`) && strings.Contains(string(resp.Body), `"`+oldKid+`"`)
			if !(signs && listed) {
				time.Sleep(200 * time.Millisecond)
			}
		}
		if !signs || !listed {
			t.Fatalf("10 s after rotating on A: B signs with the new key: %v; B's trust bundle lists old and new keys: %v", signs, listed)
		}
		if ans := scanAt(a.URL, "keys-3", issueCode(t, b.URL, tokB)); ans.Decision != "accepted" {
			t.Fatalf("a code B signed with the new key, scanned at A: %+v", ans)
		}
	})

	var chk struct {
		JournalOK bool     `json:"journal_ok"`
		SumFen    int64    `json:"sum_fen"`
		Problems  []string `json:"problems"`
	}
	nodetest.NewClient(b.URL, finance).JSON(t, "GET", "/v1/ledger/check", nil, 200, &chk)
	if !chk.JournalOK || chk.SumFen != 0 || len(chk.Problems) > 0 {
		t.Fatalf("ledger check after two processes: %+v", chk)
	}
	for _, p := range []*nodetest.Process{a, b} {
		if err := p.Terminate(); err != nil {
			t.Errorf("stopping a process: %v\n%s", err, p.Stderr)
		}
	}
}

// TestServeFlagsOnPostgres checks --max-conns and --statement-timeout on a
// real process: the process never holds more connections than allowed, and
// a statement stuck behind a lock ends at the timeout as a retryable 503.
func TestServeFlagsOnPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	dsn := storetest.Postgres(t)
	dir := t.TempDir()
	p := nodetest.StartProcess(t, dir, "--db", dsn, "--demo", "--max-conns", "3", "--statement-timeout", "300ms")
	demo, err := node.ReadDemoFile(filepath.Join(dir, "demo.json"))
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx := context.Background()
	var dbName string
	if err := admin.QueryRowContext(ctx, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	finance := nodetest.NewClient(p.URL, demo.Staff["finance"].Token)
	// 16 concurrent top-ups while we watch pg_stat_activity.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	maxSeen := 0
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int
			// Our own probe connection is excluded by pid.
			if err := admin.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, dbName).Scan(&n); err == nil && n > maxSeen {
				maxSeen = n
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	var okCount atomic.Int64
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				resp, err := finance.Try("POST", "/v1/topups", map[string]any{"idempotency_key": fmt.Sprintf("pool-%d-%d", w, i), "card_number": demo.Residents[w%5].CardNumber, "amount_fen": 1})
				if err == nil && resp.Status == 200 {
					okCount.Add(1)
				} else {
					t.Errorf("top-up: %v %d %s", err, resp.Status, resp.Body)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	watch.Wait()
	if okCount.Load() != 160 {
		t.Fatalf("%d of 160 top-ups succeeded", okCount.Load())
	}
	if maxSeen == 0 || maxSeen > 3 {
		t.Fatalf("the node held up to %d connections with --max-conns 3", maxSeen)
	}
	t.Logf("--max-conns 3: at most %d connections seen under 16 concurrent requests", maxSeen)

	// Hold an exclusive lock on the accounts table: a balance read waits
	// for it and must end at the 300 ms statement timeout as "unavailable".
	tx, err := admin.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `LOCK TABLE ledger_accounts IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	resp := finance.Do(t, "GET", "/v1/accounts/"+ledger.WalletID(demo.Residents[0].ResidentID), nil)
	took := time.Since(start)
	tx.Rollback()
	if resp.Status != http.StatusServiceUnavailable || resp.Code() != "unavailable" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a read stuck behind a lock: %d %s (Retry-After %q)", resp.Status, resp.Body, resp.Header.Get("Retry-After"))
	}
	if took > 3*time.Second {
		t.Fatalf("the stuck read took %v with --statement-timeout 300ms", took)
	}
	// And once the lock is gone the same read works.
	finance.JSON(t, "GET", "/v1/accounts/"+ledger.WalletID(demo.Residents[0].ResidentID), nil, 200, nil)
	if err := p.Terminate(); err != nil {
		t.Errorf("stopping: %v", err)
	}
}

// TestPostgresRestartUnderLoad restarts PostgreSQL (its own cluster) while
// clients top up wallets through a running node process. Requests that meet
// the outage fail with 503 unavailable and Retry-After; clients retry with the
// same idempotency key; afterwards every acknowledged top-up is in the books
// exactly once and the node serves again without being restarted.
func TestPostgresRestartUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes and a PostgreSQL cluster")
	}
	cl, err := storetest.StartCluster()
	if err != nil {
		if storetest.FindBinDir() == "" {
			t.Skip("SKIPPED: no PostgreSQL server binaries")
		}
		t.Fatal(err)
	}
	defer cl.Stop()
	dsn, err := cl.NewDatabase()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := nodetest.StartProcess(t, dir, "--db", dsn, "--demo", "--statement-timeout", "2s")
	demo, err := node.ReadDemoFile(filepath.Join(dir, "demo.json"))
	if err != nil {
		t.Fatal(err)
	}
	finance := demo.Staff["finance"].Token
	r := demo.Residents[0]
	wallet := ledger.WalletID(r.ResidentID)
	var before accountAnswer
	nodetest.NewClient(p.URL, finance).JSON(t, "GET", "/v1/accounts/"+wallet, nil, 200, &before)

	var (
		stopLoad    atomic.Bool
		acked       sync.Map // key -> transfer id
		unavailable atomic.Int64
		transport   atomic.Int64
		wg          sync.WaitGroup
	)
	const workers = 4
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := nodetest.NewClient(p.URL, finance)
			c.HTTP.Timeout = 10 * time.Second
			for i := 0; !stopLoad.Load(); i++ {
				key := fmt.Sprintf("restart-%d-%d", w, i)
				deadline := time.Now().Add(30 * time.Second)
				for {
					if time.Now().After(deadline) {
						t.Errorf("top-up %s never succeeded", key)
						return
					}
					resp, err := c.Try("POST", "/v1/topups", map[string]any{"idempotency_key": key, "card_number": r.CardNumber, "amount_fen": 1, "channel": "bank"})
					if err != nil {
						transport.Add(1)
						time.Sleep(100 * time.Millisecond)
						continue
					}
					if resp.Status == 200 {
						var tr struct {
							ID string `json:"id"`
						}
						resp.Decode(t, &tr)
						if prev, loaded := acked.LoadOrStore(key, tr.ID); loaded && prev != tr.ID {
							t.Errorf("key %s answered with two transfers %s and %s", key, prev, tr.ID)
						}
						break
					}
					if resp.Status != http.StatusServiceUnavailable || resp.Code() != "unavailable" || resp.Header.Get("Retry-After") == "" {
						t.Errorf("during the outage: %d %s (Retry-After %q); want 503 unavailable with Retry-After", resp.Status, resp.Body, resp.Header.Get("Retry-After"))
						return
					}
					unavailable.Add(1)
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	count := func() int {
		n := 0
		acked.Range(func(_, _ any) bool { n++; return true })
		return n
	}
	time.Sleep(time.Second)
	beforeRestart := count()
	if err := cl.StopServer(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond) // requests meet a database that is down
	if err := cl.StartServer(); err != nil {
		t.Fatal(err)
	}
	restarted := count()
	time.Sleep(1500 * time.Millisecond)
	stopLoad.Store(true)
	wg.Wait()
	total := count()
	t.Logf("top-ups acknowledged: %d before the restart, %d by its end, %d in all; %d answers were 503 unavailable, %d transport errors", beforeRestart, restarted, total, unavailable.Load(), transport.Load())
	if beforeRestart == 0 || total <= restarted {
		t.Fatalf("the load did not run on both sides of the restart: %d before, %d at restart, %d at the end", beforeRestart, restarted, total)
	}
	if unavailable.Load() == 0 {
		t.Fatalf("no request met the outage as 503 unavailable")
	}
	if transport.Load() > 0 {
		t.Errorf("%d requests failed without an HTTP answer; a node must answer 503 while its database is down", transport.Load())
	}
	// The same process, never restarted, serves again, and the books hold
	// every acknowledged top-up exactly once.
	var after accountAnswer
	nodetest.NewClient(p.URL, finance).JSON(t, "GET", "/v1/accounts/"+wallet, nil, 200, &after)
	if got := after.BalanceFen - before.BalanceFen; got != int64(total) {
		t.Fatalf("%d top-ups of 1 fen acknowledged but the wallet grew by %d", total, got)
	}
	var chk struct {
		JournalOK bool     `json:"journal_ok"`
		SumFen    int64    `json:"sum_fen"`
		Problems  []string `json:"problems"`
	}
	nodetest.NewClient(p.URL, finance).JSON(t, "GET", "/v1/ledger/check", nil, 200, &chk)
	if !chk.JournalOK || chk.SumFen != 0 || len(chk.Problems) > 0 {
		t.Fatalf("ledger check after the restart: %+v", chk)
	}
	// Every acknowledged transfer id is a distinct transfer in the statement.
	ids := map[string]bool{}
	acked.Range(func(_, v any) bool { ids[v.(string)] = true; return true })
	if len(ids) != total {
		t.Fatalf("%d keys acknowledged with %d distinct transfers", total, len(ids))
	}
	seen := map[string]int{}
	cursor := ""
	fc := nodetest.NewClient(p.URL, finance)
	for {
		var page struct {
			Entries []struct {
				ID string `json:"id"`
			} `json:"entries"`
			Next string `json:"next"`
		}
		fc.JSON(t, "GET", "/v1/accounts/"+wallet+"/statement?limit=500&cursor="+cursor, nil, 200, &page)
		for _, e := range page.Entries {
			seen[e.ID]++
		}
		if page.Next == "" {
			break
		}
		cursor = page.Next
	}
	for id := range ids {
		if seen[id] != 1 {
			t.Fatalf("acknowledged transfer %s appears %d times in the statement", id, seen[id])
		}
	}
	if err := p.Terminate(); err != nil {
		t.Errorf("stopping: %v", err)
	}

	t.Run("bad database URL or password: a clear message, exit 1", func(t *testing.T) {
		// A role with a password, checked by scram for 127.0.0.1.
		admin, err := sql.Open("pgx", cl.AdminURL())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Exec(`CREATE ROLE clerk LOGIN PASSWORD 'right-horse-battery'`); err != nil {
			t.Fatal(err)
		}
		admin.Close()
		hba := filepath.Join(cl.Dir, "data", "pg_hba.conf")
		old, err := os.ReadFile(hba)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(hba, append([]byte("host all clerk 127.0.0.1/32 scram-sha-256\n"), old...), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := cl.Restart(); err != nil {
			t.Fatal(err)
		}
		dbName := dsn[strings.LastIndex(dsn, "/")+1 : strings.Index(dsn, "?")]
		freePort := strings.TrimPrefix(nodetest.FreeAddr(t), "127.0.0.1:")
		for _, tc := range []struct {
			name, url, want string
		}{
			{"wrong password", fmt.Sprintf("postgres://clerk:wrong-secret-pw@127.0.0.1:%d/%s?sslmode=disable", cl.Port, dbName), "password authentication failed"},
			{"nothing listening", "postgres://postgres@127.0.0.1:" + freePort + "/x?sslmode=disable", "cannot connect to PostgreSQL"},
			{"no such database", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/nope?sslmode=disable", cl.Port), `database "nope" does not exist`},
			{"malformed URL", "postgres://postgres@127.0.0.1:notaport/x", "not valid"},
			{"another database's URL", "mysql://clerk:wrong-secret-pw@127.0.0.1/x", `unsupported database URL scheme "mysql"`},
			{"keyword/value string", "host=127.0.0.1 user=clerk password=wrong-secret-pw dbname=x", "keyword/value connection string"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				data, cwd := t.TempDir(), t.TempDir()
				cmd := exec.CommandContext(ctx, nodetest.Binary(t), "serve", "--addr", nodetest.FreeAddr(t), "--data", data, "--db", tc.url)
				cmd.Dir = cwd // a URL taken for a relative SQLite path would be created here
				out, err := cmd.CombinedOutput()
				ee, ok := err.(*exec.ExitError)
				if !ok || ee.ExitCode() != 1 {
					t.Fatalf("exit: %v, want status 1\n%s", err, out)
				}
				s := string(out)
				if !strings.Contains(s, tc.want) {
					t.Fatalf("stderr does not say %q:\n%s", tc.want, s)
				}
				for _, bad := range []string{"goroutine ", "panic", "wrong-secret-pw", ".go:"} {
					if strings.Contains(s, bad) {
						t.Fatalf("stderr contains %q:\n%s", bad, s)
					}
				}
				if n := strings.Count(strings.TrimSpace(s), "\n"); n > 2 {
					t.Fatalf("a %d-line message for a bad URL:\n%s", n+1, s)
				}
				if ents, _ := os.ReadDir(cwd); len(ents) != 0 {
					t.Fatalf("a refused --db created %v in the working directory", ents)
				}
			})
		}
	})
}

// TestTwoProcessThroughput measures requests per second with all load on one
// process and spread over two (both on one PostgreSQL database), in
// alternating rounds, and where the CPU time goes (node processes,
// PostgreSQL backends, the load generator; read from /proc). It is a
// measurement, not a check: set YIKATONG_BENCH=1 to run it, and
// YIKATONG_BENCH_PROFILES=DIR to save CPU profiles of the node processes
// (docs/benchmarks.md, "Two processes on PostgreSQL"), and
// YIKATONG_BENCH_WORKERS=N to run N closed-loop callers instead of 32,
// YIKATONG_BENCH_ROUNDS=N rounds instead of 5, and YIKATONG_BENCH_ROUND=D
// per round instead of 5s (the profiles cover the round less 2 s).
//
// Before the rounds, each load runs for 3 s on both processes and the
// database is analysed, as pgbench vacuums before it measures. Without
// that, the first rounds measured a start-up artefact: a connection keeps
// the generic plan PostgreSQL chose when the scans and journal tables were
// nearly empty (a sequential scan) until autovacuum's first ANALYZE,
// up to a minute later, and whichever process served first paid for
// scans of the whole table (docs/benchmarks.md, "Session 8").
func TestTwoProcessThroughput(t *testing.T) {
	if os.Getenv("YIKATONG_BENCH") == "" {
		t.Skip("set YIKATONG_BENCH=1 to measure")
	}
	dsn := storetest.Postgres(t)
	cl, _ := storetest.SharedCluster()
	dir := t.TempDir()
	pa, pb := nodetest.FreeAddr(t), nodetest.FreeAddr(t)
	a := nodetest.StartProcess(t, dir, "--db", dsn, "--demo", "--pprof", pa)
	b := nodetest.StartProcess(t, dir, "--db", dsn, "--pprof", pb)
	demo, err := node.ReadDemoFile(filepath.Join(dir, "demo.json"))
	if err != nil {
		t.Fatal(err)
	}
	bus := demoTerminal(t, demo, "transit.bus")
	finance := demo.Staff["finance"].Token
	profDir := os.Getenv("YIKATONG_BENCH_PROFILES")
	workers := 32
	if s := os.Getenv("YIKATONG_BENCH_WORKERS"); s != "" {
		var err error
		if workers, err = strconv.Atoi(s); err != nil || workers < 1 {
			t.Fatalf("YIKATONG_BENCH_WORKERS=%q: want a positive number", s)
		}
	}
	rounds, dur := 5, 5*time.Second
	if s := os.Getenv("YIKATONG_BENCH_ROUNDS"); s != "" {
		var err error
		if rounds, err = strconv.Atoi(s); err != nil || rounds < 1 {
			t.Fatalf("YIKATONG_BENCH_ROUNDS=%q: want a positive number", s)
		}
	}
	if s := os.Getenv("YIKATONG_BENCH_ROUND"); s != "" {
		var err error
		if dur, err = time.ParseDuration(s); err != nil || dur < 3*time.Second {
			t.Fatalf("YIKATONG_BENCH_ROUND=%q: want a duration of at least 3s", s)
		}
	}
	var seq atomic.Int64
	type load struct {
		name string
		req  func(base string) (*nodetest.Client, string, map[string]any)
	}
	// One transport for every caller, keeping a connection per caller and
	// node, as terminals and bank channels keep theirs. (A client with
	// http.DefaultTransport keeps two idle connections per node, so most
	// requests of 64 callers opened and closed a connection of their own.)
	transport := &http.Transport{MaxIdleConns: 2 * workers, MaxIdleConnsPerHost: workers, IdleConnTimeout: time.Minute}
	defer transport.CloseIdleConnections()
	client := func(base, token string) *nodetest.Client {
		c := nodetest.NewClient(base, token)
		c.HTTP.Transport = transport
		return c
	}
	loads := []load{
		{"card scans (transit.bus)", func(base string) (*nodetest.Client, string, map[string]any) {
			i := seq.Add(1)
			r := demo.Residents[int(i)%len(demo.Residents)]
			return client(base, bus.Token), "/v1/scans", map[string]any{"idempotency_key": fmt.Sprintf("bench-%d", i), "scenario": "transit.bus", "card_number": r.CardNumber}
		}},
		{"top-ups", func(base string) (*nodetest.Client, string, map[string]any) {
			i := seq.Add(1)
			r := demo.Residents[int(i)%len(demo.Residents)]
			return client(base, finance), "/v1/topups", map[string]any{"idempotency_key": fmt.Sprintf("bench-%d", i), "card_number": r.CardNumber, "amount_fen": 1}
		}},
	}
	profile := func(name, addr string, done chan<- struct{}) {
		defer close(done)
		if profDir == "" {
			return
		}
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(dur.Seconds())-2))
		if err != nil {
			t.Logf("profile %s: %v", name, err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(filepath.Join(profDir, name+".pprof"))
		if err != nil {
			t.Logf("profile %s: %v", name, err)
			return
		}
		defer f.Close()
		io.Copy(f, resp.Body)
	}
	nodePids := []int{a.Cmd.Process.Pid, b.Cmd.Process.Pid}
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	xacts := func() float64 { // called from a caller's goroutine: no t.Fatal
		var n float64
		if err := admin.QueryRow(`SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()`).Scan(&n); err != nil {
			t.Errorf("reading PostgreSQL's transaction count: %v", err)
		}
		return n
	}
	for _, ld := range loads {
		end := time.Now().Add(3 * time.Second)
		var wg sync.WaitGroup
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) {
					c, path, body := ld.req([]string{a.URL, b.URL}[w%2])
					c.Try("POST", path, body)
				}
			}()
		}
		wg.Wait()
	}
	if _, err := admin.Exec(`ANALYZE`); err != nil {
		t.Fatal(err)
	}
	for li, ld := range loads {
		rates := map[int][]float64{}
		for round := 0; round < rounds; round++ {
			order := []int{1, 2}
			if round%2 == 1 { // alternate which goes first, so a drift of the machine favours neither
				order = []int{2, 1}
			}
			for _, spread := range order {
				bases := []string{a.URL, b.URL}[:spread]
				var ok, failed atomic.Int64
				var wg sync.WaitGroup
				warm := time.Now().Add(time.Second)
				end := warm.Add(dur)
				var profWait []chan struct{}
				tag := fmt.Sprintf("load%d-%dproc", li, spread)
				for i, addr := range []string{pa, pb}[:spread] {
					ch := make(chan struct{})
					profWait = append(profWait, ch)
					go func() {
						if round != 0 {
							close(ch)
							return
						}
						time.Sleep(time.Until(warm))
						profile(fmt.Sprintf("%s-%c", tag, 'A'+i), addr, ch)
					}()
				}
				var cpu0 cpuSplit
				var b0, e0, x0 float64
				var ph0 map[string]float64
				var once sync.Once
				for w := 0; w < workers; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for time.Now().Before(end) {
							c, path, body := ld.req(bases[w%len(bases)])
							resp, err := c.Try("POST", path, body)
							if time.Now().Before(warm) {
								continue
							}
							once.Do(func() {
								cpu0 = readCPUSplit(nodePids, cl)
								b0, e0 = ledgerBatches(a.URL, b.URL)
								x0 = xacts()
								ph0 = ledgerPhases(a.URL, b.URL)
							})
							if err == nil && resp.Status == 200 {
								ok.Add(1)
							} else {
								failed.Add(1)
							}
						}
					}()
				}
				wg.Wait()
				cpu1 := readCPUSplit(nodePids, cl)
				b1, e1 := ledgerBatches(a.URL, b.URL)
				ph1 := ledgerPhases(a.URL, b.URL)
				x1 := xacts()
				for _, ch := range profWait {
					<-ch
				}
				rate := float64(ok.Load()) / dur.Seconds()
				rates[spread] = append(rates[spread], rate)
				per := func(x float64) float64 { return 1000 * x / float64(ok.Load()+failed.Load()) }
				t.Logf("%-26s %d process(es) round %d: %6.0f req/s (%d failed) | CPU ms/request: node %.2f, PostgreSQL %.2f, load generator %.2f; machine busy %.0f%%; ledger requests per batch %.1f; PostgreSQL transactions per request %.2f",
					ld.name, spread, round, rate, failed.Load(), per(cpu1.node-cpu0.node), per(cpu1.pg-cpu0.pg), per(cpu1.self-cpu0.self),
					100*(cpu1.busy-cpu0.busy)/(cpu1.total-cpu0.total), (e1-e0)/max(b1-b0, 1), (x1-x0)/float64(ok.Load()+failed.Load()))
				var phases []string
				for _, name := range ledger.PhaseNames {
					if d := ph1[name] - ph0[name]; d > 0 {
						phases = append(phases, fmt.Sprintf("%s %.2f", name, 1000*d/max(b1-b0, 1)))
					}
				}
				t.Logf("%-26s %d process(es) round %d: %.0f ledger batches/s; ms per batch (summed over processes): %s",
					ld.name, spread, round, (b1-b0)/dur.Seconds(), strings.Join(phases, ", "))
			}
		}
		ratios := make([]float64, rounds)
		for i := range ratios {
			ratios[i] = rates[2][i] / rates[1][i]
		}
		t.Logf("%s: median %0.f req/s on one process, %0.f req/s on two (%.2fx); per round, two over one: %.2f", ld.name, median(rates[1]), median(rates[2]), median(rates[2])/median(rates[1]), ratios)
	}
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// cpuSplit is CPU seconds used so far by the node processes, the test
// cluster's PostgreSQL processes and this process, and the machine's busy
// and total CPU seconds.
type cpuSplit struct{ node, pg, self, busy, total float64 }

func readCPUSplit(nodePids []int, cl *storetest.Cluster) cpuSplit {
	var c cpuSplit
	for _, p := range nodePids {
		c.node += procCPU(p)
	}
	c.self = procCPU(os.Getpid())
	if cl != nil {
		if b, err := os.ReadFile(filepath.Join(cl.Dir, "data", "postmaster.pid")); err == nil {
			var pm int
			fmt.Sscan(string(b), &pm)
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				var pid int
				if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
					continue
				}
				if pid == pm || procPPid(pid) == pm {
					c.pg += procCPU(pid)
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		for i, x := range f[1:] {
			var v float64
			fmt.Sscan(x, &v)
			c.total += v / 100
			if i != 3 && i != 4 { // idle, iowait
				c.busy += v / 100
			}
		}
	}
	return c
}

// procStat returns the fields of /proc/PID/stat after the command name.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// procCPU is a process's user+system CPU seconds (clock ticks of 1/100 s).
func procCPU(pid int) float64 {
	f := procStat(pid)
	if len(f) < 13 {
		return 0
	}
	var u, s float64
	fmt.Sscan(f[11], &u)
	fmt.Sscan(f[12], &s)
	return (u + s) / 100
}

func procPPid(pid int) int {
	f := procStat(pid)
	if len(f) < 2 {
		return 0
	}
	var pp int
	fmt.Sscan(f[1], &pp)
	return pp
}

// metricLines calls fn with every line of the /metrics of the nodes at
// urls (a node that does not answer is left out).
func metricLines(urls []string, fn func(line string)) {
	for _, u := range urls {
		resp, err := http.Get(u + "/metrics")
		if err != nil {
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(body), "\n") {
			fn(line)
		}
	}
}

// ledgerPhases sums yikatong_ledger_phase_seconds_total per phase over the
// nodes at urls.
func ledgerPhases(urls ...string) map[string]float64 {
	out := map[string]float64{}
	metricLines(urls, func(line string) {
		rest, ok := strings.CutPrefix(line, `yikatong_ledger_phase_seconds_total{phase="`)
		if !ok {
			return
		}
		if name, val, ok := strings.Cut(rest, `"} `); ok {
			var v float64
			fmt.Sscan(val, &v)
			out[name] += v
		}
	})
	return out
}

// ledgerBatches sums the ledger's group-commit batches and the requests in
// them over the nodes' /metrics.
func ledgerBatches(urls ...string) (batches, entries float64) {
	metricLines(urls, func(line string) {
		var v float64
		if rest, ok := strings.CutPrefix(line, "yikatong_ledger_batches_total "); ok {
			fmt.Sscan(rest, &v)
			batches += v
		} else if rest, ok := strings.CutPrefix(line, "yikatong_ledger_requests_total "); ok {
			fmt.Sscan(rest, &v)
			entries += v
		}
	})
	return batches, entries
}
