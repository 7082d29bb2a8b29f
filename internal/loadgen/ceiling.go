package loadgen

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/yikatong/yikatong/internal/ecode"
	"github.com/yikatong/yikatong/internal/scan"
)

// BareHandler is the HTTP ceiling: POST /bare decodes a scan request and
// answers a fixed decision, with none of the node's work (no auth, no
// database, no crypto). Served by the same binary and driven by the same
// client as the node, it is the most any JSON-over-HTTP endpoint on this
// machine can do. Its answer has an identify answer's size and headers
// (the bare mix's request has an identify request's: bareRequest), so the
// ceiling moves the same bytes as the exchange it bounds.
func BareHandler() http.Handler {
	mux := http.NewServeMux()
	// The views of the identify mix's scenarios: a library loan's and a
	// hotel check-in's.
	loan := scan.Response{Decision: scan.Accepted, View: map[string]any{"decision": scan.Accepted, "card_status": "active", "masked_name": "陆*"}}
	checkin := scan.Response{Decision: scan.Accepted, View: map[string]any{"decision": scan.Accepted, "category": "local", "masked_id_number": "4101**********9831", "name": "李浩斌"}}
	mux.HandleFunc("POST /bare", func(w http.ResponseWriter, r *http.Request) {
		var req scan.Request
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		answer := &loan
		if req.Scenario == "identity.hotel_checkin" {
			answer = &checkin
		}
		json.NewEncoder(w).Encode(answer)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	return mux
}

// sampleCode issues an SM2 e-code shaped like the node's (its issuer, a
// card token of the node's size as subject, a local category), so that
// the ceilings verify and send codes of a real code's size.
func sampleCode(now time.Time) (string, ecode.KeyMap, error) {
	signer, err := ecode.GenerateSM2()
	if err != nil {
		return "", nil, err
	}
	// A card token is 128 random bits in base64url (22 characters).
	code, err := ecode.Issue(signer, ecode.Claims{Issuer: "CN-410100", Subject: "tok_ceiling_0123456789A", IssuedAt: now, Category: ecode.CategoryLocal})
	if err != nil {
		return "", nil, err
	}
	km := ecode.KeyMap{}
	km.Add("CN-410100", signer.Public())
	return code, km, nil
}

// bareRequests are the bare mix's requests: an identify scan's body (an
// idempotency key of the generator's form, one of the identify mix's
// scenarios, a real-size code) and a bearer token of a terminal token's
// size.
func bareRequests() (bodies [][]byte, token string, err error) {
	code, _, err := sampleCode(time.Now())
	if err != nil {
		return nil, "", err
	}
	for _, t := range mixTargets(MixIdentify) {
		b, err := json.Marshal(scan.Request{IdempotencyKey: "ld0123456789-123456", Scenario: t.scenario, Code: code})
		if err != nil {
			return nil, "", err
		}
		bodies = append(bodies, b)
	}
	return bodies, "yk_" + strings.Repeat("T", 43), nil
}

// SM2Ceiling verifies one SM2 e-code in a loop on every core (GOMAXPROCS
// goroutines) for d and reports verifications per second: the machine's
// ceiling for anything that checks one code per request.
func SM2Ceiling(ctx context.Context, d time.Duration, progressW io.Writer) (Result, error) {
	now := time.Now()
	code, km, err := sampleCode(now)
	if err != nil {
		return Result{}, err
	}
	r := newRecorder()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	stop := make(chan struct{})
	pdone := make(chan struct{})
	go func() { progress(progressW, MixSM2, r, start, stop); close(pdone) }()
	var wg sync.WaitGroup
	var bad atomic.Int64
	procs := runtime.GOMAXPROCS(0)
	for i := 0; i < procs; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := r.newWorker()
			defer r.merge(w)
			for ctx.Err() == nil {
				for j := 0; j < 32; j++ {
					t0 := time.Now()
					if _, _, err := ecode.Verify(code, km, now); err != nil {
						bad.Add(1)
					}
					w.lat = append(w.lat, time.Since(t0))
				}
				r.records.Add(32)
				r.requests.Add(32)
				r.accepted.Add(32)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stop)
	<-pdone
	res := r.result(MixSM2, procs, elapsed)
	res.Errors = bad.Load()
	return res, nil
}
