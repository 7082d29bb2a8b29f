package federation

// Simulating a region (issue #6; `yikatong region simulate`,
// docs/federation.md "Simulating a region").
//
// Simulate runs a whole region in one process: one node per city, each
// with its own SQLite store in a temporary directory (removed at the end),
// served over real HTTP on 127.0.0.1 with the real refresh and outbox
// loops. It measures how fast trust changes spread (an issuer key rotated
// in one city, a member removed from the list and added back) and runs a
// day of cross-city traffic, clears and settles it, and checks the books.
//
// This package cannot import internal/node (node imports federation), so
// the caller supplies the function that opens a node (SimOptions.Open);
// `yikatong region simulate` and the tests open a node.Node.
//
// Voids need a home city that answers late. The simulation puts each node
// behind a small HTTP wrapper that holds back the online charges of one
// reserved resident per city (the "slow link" resident) for longer than
// the visiting city waits, then lets them through: the visiting city gives
// up, accepts a bus ride offline (a guaranteed charge for the outbox) or
// declines a medical bill and queues a void, and the late charge still
// reaches the home city — the race docs/federation.md describes.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/ledger"
)

// Simulation defaults.
const (
	DefaultSimCities    = 41 // the Yangtze River Delta
	DefaultSimRefresh   = 2 * time.Second
	DefaultSimResidents = 8
	DefaultSimWorkers   = 16
	// MaxSimCities bounds --cities (ids CN-310000 + 100·i).
	MaxSimCities = 200
	// PollResolution is how finely propagation is timed: every node is
	// looked at every 10 ms, and a round over 40 nodes takes a few ms more.
	PollResolution = 20 * time.Millisecond
)

// SimOptions configures Simulate.
type SimOptions struct {
	// Cities is the number of city nodes (default 41, at least 2; the
	// membership change needs 3).
	Cities int
	// Refresh is every node's member list and bundle refresh interval.
	Refresh time.Duration
	// Scans is the number of cross-city scans in the simulated day
	// (default 20 per city).
	Scans int
	// Duration caps the day's traffic (0: until Scans are done). The
	// scans not started by then are left out of the day.
	Duration time.Duration
	// Workers is the number of terminals scanning at once (default 16).
	Workers int
	// Seed makes the day's traffic plan reproducible.
	Seed uint64
	// Dir is where the temporary region directory is made ("" = the
	// system's temporary directory). It is removed at the end.
	Dir string
	// Open opens one city node (required).
	Open func(ctx context.Context, c SimNodeConfig) (*SimNode, error)
}

// SimNodeConfig is what Simulate asks SimOptions.Open for.
type SimNodeConfig struct {
	City string
	// Dir is the node's own data directory (its SQLite store).
	Dir string
	// BaseURL is where Simulate will serve SimNode.Handler (127.0.0.1).
	BaseURL string
	// Residents is how many demo residents to enrol and fund (8: the
	// simulation uses those SimNode.Residents lists).
	Residents  int
	Federation Config
}

// SimNode is an opened city node as Simulate drives it.
type SimNode struct {
	// Handler is the node's HTTP API (Simulate serves it at BaseURL).
	Handler http.Handler
	Fed     *Service
	// IssueCode signs a fresh e-code for a card of this city.
	IssueCode func(ctx context.Context, card string) (string, error)
	// Residents (at least 2): the last one is the city's "slow link"
	// resident, the others scan ordinarily.
	Residents []SimResident
	// Terminals maps a scenario to the bearer token of a terminal for it
	// (transit.bus and medical.outpatient are used).
	Terminals map[string]string
	// OperatorToken may POST /v1/keys/rotate.
	OperatorToken string
	Close         func() error
}

// SimResident is a demo resident of a simulated city.
type SimResident struct {
	Card string
	PIN  string
}

// Millis is a duration that reads as milliseconds in JSON.
type Millis time.Duration

// MarshalJSON writes the duration in milliseconds.
func (m Millis) MarshalJSON() ([]byte, error) {
	return []byte(strconv.FormatFloat(float64(time.Duration(m))/float64(time.Millisecond), 'f', 1, 64)), nil
}

// UnmarshalJSON reads milliseconds.
func (m *Millis) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return err
	}
	*m = Millis(f * float64(time.Millisecond))
	return nil
}

func (m Millis) String() string { return round(time.Duration(m)).String() }

func round(d time.Duration) time.Duration {
	if d >= 10*time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

// SimReport is what Simulate measured and checked.
type SimReport struct {
	Cities  int    `json:"cities"`
	Refresh Millis `json:"refresh_ms"`
	// Startup is the time to open and serve every node; FullTrust the time
	// from signing the member list until every node trusts every other.
	Startup   Millis      `json:"startup_ms"`
	FullTrust Millis      `json:"full_trust_ms"`
	Rotation  Propagation `json:"key_rotation"`
	// Removed and Added: a member dropped from the list and put back.
	Removed *Propagation `json:"member_removed,omitempty"`
	Added   *Propagation `json:"member_added,omitempty"`
	Day     DayReport    `json:"day"`
	Checks  []SimCheck   `json:"checks"`
	// OK is set when every check passed.
	OK      bool   `json:"ok"`
	Elapsed Millis `json:"elapsed_ms"`
}

// Propagation is how long a change made in one place took to reach every
// other node.
type Propagation struct {
	What    string `json:"what"`
	City    string `json:"city"`
	Nodes   int    `json:"nodes"`
	Reached int    `json:"reached"`
	P50     Millis `json:"p50_ms"`
	Max     Millis `json:"max_ms"`
	// MaxRefreshes is Max in refresh intervals; WithinRefresh says every
	// node had it within one (give or take PollResolution).
	MaxRefreshes  float64 `json:"max_in_refreshes"`
	WithinRefresh bool    `json:"within_one_refresh"`
}

// DayReport is the day's traffic, clearing and settlement.
type DayReport struct {
	Days    []string `json:"days"`
	Planned int      `json:"planned_scans"`
	Scans   int      `json:"scans"`
	// Accepted and Declined by scenario and reason.
	Accepted   int            `json:"accepted"`
	Declined   int            `json:"declined"`
	ByScenario map[string]int `json:"accepted_by_scenario"`
	Reasons    map[string]int `json:"declined_by_reason"`
	// Offline: rides of a slow-link resident accepted without the home
	// city's answer (guaranteed charges, cleared through the outbox).
	Offline int `json:"accepted_offline"`
	// Voids: scans declined after the home city did not answer in time;
	// each queues a void. VoidedAtHome counts the home cities' voided
	// inbox rows.
	Voids        int   `json:"voids"`
	VoidedAtHome int   `json:"voided_at_home"`
	ChargedFen   int64 `json:"charged_fen"`
	ScanErrors   int   `json:"scan_errors"`
	// Traffic is the wall time of the day's scans; ScanP50/P99 the
	// latency of the ordinary scans at the visited city's API (the
	// slow-link ones wait for the authorisation timeout by design).
	Traffic     Millis  `json:"traffic_ms"`
	ScansPerSec float64 `json:"scans_per_s"`
	ScanP50     Millis  `json:"scan_p50_ms"`
	ScanP99     Millis  `json:"scan_p99_ms"`
	// OverTimeout counts the ordinary scans that took longer than the
	// authorisation timeout (the visitor gave up on the home city: a ride
	// accepted offline, a medical bill declined).
	OverTimeout int    `json:"ordinary_scans_over_auth_timeout"`
	AuthTimeout Millis `json:"auth_timeout_ms"`
	// Clear is the time from the last scan until every outbox is empty;
	// Settle the time for every node to settle the day with every peer.
	Clear      Millis `json:"clear_ms"`
	Settle     Millis `json:"settle_ms"`
	Statements int    `json:"statements"`
	Agreed     int    `json:"agreed"`
	Pairs      int    `json:"pairs"`
	Messages   int64  `json:"messages"`
	GrossFen   int64  `json:"gross_fen"`
	// Reconciled pairs and the discrepancies reconciliation listed.
	Reconciled    int         `json:"reconciled_pairs"`
	Discrepancies int         `json:"discrepancies"`
	TopPairs      []PairTotal `json:"top_pairs"`
}

// PairTotal is a settled pair's day (A < B by city id).
type PairTotal struct {
	A        string `json:"a"`
	B        string `json:"b"`
	AOwesB   int64  `json:"a_owes_b_fen"`
	BOwesA   int64  `json:"b_owes_a_fen"`
	Net      int64  `json:"net_a_to_b_fen"`
	Messages int64  `json:"messages"`
}

// SimCheck is one invariant checked at the end.
type SimCheck struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// simCity is a running node of the simulation.
type simCity struct {
	*SimNode
	id   string
	url  string
	srv  *http.Server
	gate *slowGate
	key  ecode.PublicKey
}

// slowGate holds back the online charges of the "slow link" subjects for
// longer than the visiting city waits, then lets them through.
type slowGate struct {
	h        http.Handler
	delay    time.Duration
	subjects sync.Map // card token → true
	inflight atomic.Int64
	late     atomic.Int64
}

func (g *slowGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == "/v1/federation/charge" {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		r.Body.Close()
		if err != nil {
			http.Error(w, "reading the request", http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var env Envelope
		var c Charge
		if json.Unmarshal(body, &env) == nil && json.Unmarshal(env.Body, &c) == nil {
			if _, slow := g.subjects.Load(c.Subject); slow {
				g.inflight.Add(1)
				defer g.inflight.Add(-1)
				g.late.Add(1)
				time.Sleep(g.delay)
				// The charge reaches the home city although the visitor
				// has given up: the race a void must win.
				r = r.WithContext(context.WithoutCancel(r.Context()))
			}
		}
	}
	g.h.ServeHTTP(w, r)
}

type simulation struct {
	opts     SimOptions
	cfg      Config
	progress io.Writer
	dir      string
	members  string
	anchor   ecode.Signer
	cities   []*simCity
	client   *http.Client
	rep      SimReport
	slowMed  map[string]int64 // home city → the slow resident's medical balance before the day
}

func (s *simulation) logf(format string, args ...any) {
	fmt.Fprintf(s.progress, "simulate: "+format+"\n", args...)
}

func (s *simulation) check(name string, ok bool, detail string, args ...any) {
	s.rep.Checks = append(s.rep.Checks, SimCheck{Name: name, OK: ok, Detail: fmt.Sprintf(detail, args...)})
}

// Simulate runs a region of in-process nodes (see the comment at the top
// of sim.go) and reports what it measured. An error means the simulation
// could not run (bad options, a node that would not start, a region that
// never reached full trust, ctx ended); a run whose invariants failed
// returns a report with OK false and the failed checks.
func Simulate(ctx context.Context, opts SimOptions, progress io.Writer) (SimReport, error) {
	if progress == nil {
		progress = io.Discard
	}
	if opts.Open == nil {
		return SimReport{}, apperr.Invalid("open", "Simulate needs a node opener", "缺少节点启动函数")
	}
	if opts.Cities == 0 {
		opts.Cities = DefaultSimCities
	}
	if opts.Cities < 2 || opts.Cities > MaxSimCities {
		return SimReport{}, apperr.Invalid("cities", fmt.Sprintf("cities must be between 2 and %d", MaxSimCities), fmt.Sprintf("城市数须在 2 到 %d 之间", MaxSimCities))
	}
	if opts.Refresh == 0 {
		opts.Refresh = DefaultSimRefresh
	}
	if opts.Refresh < 50*time.Millisecond || opts.Refresh > 5*time.Minute {
		return SimReport{}, apperr.Invalid("refresh", "the refresh interval must be between 50ms and 5m", "刷新间隔须在 50 毫秒到 5 分钟之间")
	}
	if opts.Scans == 0 {
		opts.Scans = 20 * opts.Cities
	}
	if opts.Scans < 0 || opts.Scans > 1_000_000 {
		return SimReport{}, apperr.Invalid("scans", "scans must be between 1 and 1,000,000", "扫码次数须在 1 到 1000000 之间")
	}
	if opts.Duration < 0 {
		return SimReport{}, apperr.Invalid("duration", "the duration must not be negative", "时长不能为负")
	}
	if opts.Workers <= 0 {
		opts.Workers = DefaultSimWorkers
	}
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	began := time.Now()
	dir, err := os.MkdirTemp(opts.Dir, "yikatong-region-sim-")
	if err != nil {
		return SimReport{}, apperr.Wrap(apperr.Internal, err)
	}
	defer os.RemoveAll(dir)
	anchor, err := ecode.GenerateSM2()
	if err != nil {
		return SimReport{}, apperr.Wrap(apperr.Internal, err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	s := &simulation{opts: opts, progress: progress, dir: dir, members: filepath.Join(dir, "members.json"), anchor: anchor,
		client: &http.Client{Transport: tr, Timeout: 30 * time.Second}, slowMed: map[string]int64{}}
	defer tr.CloseIdleConnections()
	s.cfg = Config{Anchor: anchor.Public(), Members: s.members, Refresh: opts.Refresh, OutboxEvery: 500 * time.Millisecond,
		AuthTimeout: time.Second, RiskLimitFen: 5000, MaxBackoff: 5 * time.Second}
	s.rep = SimReport{Cities: opts.Cities, Refresh: Millis(opts.Refresh)}
	defer s.shutdown()
	if err := s.run(ctx); err != nil {
		return s.rep, err
	}
	s.rep.OK = true
	for _, c := range s.rep.Checks {
		s.rep.OK = s.rep.OK && c.OK
	}
	s.rep.Elapsed = Millis(time.Since(began))
	return s.rep, nil
}

func (s *simulation) run(ctx context.Context) error {
	if err := s.start(ctx); err != nil {
		return err
	}
	if err := s.rotate(ctx); err != nil {
		return err
	}
	if s.opts.Cities >= 3 {
		if err := s.membership(ctx); err != nil {
			return err
		}
	}
	return s.day(ctx)
}

func cityID(i int) string { return fmt.Sprintf("CN-%06d", 310000+i*100) }

// start opens and serves every node, signs the member list and waits for
// full trust.
func (s *simulation) start(ctx context.Context) error {
	n := s.opts.Cities
	t0 := time.Now()
	s.cities = make([]*simCity, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	var started atomic.Int64
	for i := range s.cities {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			s.cities[i], errs[i] = s.open(ctx, cityID(i))
			if k := started.Add(1); k%10 == 0 && int(k) != n {
				s.logf("%d of %d nodes started", k, n)
			}
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return fmt.Errorf("starting %s: %w", cityID(i), err)
		}
	}
	s.rep.Startup = Millis(time.Since(t0))
	s.logf("%d nodes started in %v (SQLite each, HTTP on 127.0.0.1)", n, round(time.Since(t0)))
	t0 = time.Now()
	if err := s.writeMembers(s.cities); err != nil {
		return err
	}
	others := s.indices(-1)
	if d, _ := s.watch(ctx, others, max(60*time.Second, 20*s.opts.Refresh), func(i int) bool { return s.trustsAll(s.cities[i]) }); d == nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		return fmt.Errorf("the region did not reach full trust within %v", max(60*time.Second, 20*s.opts.Refresh))
	}
	s.rep.FullTrust = Millis(time.Since(t0))
	s.logf("every node trusts every other (%d directed pairs) in %v, refresh %v", n*(n-1), round(time.Since(t0)), s.opts.Refresh)
	return nil
}

func (s *simulation) open(ctx context.Context, id string) (*simCity, error) {
	dir := filepath.Join(s.dir, id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	url := "http://" + ln.Addr().String()
	sn, err := s.opts.Open(ctx, SimNodeConfig{City: id, Dir: dir, BaseURL: url, Residents: DefaultSimResidents, Federation: s.cfg})
	if err != nil {
		ln.Close()
		return nil, err
	}
	if sn.Fed == nil || sn.Handler == nil || sn.IssueCode == nil || len(sn.Residents) < 2 || sn.Terminals["transit.bus"] == "" || sn.Terminals["medical.outpatient"] == "" {
		ln.Close()
		if sn.Close != nil {
			sn.Close()
		}
		return nil, fmt.Errorf("the opened node lacks a handler, federation, code issuer, two residents or the transit.bus and medical.outpatient terminals")
	}
	c := &simCity{SimNode: sn, id: id, url: url, key: sn.Fed.Node().Public()}
	c.gate = &slowGate{h: sn.Handler, delay: s.cfg.AuthTimeout + 500*time.Millisecond}
	c.srv = &http.Server{Handler: c.gate, ReadHeaderTimeout: 10 * time.Second}
	go c.srv.Serve(ln)
	return c, nil
}

func (s *simulation) shutdown() {
	for _, c := range s.cities {
		if c != nil {
			deadline := time.Now().Add(10 * time.Second)
			for c.gate.inflight.Load() > 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			c.srv.Close()
		}
	}
	for _, c := range s.cities {
		if c != nil && c.Close != nil {
			c.Close()
		}
	}
}

func (s *simulation) writeMembers(cs []*simCity) error {
	var ms []Member
	for _, c := range cs {
		ms = append(ms, Member{City: c.id, BaseURL: c.url, NodeKey: c.key.JWK()})
	}
	b, err := SignMembers(MemberList{Region: "sim", Members: ms}, s.anchor)
	if err != nil {
		return err
	}
	if err := os.WriteFile(s.members+".tmp", b, 0o644); err != nil {
		return err
	}
	return os.Rename(s.members+".tmp", s.members)
}

// indices lists the cities but skip.
func (s *simulation) indices(skip int) []int {
	var out []int
	for i := range s.cities {
		if i != skip {
			out = append(out, i)
		}
	}
	return out
}

func (s *simulation) trustsAll(c *simCity) bool {
	st := c.Fed.Status()
	if len(st.Peers) != len(s.cities)-1 {
		return false
	}
	for _, p := range st.Peers {
		if !p.Trusted {
			return false
		}
	}
	return true
}

func trustsPeer(c *simCity, peer string) (bool, int) {
	for _, p := range c.Fed.Status().Peers {
		if p.City == peer {
			return p.Trusted, p.Keys
		}
	}
	return false, 0
}

// watch polls cond for each node in idx until every one holds or limit
// passes; it returns, per node in idx order, when cond first held (0 for
// never), or nil if not all did.
func (s *simulation) watch(ctx context.Context, idx []int, limit time.Duration, cond func(i int) bool) ([]time.Duration, int) {
	start := time.Now()
	seen := make([]time.Duration, len(idx))
	left := len(idx)
	for left > 0 && time.Since(start) < limit && ctx.Err() == nil {
		for k, i := range idx {
			if seen[k] == 0 && cond(i) {
				seen[k] = max(time.Since(start), time.Nanosecond)
				left--
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if left > 0 {
		return nil, len(idx) - left
	}
	return seen, len(idx)
}

func (s *simulation) propagation(what, city string, seen []time.Duration, nodes, reached int) Propagation {
	p := Propagation{What: what, City: city, Nodes: nodes, Reached: reached}
	if seen != nil {
		d := slices.Clone(seen)
		slices.Sort(d)
		p.P50, p.Max = Millis(d[(len(d)-1)/2]), Millis(d[len(d)-1])
		p.MaxRefreshes = float64(d[len(d)-1]) / float64(s.opts.Refresh)
		p.WithinRefresh = d[len(d)-1] <= s.opts.Refresh+PollResolution
	}
	return p
}

func (p Propagation) line() string {
	if p.Reached < p.Nodes {
		return fmt.Sprintf("%s in %s reached only %d of %d nodes", p.What, p.City, p.Reached, p.Nodes)
	}
	return fmt.Sprintf("%s in %s reached all %d other nodes: p50 %v, max %v = %.2f refreshes (within one: %s)", p.What, p.City, p.Nodes, p.P50, p.Max, p.MaxRefreshes, yesNo(p.WithinRefresh))
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// rotate rotates the first city's issuer key and watches every other node
// until it trusts the new key.
func (s *simulation) rotate(ctx context.Context) error {
	src := s.cities[0]
	base := map[int]int{}
	for i, c := range s.cities {
		if i > 0 {
			_, base[i] = trustsPeer(c, src.id)
		}
	}
	var rot struct {
		Kid string `json:"kid"`
	}
	if err := s.post(ctx, src.url, src.OperatorToken, "/v1/keys/rotate", nil, &rot); err != nil {
		return fmt.Errorf("rotating %s's issuer key: %w", src.id, err)
	}
	others := s.indices(0)
	polls := map[int]int{}
	limit := 10 * s.opts.Refresh
	seen, reached := s.watch(ctx, others, limit, func(i int) bool {
		// Cheap first: the peer's key count (Status); the kid itself
		// (PeerKeys parses every peer's keys) when it changed, and every
		// tenth round in case a rotation keeps the count.
		polls[i]++
		if _, k := trustsPeer(s.cities[i], src.id); k == base[i] && polls[i]%10 != 0 {
			return false
		}
		for _, k := range s.cities[i].Fed.PeerKeys()[src.id] {
			if k.KidString() == rot.Kid {
				return true
			}
		}
		return false
	})
	s.rep.Rotation = s.propagation("issuer key rotation", src.id, seen, len(others), reached)
	s.logf("%s", s.rep.Rotation.line())
	s.check("key rotation reached every node", seen != nil, "%d of %d nodes within %v", reached, len(others), limit)
	return ctx.Err()
}

// membership drops the last city from the member list, watches every
// other node stop trusting it, then puts it back and watches them trust it
// again (and it them).
func (s *simulation) membership(ctx context.Context) error {
	vi := len(s.cities) - 1
	victim := s.cities[vi]
	others := s.indices(vi)
	limit := 10 * s.opts.Refresh
	if err := s.writeMembers(s.cities[:vi]); err != nil {
		return err
	}
	seen, reached := s.watch(ctx, others, limit, func(i int) bool {
		_, _, ok := s.cities[i].Fed.Members().Member(victim.id)
		return !ok
	})
	removed := s.propagation("member removed", victim.id, seen, len(others), reached)
	s.rep.Removed = &removed
	s.logf("%s", removed.line())
	s.check("member removal reached every node", seen != nil, "%d of %d nodes within %v", reached, len(others), limit)
	time.Sleep(time.Millisecond) // the next list's version (Unix ms) must be larger
	if err := s.writeMembers(s.cities); err != nil {
		return err
	}
	seen, reached = s.watch(ctx, others, limit, func(i int) bool {
		ok, _ := trustsPeer(s.cities[i], victim.id)
		return ok
	})
	added := s.propagation("member added", victim.id, seen, len(others), reached)
	s.rep.Added = &added
	s.logf("%s", added.line())
	s.check("member addition reached every node", seen != nil, "%d of %d nodes within %v", reached, len(others), limit)
	if d, _ := s.watch(ctx, s.indices(-1), max(60*time.Second, 20*s.opts.Refresh), func(i int) bool { return s.trustsAll(s.cities[i]) }); d == nil {
		if err := ctx.Err(); err != nil {
			return err
		}
		return fmt.Errorf("the region did not return to full trust after the member was added back")
	}
	return ctx.Err()
}

func (s *simulation) post(ctx context.Context, base, token, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST %s%s: %d %s", base, path, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// A planned scan of the day.
type simScan struct {
	home, at int
	resident int
	scenario string
	amount   int64
	kind     string // "ride", "medical", "void" (slow-link medical), "offline" (slow-link ride)
}

type simResult struct {
	decision string
	reason   string
	charged  int64
	latency  time.Duration
	err      error
	done     bool
}

// plan draws the day: residents of each city scanned at terminals of
// random other cities — mostly bus fares, some medical bills, and a few
// scans of the slow-link residents (a void or an offline acceptance).
func (s *simulation) plan() []simScan {
	n := len(s.cities)
	rng := rand.New(rand.NewPCG(s.opts.Seed, 0x59_4b_54))
	out := make([]simScan, s.opts.Scans)
	for i := range out {
		sc := simScan{home: rng.IntN(n), scenario: "transit.bus", kind: "ride"}
		r := len(s.cities[sc.home].Residents) // the last one is the slow-link resident
		sc.resident = rng.IntN(r - 1)
		sc.at = rng.IntN(n - 1)
		if sc.at >= sc.home {
			sc.at++
		}
		switch {
		case i%33 == 16:
			sc.kind, sc.resident, sc.scenario = "void", r-1, "medical.outpatient"
		case i%33 == 32:
			sc.kind, sc.resident = "offline", r-1
		case rng.IntN(100) < 12:
			sc.kind, sc.scenario = "medical", "medical.outpatient"
		}
		if sc.scenario == "medical.outpatient" {
			sc.amount = 500 + int64(rng.IntN(30))*500 // 5–150 yuan
		}
		out[i] = sc
	}
	return out
}

// day runs the day's traffic, clears it, checks the books, reconciles and
// settles.
func (s *simulation) day(ctx context.Context) error {
	// The slow-link residents: their home holds back their online charges.
	for _, c := range s.cities {
		res := c.Residents[len(c.Residents)-1]
		code, err := c.IssueCode(ctx, res.Card)
		if err != nil {
			return fmt.Errorf("%s: a code for the slow-link resident: %w", c.id, err)
		}
		d, err := ecode.Decode(code)
		if err != nil {
			return fmt.Errorf("%s: decoding a code: %w", c.id, err)
		}
		c.gate.subjects.Store(d.Claims.Subject, true)
		card, err := c.Fed.Residents.Card(ctx, res.Card)
		if err != nil {
			return err
		}
		b, err := c.Fed.Ledger.Balance(ctx, ledger.MedicalID(card.ResidentID))
		if err != nil {
			return err
		}
		s.slowMed[c.id] = b.Balance
	}
	plan := s.plan()
	res := make([]simResult, len(plan))
	tctx := ctx
	if s.opts.Duration > 0 {
		var cancel context.CancelFunc
		tctx, cancel = context.WithTimeout(ctx, s.opts.Duration)
		defer cancel()
	}
	dayStart := time.Now()
	var next, doneN atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < s.opts.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(plan) {
					return
				}
				res[i] = s.scan(ctx, i, plan[i])
				doneN.Add(1)
			}
		}()
	}
	stop := make(chan struct{})
	ticked := make(chan struct{})
	go func() {
		defer close(ticked)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				d := doneN.Load()
				s.logf("day: %d of %d scans (%.0f/s)", d, len(plan), float64(d)/time.Since(dayStart).Seconds())
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-ticked
	dayEnd := time.Now()
	if err := ctx.Err(); err != nil {
		return err
	}
	d := &s.rep.Day
	d.Planned = len(plan)
	d.ByScenario, d.Reasons = map[string]int{}, map[string]int{}
	d.Traffic = Millis(dayEnd.Sub(dayStart))
	d.AuthTimeout = Millis(s.cfg.AuthTimeout)
	var lat []time.Duration
	var firstErr error
	slowDeclined := 0
	for i, r := range res {
		if !r.done {
			continue
		}
		d.Scans++
		if r.err != nil {
			d.ScanErrors++
			if firstErr == nil {
				firstErr = r.err
			}
			continue
		}
		p := plan[i]
		if p.kind == "ride" || p.kind == "medical" {
			lat = append(lat, r.latency) // the slow-link scans wait for the timeout by design
			if r.latency >= s.cfg.AuthTimeout {
				d.OverTimeout++
			}
		}
		if r.decision == "accepted" {
			d.Accepted++
			d.ByScenario[p.scenario]++
			d.ChargedFen += r.charged
			if p.kind == "offline" {
				d.Offline++
			}
		} else {
			d.Declined++
			d.Reasons[r.reason]++
			if r.reason == string(apperr.HomeUnreachable) || r.reason == string(apperr.RiskLimit) {
				d.Voids++
			}
			if p.kind == "void" && r.reason == string(apperr.HomeUnreachable) {
				slowDeclined++
			}
		}
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		d.ScanP50, d.ScanP99 = Millis(lat[(len(lat)-1)/2]), Millis(lat[(len(lat)-1)*99/100])
	}
	if d.Traffic > 0 {
		d.ScansPerSec = float64(d.Scans) / time.Duration(d.Traffic).Seconds()
	}
	s.logf("day: %d scans in %v (%.0f/s, p50 %v, p99 %v): %d accepted (%d offline), %d declined (%d voids), %d fen charged",
		d.Scans, d.Traffic, d.ScansPerSec, d.ScanP50, d.ScanP99, d.Accepted, d.Offline, d.Declined, d.Voids, d.ChargedFen)
	var errs []string
	if firstErr != nil {
		errs = append(errs, "first: "+firstErr.Error())
	}
	s.check("every scan answered", d.ScanErrors == 0, "%d of %d scans answered%s", d.Scans-d.ScanErrors, d.Scans, problems(errs))
	nVoid, nOffline := 0, 0
	for i, p := range plan {
		if res[i].done && res[i].err == nil {
			switch p.kind {
			case "void":
				nVoid++
			case "offline":
				nOffline++
			}
		}
	}
	s.check("slow home: medical bills declined (void queued)", slowDeclined == nVoid, "%d of %d declined home_unreachable", slowDeclined, nVoid)
	s.check("slow home: rides accepted offline", d.Offline == nOffline, "%d of %d accepted", d.Offline, nOffline)

	// Clearing: the held-back charges reach their homes, the outboxes empty.
	t0 := time.Now()
	for _, c := range s.cities {
		c.Fed.Kick()
	}
	drained, _ := s.watch(ctx, s.indices(-1), 2*time.Minute, func(i int) bool {
		c := s.cities[i]
		n, err := c.Fed.Pending(ctx)
		return err == nil && n == 0 && c.gate.inflight.Load() == 0
	})
	d.Clear = Millis(time.Since(t0))
	s.check("every outbox drained", drained != nil, "in %v", round(time.Since(t0)))
	s.logf("cleared: every outbox empty %v after the last scan", d.Clear)
	if err := ctx.Err(); err != nil {
		return err
	}
	s.books(ctx)
	s.reconcile(ctx)
	for day := dayStart.UTC(); ; day = day.Add(24 * time.Hour) {
		d.Days = append(d.Days, day.Format("2006-01-02"))
		if day.Format("2006-01-02") == dayEnd.UTC().Format("2006-01-02") {
			break
		}
	}
	return s.settle(ctx)
}

// scan issues a code at the resident's home and scans it at the visited
// city's terminal over HTTP.
func (s *simulation) scan(ctx context.Context, i int, p simScan) simResult {
	home, at := s.cities[p.home], s.cities[p.at]
	resident := home.Residents[p.resident]
	code, err := home.IssueCode(ctx, resident.Card)
	if err != nil {
		return simResult{done: true, err: fmt.Errorf("issuing a code at %s: %w", home.id, err)}
	}
	body := map[string]any{"idempotency_key": fmt.Sprintf("sim-%d", i), "scenario": p.scenario, "code": code}
	if p.amount > 0 {
		body["amount_fen"] = p.amount
		body["pin"] = resident.PIN
	}
	var a struct {
		Decision   string `json:"decision"`
		Reason     string `json:"reason"`
		ChargedFen *int64 `json:"charged_fen"`
	}
	t0 := time.Now()
	err = s.post(ctx, at.url, at.Terminals[p.scenario], "/v1/scans", body, &a)
	r := simResult{done: true, latency: time.Since(t0), err: err, decision: a.Decision, reason: a.Reason}
	if err == nil && a.Decision == "accepted" {
		if a.ChargedFen == nil {
			r.err = fmt.Errorf("scan %d at %s accepted without charged_fen", i, at.id)
		} else {
			r.charged = *a.ChargedFen
		}
	}
	return r
}

// books checks every ledger, the clearing mirror of every pair, the voids
// at home and the slow-link residents' medical accounts.
func (s *simulation) books(ctx context.Context) {
	bad := []string{}
	voided := 0
	for _, c := range s.cities {
		r, err := c.Fed.Ledger.Check(ctx)
		if err != nil || !r.OK() {
			bad = append(bad, fmt.Sprintf("%s: %+v %v", c.id, r, err))
		}
		var v int
		if err := c.Fed.DB.R.QueryRowContext(ctx, `SELECT COUNT(*) FROM fed_messages WHERE direction = 'in' AND state = $1`, StateVoided).Scan(&v); err != nil {
			bad = append(bad, c.id+": counting voids: "+err.Error())
		}
		voided += v
	}
	s.check("every ledger checks (sums to zero, journal chain verifies)", len(bad) == 0, "%d ledgers%s", len(s.cities), problems(bad))
	s.rep.Day.VoidedAtHome = voided
	s.check("every void recorded at the home city", voided == s.rep.Day.Voids, "%d voided inbox rows for %d declined scans that queued a void", voided, s.rep.Day.Voids)
	mism := []string{}
	pairs := 0
	for ai, a := range s.cities {
		for _, b := range s.cities[ai+1:] {
			pairs++
			ab, e1 := a.Fed.Ledger.Balance(ctx, ledger.ClearingID(b.id))
			ba, e2 := b.Fed.Ledger.Balance(ctx, ledger.ClearingID(a.id))
			if e1 != nil || e2 != nil || ab.Balance != -ba.Balance {
				mism = append(mism, fmt.Sprintf("%s clr:%s=%d, %s clr:%s=%d %v %v", a.id, b.id, ab.Balance, b.id, a.id, ba.Balance, e1, e2))
			}
		}
	}
	s.check("clearing accounts mirror across every pair", len(mism) == 0, "%d pairs%s", pairs, problems(mism))
	changed := []string{}
	for _, c := range s.cities {
		card, err := c.Fed.Residents.Card(ctx, c.Residents[len(c.Residents)-1].Card)
		if err != nil {
			changed = append(changed, c.id+": "+err.Error())
			continue
		}
		b, err := c.Fed.Ledger.Balance(ctx, ledger.MedicalID(card.ResidentID))
		if err != nil || b.Balance != s.slowMed[c.id] {
			changed = append(changed, fmt.Sprintf("%s: %d → %d %v", c.id, s.slowMed[c.id], b.Balance, err))
		}
	}
	s.check("voided medical bills left no money moved", len(changed) == 0, "%d slow-link residents' medical accounts unchanged%s", len(s.cities)-len(changed), problems(changed))
}

// problems lists the first few problems of a check ("" for none).
func problems(s []string) string {
	if len(s) == 0 {
		return ""
	}
	if len(s) > 5 {
		s = append(s[:5:5], fmt.Sprintf("… %d more", len(s)-5))
	}
	return "; " + strings.Join(s, "; ")
}

// reconcile asks, for every pair, one side to compare its messages with
// the other's.
func (s *simulation) reconcile(ctx context.Context) {
	type job struct{ a, b *simCity }
	jobs := make(chan job)
	var mu sync.Mutex
	var probs []string
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				r, err := j.a.Fed.Reconcile(ctx, j.b.id, time.Time{}, time.Time{})
				mu.Lock()
				s.rep.Day.Reconciled++
				switch {
				case err != nil:
					probs = append(probs, fmt.Sprintf("%s/%s: %v", j.a.id, j.b.id, err))
				case len(r.Discrepancies) > 0:
					s.rep.Day.Discrepancies += len(r.Discrepancies)
					probs = append(probs, fmt.Sprintf("%s/%s: %d discrepancies, first %s (%s)", j.a.id, j.b.id, len(r.Discrepancies), r.Discrepancies[0].ID, r.Discrepancies[0].Reason))
				}
				mu.Unlock()
			}
		}()
	}
	for ai, a := range s.cities {
		for _, b := range s.cities[ai+1:] {
			jobs <- job{a, b}
		}
	}
	close(jobs)
	wg.Wait()
	s.check("reconciliation lists nothing missing or different", len(probs) == 0, "%d pairs%s", s.rep.Day.Reconciled, problems(probs))
}

// settle has every node settle each day with every peer; both sides sign.
func (s *simulation) settle(ctx context.Context) error {
	d := &s.rep.Day
	t0 := time.Now()
	type pairKey struct{ a, b, day string }
	stmts := map[pairKey]Statement{}
	var mu sync.Mutex
	var probs []string
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	keys := map[string]ecode.PublicKey{}
	for _, c := range s.cities {
		keys[c.id] = c.key
	}
	for _, day := range d.Days {
		for _, c := range s.cities {
			wg.Add(1)
			sem <- struct{}{}
			go func(c *simCity, day string) {
				defer func() { <-sem; wg.Done() }()
				sts, err := c.Fed.Settle(ctx, day)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					probs = append(probs, c.id+": "+err.Error())
					return
				}
				for _, st := range sts {
					d.Statements++
					peer := st.Statement.A
					if peer == c.id {
						peer = st.Statement.B
					}
					if !st.Agreed {
						probs = append(probs, fmt.Sprintf("%s with %s: not agreed: %s", c.id, peer, st.Error))
						continue
					}
					if !VerifyStatement(st.Statement, st.Signature, keys[c.id]) || !VerifyStatement(st.Statement, st.Peer, keys[peer]) {
						probs = append(probs, fmt.Sprintf("%s with %s: a signature does not verify", c.id, peer))
						continue
					}
					d.Agreed++
					k := pairKey{st.Statement.A, st.Statement.B, day}
					if prev, ok := stmts[k]; ok && prev != st.Statement {
						probs = append(probs, fmt.Sprintf("%s/%s: the two sides' statements differ", k.a, k.b))
					}
					stmts[k] = st.Statement
				}
			}(c, day)
		}
	}
	wg.Wait()
	d.Settle = Millis(time.Since(t0))
	if err := ctx.Err(); err != nil {
		return err
	}
	want := len(d.Days) * len(s.cities) * (len(s.cities) - 1)
	s.check("every statement signed by both sides", len(probs) == 0 && d.Agreed == want, "%d of %d statements agreed and countersigned%s", d.Agreed, want, problems(probs))
	totals := map[[2]string]*PairTotal{}
	for k, st := range stmts {
		p := totals[[2]string{k.a, k.b}]
		if p == nil {
			p = &PairTotal{A: k.a, B: k.b}
			totals[[2]string{k.a, k.b}] = p
		}
		ab, _ := strconv.ParseInt(st.AOwesB, 10, 64)
		ba, _ := strconv.ParseInt(st.BOwesA, 10, 64)
		m, _ := strconv.ParseInt(st.Messages, 10, 64)
		p.AOwesB, p.BOwesA, p.Net, p.Messages = p.AOwesB+ab, p.BOwesA+ba, p.Net+ab-ba, p.Messages+m
	}
	byID := map[string]*simCity{}
	for _, c := range s.cities {
		byID[c.id] = c
	}
	var mism []string
	for _, p := range totals {
		d.Pairs++
		d.Messages += p.Messages
		d.GrossFen += p.AOwesB + p.BOwesA
		if p.Messages > 0 {
			d.TopPairs = append(d.TopPairs, *p)
		}
		// A's clr:B went up by what A's residents spent at B and down by
		// what B's residents spent at A: the statements' net.
		bal, err := byID[p.A].Fed.Ledger.Balance(ctx, ledger.ClearingID(p.B))
		if err != nil || bal.Balance != p.Net {
			mism = append(mism, fmt.Sprintf("%s/%s: net %d, %s clr:%s %d %v", p.A, p.B, p.Net, p.A, p.B, bal.Balance, err))
		}
	}
	sort.Slice(d.TopPairs, func(i, j int) bool {
		gi, gj := d.TopPairs[i].AOwesB+d.TopPairs[i].BOwesA, d.TopPairs[j].AOwesB+d.TopPairs[j].BOwesA
		if gi != gj {
			return gi > gj
		}
		return d.TopPairs[i].A+d.TopPairs[i].B < d.TopPairs[j].A+d.TopPairs[j].B
	})
	if len(d.TopPairs) > 10 {
		d.TopPairs = d.TopPairs[:10]
	}
	s.check("statements match the clearing accounts", len(mism) == 0, "%d pairs%s", d.Pairs, problems(mism))
	s.check("statements add up to the fares charged", d.GrossFen == d.ChargedFen, "statements %d fen, scans %d fen", d.GrossFen, d.ChargedFen)
	s.logf("settled %s: %d statements (%d agreed, both signatures verified), %d pairs, %d messages, %d fen gross, in %v",
		strings.Join(d.Days, ", "), d.Statements, d.Agreed, d.Pairs, d.Messages, d.GrossFen, d.Settle)
	return nil
}

// WriteText writes the report as a readable table.
func (r SimReport) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format+"\n", args...) }
	p("Region simulation: %d cities, refresh %v, %v in all\t", r.Cities, r.Refresh, r.Elapsed)
	p("")
	p("TRUST\t")
	p("nodes started\t%v", r.Startup)
	p("every node trusts every other (%d pairs)\t%v", r.Cities*(r.Cities-1), r.FullTrust)
	for _, pr := range []*Propagation{&r.Rotation, r.Removed, r.Added} {
		if pr == nil || pr.What == "" {
			continue
		}
		if pr.Reached < pr.Nodes {
			p("%s (%s)\treached only %d of %d nodes", pr.What, pr.City, pr.Reached, pr.Nodes)
			continue
		}
		p("%s (%s), %d nodes\tp50 %v, max %v = %.2f refreshes; within one refresh: %s", pr.What, pr.City, pr.Nodes, pr.P50, pr.Max, pr.MaxRefreshes, yesNo(pr.WithinRefresh))
	}
	d := r.Day
	p("")
	p("THE DAY (%s)\t", strings.Join(d.Days, ", "))
	p("cross-city scans\t%d of %d planned in %v (%.0f/s), p50 %v, p99 %v", d.Scans, d.Planned, d.Traffic, d.ScansPerSec, d.ScanP50, d.ScanP99)
	p("ordinary scans past the %v authorisation timeout\t%d", d.AuthTimeout, d.OverTimeout)
	p("accepted\t%d (%s); %d offline while the home was slow", d.Accepted, counts(d.ByScenario), d.Offline)
	p("declined\t%d (%s); %d voids queued, %d voided at home", d.Declined, counts(d.Reasons), d.Voids, d.VoidedAtHome)
	p("charged\t%s", yuan(d.ChargedFen))
	p("cleared (outboxes empty after the last scan)\t%v", d.Clear)
	p("reconciled pairs\t%d, %d discrepancies", d.Reconciled, d.Discrepancies)
	p("settled\t%d statements, %d agreed and signed by both sides, in %v", d.Statements, d.Agreed, d.Settle)
	p("pairs / messages / gross\t%d / %d / %s", d.Pairs, d.Messages, yuan(d.GrossFen))
	if len(d.TopPairs) > 0 {
		p("")
		p("TOP PAIRS\tA owes B\tB owes A\tnet A→B\tmessages")
		for _, t := range d.TopPairs {
			p("%s / %s\t%s\t%s\t%s\t%d", t.A, t.B, yuan(t.AOwesB), yuan(t.BOwesA), yuan(t.Net), t.Messages)
		}
	}
	p("")
	p("CHECKS\t")
	for _, c := range r.Checks {
		mark := "ok"
		if !c.OK {
			mark = "FAILED"
		}
		p("%s\t%s: %s", c.Name, mark, c.Detail)
	}
	p("")
	if r.OK {
		p("result\tall checks passed")
	} else {
		p("result\tCHECKS FAILED")
	}
	return tw.Flush()
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	parts := make([]string, len(ks))
	for i, k := range ks {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

func yuan(fen int64) string {
	sign := ""
	if fen < 0 {
		sign, fen = "-", -fen
	}
	return fmt.Sprintf("%s¥%d.%02d", sign, fen/100, fen%100)
}
