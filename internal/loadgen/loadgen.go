// Package loadgen drives a city node with simulated terminals and residents
// (`yikatong load`) and measures the ceilings its figures are compared
// with.
//
// Design decisions:
//
//   - Loopback only: the generator refuses a node that is not on
//     127.0.0.1, localhost or ::1, and every run is bounded by a duration
//     (at most MaxDuration) and optionally a request count; it stops by
//     itself.
//   - The population is real: besides the residents listed in demo.json it
//     enrols Options.Residents load residents through the API (hr_admin),
//     tops their wallets up (finance), and signs every one of them in
//     (POST /v1/auth/resident). None of this is timed.
//   - E-codes are single-use and live one minute, so a pool is issued
//     before the clock starts (POST /v1/ecodes, round-robin over the
//     residents' sessions). Each code is used once; when the pool runs dry
//     a scan falls back to the holder's card number and the report says how
//     often that happened.
//   - Mixes: "peak" (a morning peak: metro gates and buses, a few canteens,
//     hospitals and library loans; codes and cards), "identify" (library
//     loans and hotel check-ins with e-codes: HTTP plus one SM2 verify per
//     scan), "charge" (bus, metro exit and canteen charges by card number:
//     the money path), "offline" (offline terminals upload signed batches of
//     records), and the ceilings "bare" (the same client against
//     BareHandler) and "sm2" (a bare SM2 code-verify loop on every core).
//   - Latency is measured per HTTP request in each worker, merged and sorted
//     at the end (exact percentiles, no histogram error).
//   - The generator shares the machine with the node, so its timed
//     requests are cheap: each worker writes HTTP/1.1 on a connection of
//     its own (wire.go) instead of going through net/http's Transport;
//     Options.Client = ClientStd keeps net/http's client for comparison.
package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/yikatong/yikatong/internal/apperr"
	"github.com/yikatong/yikatong/internal/idnum"
	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/scan"
)

// Limits of one run.
const (
	MaxDuration    = 10 * time.Minute
	MaxConcurrency = 4096
	MaxTerminals   = 20_000
)

// Mixes.
const (
	MixPeak     = "peak"
	MixIdentify = "identify"
	MixCharge   = "charge"
	MixOffline  = "offline"
	MixBare     = "bare"
	MixSM2      = "sm2"
)

// Clients of the timed requests.
const (
	ClientWire = "wire"
	ClientStd  = "std"
)

// Mixes lists the mixes Run accepts.
var Mixes = []string{MixPeak, MixIdentify, MixCharge, MixOffline, MixBare, MixSM2}

// Options configure a run.
type Options struct {
	Node        string         // base URL (loopback only)
	Demo        *node.DemoFile // the demo city (terminals, staff, residents)
	Mix         string
	Duration    time.Duration
	Concurrency int
	// MaxRequests stops the run after this many requests (0 = no bound
	// besides Duration).
	MaxRequests int64
	// Residents is how many load residents to enrol and fund (0 = only the
	// ones demo.json lists).
	Residents int
	// Codes is the size of the e-code pool (-1 = the mix's default).
	Codes int
	// BatchSize is the records per offline batch.
	BatchSize int
	// Terminals is how many terminals the mix's scans spread over (0 =
	// the demo's own, one or two per scenario). Beyond the demo's, the
	// run onboards terminals of the same providers through the operator
	// (not timed), as a city has thousands of gates and readers: each
	// scan's row then lands in its own terminal's part of the indexes.
	Terminals int
	// Progress receives a one-line \r display (nil = none).
	Progress io.Writer
	// HTTP overrides the client of the untimed setup requests (nil = a
	// pooled client sized for Concurrency), and of the timed ones when
	// Client is ClientStd.
	HTTP *http.Client
	// Client is how the timed requests are sent: ClientWire (the default
	// for http:// nodes: each worker writes its requests on its own
	// connection, wire.go) or ClientStd (net/http's client).
	Client string
}

// CheckLoopback refuses a base URL that is not on this machine.
func CheckLoopback(base string) error {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%q is not an http:// URL", base)
	}
	h := u.Hostname()
	if h == "localhost" {
		return nil
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("the load generator drives only nodes on this machine (127.0.0.1, localhost, ::1), not %s", h)
}

// NewHTTPClient is a client with a connection pool sized for conc workers.
func NewHTTPClient(conc int) *http.Client {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conc + 16,
		MaxIdleConnsPerHost: conc + 16,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// client is a minimal JSON client.
type client struct {
	base string
	hc   *http.Client
	wire bool // timed requests go over each worker's wireConn
}

// do posts body (JSON) with token; out (if non-nil) receives a 2xx answer.
// A problem answer returns its code as an *apperr.Error.
func (c *client) do(ctx context.Context, method, path, token string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return decodeAnswer(resp.StatusCode, data, out)
}

// timed is do for the requests a run times: over the worker's own
// connection when the client is the wire client.
func (c *client) timed(ctx context.Context, w *workerStats, method, path, token string, body []byte, out any) error {
	if !c.wire {
		return c.do(ctx, method, path, token, body, out)
	}
	if w.conn == nil {
		wc, err := newWireConn(c.base)
		if err != nil {
			return err
		}
		w.conn = wc
	}
	a, err := w.conn.Do(ctx, method, path, token, body)
	if err != nil {
		return err
	}
	return decodeAnswer(a.Status, a.Body, out)
}

// decodeAnswer turns an answer into out (2xx) or the problem's code as an
// *apperr.Error.
func decodeAnswer(status int, data []byte, out any) error {
	if status/100 != 2 {
		var p struct {
			Code   apperr.Code `json:"code"`
			Detail string      `json:"detail"`
		}
		json.Unmarshal(data, &p)
		if p.Code == "" {
			p.Code = apperr.Code(fmt.Sprintf("http_%d", status))
		}
		return apperr.Newf(p.Code, p.Detail, p.Detail)
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// reachable checks, before any load, that the node answers GET /healthz
// (a node that is down fails the run at once instead of counting
// transport errors for its whole duration).
func (c *client) reachable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.do(ctx, http.MethodGet, "/healthz", "", nil, nil); err != nil {
		return fmt.Errorf("cannot reach the node at %s: %v", c.base, err)
	}
	return nil
}

// person is a resident the generator can use.
type person struct {
	card  string
	pin   string
	token string
}

// population is the residents and their code pool.
type population struct {
	people []person
	codes  []string
	next   atomic.Int64
}

// code takes the next unused code ("" when the pool is dry).
func (p *population) code() string {
	i := p.next.Add(1) - 1
	if i >= int64(len(p.codes)) {
		return ""
	}
	return p.codes[i]
}

func checkOptions(o *Options) error {
	if err := CheckLoopback(o.Node); err != nil {
		return err
	}
	o.Node = strings.TrimRight(o.Node, "/")
	if o.Mix == "" {
		o.Mix = MixPeak
	}
	ok := false
	for _, m := range Mixes {
		ok = ok || m == o.Mix
	}
	if !ok {
		return fmt.Errorf("unknown mix %q (one of %s)", o.Mix, strings.Join(Mixes, ", "))
	}
	if o.Duration <= 0 {
		o.Duration = 20 * time.Second
	}
	if o.Duration > MaxDuration {
		return fmt.Errorf("duration %s is over the %s bound", o.Duration, MaxDuration)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 64
	}
	if o.Concurrency > MaxConcurrency {
		return fmt.Errorf("concurrency %d is over the %d bound", o.Concurrency, MaxConcurrency)
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 1000
	}
	if o.Terminals < 0 || o.Terminals > MaxTerminals {
		return fmt.Errorf("terminals %d: want 0 to %d", o.Terminals, MaxTerminals)
	}
	if o.Mix != MixBare && o.Mix != MixSM2 && o.Demo == nil {
		return errors.New("the mix needs the demo city (demo.json)")
	}
	if o.HTTP == nil {
		o.HTTP = NewHTTPClient(o.Concurrency)
	}
	switch o.Client {
	case "":
		o.Client = ClientWire
		if strings.HasPrefix(o.Node, "https://") {
			o.Client = ClientStd
		}
	case ClientWire:
		if !strings.HasPrefix(o.Node, "http://") {
			return fmt.Errorf("the wire client speaks only http://, not %s (use the std client)", o.Node)
		}
	case ClientStd:
	default:
		return fmt.Errorf("unknown client %q (wire or std)", o.Client)
	}
	return nil
}

// Run runs one mix against the node and returns its figures.
func Run(ctx context.Context, o Options) (Result, error) {
	if err := checkOptions(&o); err != nil {
		return Result{}, err
	}
	c := &client{base: o.Node, hc: o.HTTP, wire: o.Client == ClientWire}
	if o.Mix != MixSM2 {
		if err := c.reachable(ctx); err != nil {
			return Result{}, err
		}
	}
	switch o.Mix {
	case MixSM2:
		return SM2Ceiling(ctx, o.Duration, o.Progress)
	case MixBare:
		bodies, token, err := bareRequests()
		if err != nil {
			return Result{}, err
		}
		res, err := runClosedLoop(ctx, o, nil, func(ctx context.Context, w *workerStats, rng *rand.Rand, r *recorder) error {
			var out scanAnswer
			return c.timed(ctx, w, http.MethodPost, "/bare", token, bodies[rng.IntN(len(bodies))], &out)
		})
		res.Client = o.Client
		return res, err
	}
	setupStart := time.Now()
	pop, err := prepare(ctx, c, o)
	if err != nil {
		return Result{}, err
	}
	setup := fmt.Sprintf("%d residents signed in, %d codes issued in %.1f s", len(pop.people), len(pop.codes), time.Since(setupStart).Seconds())
	var res Result
	if o.Mix == MixOffline {
		res, err = runOffline(ctx, o, c, pop)
	} else {
		res, err = runScans(ctx, o, c, pop)
	}
	res.Setup = setup
	return res, err
}

// defaultCodes is the code pool each mix issues by default.
func defaultCodes(o Options) int {
	if o.Codes >= 0 {
		return o.Codes
	}
	secs := int(o.Duration.Seconds() + 1)
	switch o.Mix {
	case MixIdentify, MixPeak, MixOffline:
		// The peak mix shows a code in about 55 % of its scans, the offline
		// mix in about 20 % of its records: the same pool covers them up to
		// about 12,000 scans/s and 35,000 records/s. (A pool that runs dry
		// turns the rest of the run into card scans, which the report
		// counts as card_fallbacks.)
		return min(7000*secs, 150_000)
	}
	return 0
}

// prepare enrols and funds load residents, signs everyone in and issues
// the code pool.
func prepare(ctx context.Context, c *client, o Options) (*population, error) {
	pop := &population{}
	for _, r := range o.Demo.Residents {
		if r.PIN != "" && r.CardNumber != "" {
			pop.people = append(pop.people, person{card: r.CardNumber, pin: r.PIN})
		}
	}
	if o.Residents > 0 {
		hr, fin := o.Demo.Staff["hr_admin"].Token, o.Demo.Staff["finance"].Token
		if hr == "" || fin == "" {
			return nil, errors.New("demo.json lacks the hr_admin or finance token needed to enrol load residents")
		}
		more, err := enrolLoadResidents(ctx, c, hr, fin, o.Residents)
		if err != nil {
			return nil, err
		}
		// The demo's own residents hold only the demo funding: a long run
		// would drain them, so with load residents only those scan.
		pop.people = more
	}
	if len(pop.people) == 0 {
		return nil, errors.New("no residents to scan: demo.json lists none with a PIN and --residents is 0")
	}
	// Sign everyone in.
	err := parallel(ctx, min(32, o.Concurrency), len(pop.people), func(i int) error {
		p := &pop.people[i]
		body, _ := json.Marshal(map[string]string{"card_number": p.card, "pin": p.pin})
		var out struct {
			Token string `json:"token"`
		}
		if err := c.do(ctx, http.MethodPost, "/v1/auth/resident", "", body, &out); err != nil {
			return fmt.Errorf("resident sign-in: %w", err)
		}
		p.token = out.Token
		return nil
	})
	if err != nil {
		return nil, err
	}
	n := defaultCodes(o)
	pop.codes = make([]string, n)
	err = parallel(ctx, min(32, o.Concurrency), n, func(i int) error {
		p := pop.people[i%len(pop.people)]
		var out struct {
			Code string `json:"code"`
		}
		if err := c.do(ctx, http.MethodPost, "/v1/ecodes", p.token, nil, &out); err != nil {
			return fmt.Errorf("issuing an e-code: %w", err)
		}
		pop.codes[i] = out.Code
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Use the pool in random order so one resident's codes spread out.
	rand.Shuffle(len(pop.codes), func(i, j int) { pop.codes[i], pop.codes[j] = pop.codes[j], pop.codes[i] })
	return pop, nil
}

// LoadWalletFen is what each load resident's wallet is topped up with.
const LoadWalletFen = 5_000_000

func enrolLoadResidents(ctx context.Context, c *client, hr, fin string, n int) ([]person, error) {
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 4101))
	var mu sync.Mutex
	regions := []string{"410102", "410103", "410104", "410105", "410106", "410108"}
	type job struct{ id, pin, sex string }
	jobs := make([]job, n)
	seen := map[string]bool{}
	for i := range jobs {
		for {
			sex := []string{"M", "F"}[rng.IntN(2)]
			birth := time.Date(1966+rng.IntN(40), time.Month(1+rng.IntN(12)), 1+rng.IntN(28), 0, 0, 0, 0, time.UTC)
			id := idnum.Generate(rng, idnum.KindCitizen, regions[rng.IntN(len(regions))], birth, sex)
			if id != "" && !seen[id] {
				seen[id] = true
				jobs[i] = job{id: id, pin: fmt.Sprintf("%06d", 135790+rng.IntN(800_000)), sex: sex}
				break
			}
		}
	}
	out := make([]person, 0, n)
	err := parallel(ctx, 16, n, func(i int) error {
		j := jobs[i]
		body, _ := json.Marshal(map[string]any{"name": fmt.Sprintf("压测居民%05d", i), "id_number": j.id, "category": "local", "pin": j.pin})
		var res struct {
			Card *struct {
				Number string `json:"card_number"`
			} `json:"card"`
		}
		err := c.do(ctx, http.MethodPost, "/v1/residents", hr, body, &res)
		if apperr.CodeOf(err) == apperr.AlreadyExists || apperr.CodeOf(err) == apperr.ValidationFailed || apperr.CodeOf(err) == "weak_pin" {
			return nil // an ID number or PIN the node refuses: skip this one
		}
		if err != nil {
			return fmt.Errorf("enrolling a load resident: %w", err)
		}
		if res.Card == nil {
			return errors.New("enrolling a load resident: no card issued")
		}
		tb, _ := json.Marshal(map[string]any{"idempotency_key": "load-" + res.Card.Number, "card_number": res.Card.Number, "amount_fen": LoadWalletFen, "channel": "bank"})
		if err := c.do(ctx, http.MethodPost, "/v1/topups", fin, tb, nil); err != nil {
			return fmt.Errorf("topping up a load resident: %w", err)
		}
		mu.Lock()
		out = append(out, person{card: res.Card.Number, pin: j.pin})
		mu.Unlock()
		return nil
	})
	return out, err
}

// parallel runs f(0..n-1) on conc goroutines and returns the first error.
func parallel(ctx context.Context, conc, n int, f func(i int) error) error {
	if n == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var next atomic.Int64
	var once sync.Once
	var first error
	var wg sync.WaitGroup
	for w := 0; w < max(1, min(conc, n)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return first
}

// step is one request of a closed loop.
type step func(ctx context.Context, w *workerStats, rng *rand.Rand, r *recorder) error

// runClosedLoop runs o.Concurrency workers, each issuing requests back to
// back until the duration or request bound is reached. A step returning
// an error counts as an error; with counted set, steps count their own
// records and decisions, otherwise each request is one accepted record.
func runClosedLoop(ctx context.Context, o Options, counted *bool, f step) (Result, error) {
	r := newRecorder()
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	start := time.Now()
	stop := make(chan struct{})
	pdone := make(chan struct{})
	go func() { progress(o.Progress, o.Mix, r, start, stop); close(pdone) }()
	var issued atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < o.Concurrency; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			w := r.newWorker()
			defer r.merge(w)
			defer w.closeConn()
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(i)))
			for ctx.Err() == nil {
				if o.MaxRequests > 0 && issued.Add(1) > o.MaxRequests {
					return
				}
				t0 := time.Now()
				err := f(ctx, w, rng, r)
				if ctx.Err() != nil && err != nil {
					return // cut off by the end of the run: not counted
				}
				w.lat = append(w.lat, time.Since(t0))
				r.requests.Add(1)
				if err != nil {
					r.errors.Add(1)
					code := string(apperr.CodeOf(err))
					var ae *apperr.Error
					if !errors.As(err, &ae) {
						code = "transport"
					}
					w.errs[code]++
					continue
				}
				if counted == nil {
					r.records.Add(1)
					r.accepted.Add(1)
				}
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	<-pdone
	return r.result(o.Mix, o.Concurrency, elapsed), nil
}

// target is a scenario of a mix with its weight and how it is scanned.
type target struct {
	scenario string
	weight   int
	codeProb float64 // share of scans that show an e-code (else the card)
	amount   func(rng *rand.Rand) int64
}

func fixed(n int64) func(*rand.Rand) int64 { return func(*rand.Rand) int64 { return n } }
func between(lo, hi int64) func(*rand.Rand) int64 {
	return func(rng *rand.Rand) int64 { return lo + rng.Int64N(hi-lo+1) }
}

// mixTargets are the scenarios of each online mix.
func mixTargets(mix string) []target {
	switch mix {
	case MixIdentify:
		return []target{
			{"library.loan", 50, 1, fixed(0)},
			{"identity.hotel_checkin", 50, 1, fixed(0)},
		}
	case MixCharge:
		return []target{
			{"transit.bus", 45, 0, fixed(0)},
			{"transit.metro_exit", 40, 0, between(300, 700)},
			{"campus.canteen", 15, 0, between(600, 1800)},
		}
	case MixOffline:
		return []target{
			{"transit.bus", 45, 0.2, fixed(0)},
			{"transit.metro_entry", 20, 0.2, fixed(0)},
			{"transit.metro_exit", 30, 0.2, between(300, 700)},
			{"campus.canteen", 5, 0.2, between(600, 1800)},
		}
	}
	// The morning peak: metro gates and buses, a few canteens, hospitals
	// and library loans.
	return []target{
		{"transit.metro_entry", 30, 0.7, fixed(0)},
		{"transit.metro_exit", 25, 0.3, between(300, 700)},
		{"transit.bus", 30, 0.6, fixed(0)},
		{"campus.canteen", 6, 0.3, between(600, 1800)},
		{"medical.outpatient", 3, 0.5, between(2000, 8000)},
		{"library.loan", 6, 0.8, fixed(0)},
	}
}

// terminalsFor maps each target's scenario to the demo's terminals, and
// to new ones of the same providers until the mix has o.Terminals in all
// (spread over the scenarios by their weight).
func terminalsFor(ctx context.Context, c *client, o Options, ts []target) (map[string][]node.DemoTerminal, error) {
	want := map[string]bool{}
	for _, t := range ts {
		want[t.scenario] = true
	}
	m := map[string][]node.DemoTerminal{}
	for _, t := range o.Demo.Terminals {
		if want[t.Scenario] {
			m[t.Scenario] = append(m[t.Scenario], t)
		}
	}
	have, weight := 0, 0
	for _, t := range ts {
		if len(m[t.scenario]) == 0 {
			return nil, fmt.Errorf("demo.json has no terminal for scenario %s", t.scenario)
		}
		have += len(m[t.scenario])
		weight += t.weight
	}
	if o.Terminals <= have {
		return m, nil
	}
	op := o.Demo.Staff["operator"].Token
	if op == "" {
		return nil, errors.New("demo.json lacks the operator token needed to onboard more terminals")
	}
	type job struct{ provider, scenario string }
	var jobs []job
	for i, t := range ts {
		n := (o.Terminals - have) * t.weight / weight
		if i == len(ts)-1 {
			n = o.Terminals - have - len(jobs)
		}
		for range n {
			jobs = append(jobs, job{m[t.scenario][0].Provider, t.scenario})
		}
	}
	var mu sync.Mutex
	prefix := time.Now().Format("150405")
	err := parallel(ctx, 16, len(jobs), func(i int) error {
		j := jobs[i]
		body, _ := json.Marshal(map[string]any{"name": fmt.Sprintf("压测终端 %s-%05d", prefix, i), "scenarios": []string{j.scenario}})
		var out struct {
			Terminal struct {
				ID string `json:"id"`
			} `json:"terminal"`
			Credentials struct {
				Token    string `json:"token"`
				BatchKey string `json:"batch_key"`
			} `json:"credentials"`
		}
		if err := c.do(ctx, http.MethodPost, "/v1/providers/"+url.PathEscape(j.provider)+"/terminals", op, body, &out); err != nil {
			return fmt.Errorf("onboarding a load terminal: %w", err)
		}
		mu.Lock()
		m[j.scenario] = append(m[j.scenario], node.DemoTerminal{ID: out.Terminal.ID, Token: out.Credentials.Token, Provider: j.provider, Scenario: j.scenario, BatchKey: out.Credentials.BatchKey})
		mu.Unlock()
		return nil
	})
	return m, err
}

func pick(ts []target, rng *rand.Rand) target {
	total := 0
	for _, t := range ts {
		total += t.weight
	}
	n := rng.IntN(total)
	for _, t := range ts {
		if n < t.weight {
			return t
		}
		n -= t.weight
	}
	return ts[len(ts)-1]
}

type scanAnswer struct {
	Decision string `json:"decision"`
	Reason   string `json:"reason"`
}

// runScans runs an online mix: each request is one POST /v1/scans.
func runScans(ctx context.Context, o Options, c *client, pop *population) (Result, error) {
	ts := mixTargets(o.Mix)
	terms, err := terminalsFor(ctx, c, o, ts)
	if err != nil {
		return Result{}, err
	}
	var seq atomic.Int64
	prefix := fmt.Sprintf("ld%x-", time.Now().UnixNano()&0xffffffffff)
	counted := true
	res, err := runClosedLoop(ctx, o, &counted, func(ctx context.Context, w *workerStats, rng *rand.Rand, r *recorder) error {
		t := pick(ts, rng)
		tm := terms[t.scenario][rng.IntN(len(terms[t.scenario]))]
		req := scan.Request{IdempotencyKey: prefix + fmt.Sprint(seq.Add(1)), Scenario: t.scenario, AmountFen: t.amount(rng)}
		p := pop.people[rng.IntN(len(pop.people))]
		if t.codeProb > 0 && rng.Float64() < t.codeProb {
			req.Code = pop.code()
			if req.Code == "" {
				r.fallbacks.Add(1)
			}
		}
		if req.Code == "" {
			req.CardNumber = p.card
		}
		body, _ := json.Marshal(req)
		var a scanAnswer
		if err := c.timed(ctx, w, http.MethodPost, "/v1/scans", tm.Token, body, &a); err != nil {
			return err
		}
		r.records.Add(1)
		if a.Decision == scan.Accepted {
			r.accepted.Add(1)
		} else {
			r.declined.Add(1)
			w.reasons[a.Reason]++
		}
		return nil
	})
	res.Terminals = countTerminals(terms)
	res.Client = o.Client
	return res, err
}

func countTerminals(m map[string][]node.DemoTerminal) int {
	n := 0
	for _, list := range m {
		n += len(list)
	}
	return n
}
