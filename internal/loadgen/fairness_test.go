package loadgen_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/loadgen"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

// exchangeSizes records the bytes of the requests and answers a handler
// sees: request body, Authorization header, answer body, answer headers.
type exchangeSizes struct {
	mu                      sync.Mutex
	n                       int
	reqBody, auth, respBody int
	respHeaders             map[string]bool
}

func (s *exchangeSizes) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/bare" && r.URL.Path != "/v1/scans" {
			h.ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		s.mu.Lock()
		s.n++
		s.reqBody += len(body)
		s.auth += len(r.Header.Get("Authorization"))
		s.respBody += rec.Body.Len()
		if s.respHeaders == nil {
			s.respHeaders = map[string]bool{}
		}
		for k := range rec.Header() {
			s.respHeaders[k] = true
		}
		s.mu.Unlock()
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(rec.Body.Bytes())
	})
}

func (s *exchangeSizes) mean() (reqBody, auth, respBody float64) {
	n := float64(max(1, s.n))
	return float64(s.reqBody) / n, float64(s.auth) / n, float64(s.respBody) / n
}

// The bare HTTP ceiling bounds an identify scan's exchange, so it must
// carry the same bytes: a request body with a code of a real code's size,
// the terminal's bearer token, and an answer of an identify answer's size
// and headers. A smaller exchange makes the ceiling (and the "combined
// ceiling" identify is reported against) too high.
func TestBareExchangeMatchesIdentify(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	target, _ := url.Parse(n.URL)
	var real exchangeSizes
	proxy := httptest.NewServer(real.wrap(httputil.NewSingleHostReverseProxy(target)))
	defer proxy.Close()
	res, err := loadgen.Run(context.Background(), loadgen.Options{Node: proxy.URL, Demo: n.Demo, Mix: loadgen.MixIdentify,
		Duration: 10 * time.Second, Concurrency: 2, MaxRequests: 20, Codes: 20})
	if err != nil || res.Errors != 0 || res.Accepted != 20 {
		t.Fatalf("identify: %+v %v", res, err)
	}
	var bare exchangeSizes
	srv := httptest.NewServer(bare.wrap(loadgen.BareHandler()))
	defer srv.Close()
	res, err = loadgen.Run(context.Background(), loadgen.Options{Node: srv.URL, Mix: loadgen.MixBare,
		Duration: 10 * time.Second, Concurrency: 2, MaxRequests: 20})
	if err != nil || res.Errors != 0 || res.Records != 20 {
		t.Fatalf("bare: %+v %v", res, err)
	}
	rq, ra, rr := real.mean()
	bq, ba, br := bare.mean()
	t.Logf("identify: request body %.0f, authorization %.0f, answer %.0f, headers %v", rq, ra, rr, real.respHeaders)
	t.Logf("bare:     request body %.0f, authorization %.0f, answer %.0f, headers %v", bq, ba, br, bare.respHeaders)
	near := func(a, b float64) bool { return a >= 0.9*b && a <= 1.1*b }
	if !near(bq, rq) || !near(ba, ra) || !near(br, rr) {
		t.Errorf("the bare exchange is not an identify exchange's size: request body %.0f vs %.0f, authorization %.0f vs %.0f, answer %.0f vs %.0f", bq, rq, ba, ra, br, rr)
	}
	for h := range real.respHeaders {
		if h != "Date" && h != "Content-Length" && !bare.respHeaders[h] { // set by the server
			t.Errorf("the bare answer lacks the header %s of an identify answer", h)
		}
	}
}

// The offline mix shows e-codes in a fifth of its records while the pool
// lasts; the records that found the pool dry carry a card number instead
// (no SM2 verify on the node), and the report must say how many, as it
// does for the online mixes.
func TestOfflineCountsCardFallbacks(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	res, err := loadgen.Run(context.Background(), loadgen.Options{Node: n.URL, Demo: n.Demo, Mix: loadgen.MixOffline,
		Duration: 10 * time.Second, Concurrency: 1, MaxRequests: 4, BatchSize: 50, Codes: 0})
	if err != nil || res.Errors != 0 || res.Records != 200 {
		t.Fatalf("offline: %+v %v", res, err)
	}
	// 20 % of 200 records would show a code: 40 expected, none available.
	if res.CardFallbacks < 15 || res.CardFallbacks > 80 {
		t.Fatalf("card fallbacks %d of 200 records with an empty code pool, want about 40", res.CardFallbacks)
	}
}

// A terminal uploads one batch at a time, as a gate does (the node runs a
// terminal's uploads one after another): the offline mix gives every
// caller a terminal of its own for each scenario, onboarding what the demo
// city lacks, and a batch takes one that is not uploading. Every record is
// then in order for its terminal, none refused for its order.
func TestOfflineTerminalsUploadOneBatchAtATime(t *testing.T) {
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 10})
	res, err := loadgen.Run(context.Background(), loadgen.Options{Node: n.URL, Demo: n.Demo, Mix: loadgen.MixOffline,
		Duration: 20 * time.Second, Concurrency: 3, MaxRequests: 12, BatchSize: 20, Codes: 0})
	if err != nil || res.Errors != 0 || res.Records != 240 {
		t.Fatalf("offline: %+v %v", res, err)
	}
	if res.Terminals < 3*4 {
		t.Fatalf("%d terminals for 3 callers over the mix's 4 scenarios", res.Terminals)
	}
	for _, r := range []string{"out_of_order", "clock_back", "unavailable"} {
		if res.Reasons[r] != 0 {
			t.Fatalf("records refused %s: %v", r, res.Reasons)
		}
	}
}
