package loadgen

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
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
// machine can do.
func BareHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /bare", func(w http.ResponseWriter, r *http.Request) {
		var req scan.Request
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(scan.Response{Decision: scan.Accepted, View: map[string]any{"decision": scan.Accepted}})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	return mux
}

// SM2Ceiling verifies one SM2 e-code in a loop on every core (GOMAXPROCS
// goroutines) for d and reports verifications per second: the machine's
// ceiling for anything that checks one code per request.
func SM2Ceiling(ctx context.Context, d time.Duration, progressW io.Writer) (Result, error) {
	signer, err := ecode.GenerateSM2()
	if err != nil {
		return Result{}, err
	}
	now := time.Now()
	code, err := ecode.Issue(signer, ecode.Claims{Issuer: "CN-410100", Subject: "tok_ceiling", IssuedAt: now, Category: ecode.CategoryLocal})
	if err != nil {
		return Result{}, err
	}
	km := ecode.KeyMap{}
	km.Add("CN-410100", signer.Public())
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
