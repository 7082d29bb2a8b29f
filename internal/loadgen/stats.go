package loadgen

import (
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Result is the outcome of one run.
type Result struct {
	Mix         string        `json:"mix"`
	Concurrency int           `json:"concurrency"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	// Requests is the number of HTTP requests answered (scans, or batch
	// uploads in the offline mix); Records the scans they carried.
	Requests int64 `json:"requests"`
	Records  int64 `json:"records"`
	Accepted int64 `json:"accepted"`
	Declined int64 `json:"declined"`
	// Errors are transport failures and problem answers (not declines).
	Errors int64 `json:"errors"`
	// Rate is Records per second.
	Rate    float64          `json:"rate_per_s"`
	P50     time.Duration    `json:"p50_ns"`
	P90     time.Duration    `json:"p90_ns"`
	P99     time.Duration    `json:"p99_ns"`
	Max     time.Duration    `json:"max_ns"`
	Reasons map[string]int64 `json:"reasons"`
	// ErrorCodes counts problem codes (and "transport").
	ErrorCodes map[string]int64 `json:"error_codes,omitempty"`
	// CardFallbacks counts scans that used a card number because the code
	// pool ran dry.
	CardFallbacks int64 `json:"card_fallbacks,omitempty"`
	// Terminals is how many terminals the scans were spread over.
	Terminals int `json:"terminals,omitempty"`
	// Client is how the timed requests were sent (ClientWire, ClientStd).
	Client string `json:"client,omitempty"`
	// Setup describes the preparation (residents, codes) — not timed.
	Setup string `json:"setup,omitempty"`
}

// recorder collects latencies and outcomes from many workers.
type recorder struct {
	requests, records, accepted, declined, errors, fallbacks atomic.Int64

	mu      sync.Mutex
	lat     [][]time.Duration
	reasons map[string]int64
	errs    map[string]int64
}

func newRecorder() *recorder {
	return &recorder{reasons: map[string]int64{}, errs: map[string]int64{}}
}

// worker is one worker's private latency list (merged at the end).
type workerStats struct {
	lat     []time.Duration
	reasons map[string]int64
	errs    map[string]int64
	conn    *wireConn // the worker's connection (wire client)
}

func (w *workerStats) closeConn() {
	if w.conn != nil {
		w.conn.Close()
	}
}

func (r *recorder) newWorker() *workerStats {
	return &workerStats{lat: make([]time.Duration, 0, 4096), reasons: map[string]int64{}, errs: map[string]int64{}}
}

func (r *recorder) merge(w *workerStats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lat = append(r.lat, w.lat)
	for k, v := range w.reasons {
		r.reasons[k] += v
	}
	for k, v := range w.errs {
		r.errs[k] += v
	}
}

func (r *recorder) result(mix string, conc int, elapsed time.Duration) Result {
	var all []time.Duration
	for _, l := range r.lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		// Nearest rank: the ceil(p·n)-th smallest sample (the epsilon keeps
		// p·n that is a whole number in exact arithmetic from rounding up).
		i := int(math.Ceil(float64(len(all))*p-1e-9)) - 1
		return all[max(0, min(i, len(all)-1))]
	}
	res := Result{Mix: mix, Concurrency: conc, Elapsed: elapsed, Requests: r.requests.Load(), Records: r.records.Load(),
		Accepted: r.accepted.Load(), Declined: r.declined.Load(), Errors: r.errors.Load(),
		P50: pct(0.50), P90: pct(0.90), P99: pct(0.99), Reasons: r.reasons, ErrorCodes: r.errs, CardFallbacks: r.fallbacks.Load()}
	if len(all) > 0 {
		res.Max = all[len(all)-1]
	}
	if elapsed > 0 {
		res.Rate = float64(res.Records) / elapsed.Seconds()
	}
	return res
}

// progress writes a one-line \r progress display until stop is closed.
func progress(w io.Writer, label string, r *recorder, start time.Time, stop <-chan struct{}) {
	if w == nil {
		return
	}
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var last int64
	lastAt := start
	for {
		select {
		case <-stop:
			fmt.Fprint(w, "\r\033[K")
			return
		case now := <-t.C:
			n := r.records.Load()
			rate := float64(n-last) / now.Sub(lastAt).Seconds()
			last, lastAt = n, now
			fmt.Fprintf(w, "\r\033[K%s %5.1fs  scans %d  %.0f/s  accepted %d  declined %d  errors %d",
				label, now.Sub(start).Seconds(), n, rate, r.accepted.Load(), r.declined.Load(), r.errors.Load())
		}
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// Print writes a human-readable summary of res.
func (res Result) Print(w io.Writer) {
	fmt.Fprintf(w, "mix %s, concurrency %d, %.1f s\n", res.Mix, res.Concurrency, res.Elapsed.Seconds())
	if res.Terminals > 0 {
		fmt.Fprintf(w, "  terminals:  %d\n", res.Terminals)
	}
	if res.Client != "" {
		fmt.Fprintf(w, "  client:     %s\n", res.Client)
	}
	if res.Setup != "" {
		fmt.Fprintf(w, "  setup:      %s\n", res.Setup)
	}
	fmt.Fprintf(w, "  throughput: %.0f scans/s (%d scans in %d requests)\n", res.Rate, res.Records, res.Requests)
	fmt.Fprintf(w, "  latency:    p50 %s  p90 %s  p99 %s  max %s (per request)\n", ms(res.P50), ms(res.P90), ms(res.P99), ms(res.Max))
	fmt.Fprintf(w, "  decisions:  accepted %d  declined %d  errors %d\n", res.Accepted, res.Declined, res.Errors)
	if res.CardFallbacks > 0 {
		fmt.Fprintf(w, "  code pool ran dry: %d scans used the card number instead\n", res.CardFallbacks)
	}
	if len(res.Reasons) > 0 {
		fmt.Fprintf(w, "  decline reasons: %s\n", counts(res.Reasons))
	}
	if len(res.ErrorCodes) > 0 {
		fmt.Fprintf(w, "  errors: %s\n", counts(res.ErrorCodes))
	}
}

func counts(m map[string]int64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}
