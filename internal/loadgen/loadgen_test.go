package loadgen_test

import (
	"context"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/yikatong/yikatong/internal/loadgen"
	"github.com/yikatong/yikatong/internal/node/nodetest"
)

func TestCheckLoopback(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9"} {
		if err := loadgen.CheckLoopback(ok); err != nil {
			t.Errorf("%s refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"http://10.0.0.1:8080", "http://example.com", "ftp://127.0.0.1", "127.0.0.1:8080", ""} {
		if err := loadgen.CheckLoopback(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestCeilings(t *testing.T) {
	srv := httptest.NewServer(loadgen.BareHandler())
	defer srv.Close()
	res, err := loadgen.Run(context.Background(), loadgen.Options{Node: srv.URL, Mix: loadgen.MixBare, Duration: 300 * time.Millisecond, Concurrency: 4})
	if err != nil || res.Records == 0 || res.Errors != 0 || res.P50 <= 0 || res.Max < res.P99 {
		t.Fatalf("bare: %+v %v", res, err)
	}
	// MaxRequests bounds the run.
	res, err = loadgen.Run(context.Background(), loadgen.Options{Node: srv.URL, Mix: loadgen.MixBare, Duration: 10 * time.Second, Concurrency: 4, MaxRequests: 100})
	if err != nil || res.Requests != 100 || res.Elapsed > 5*time.Second {
		t.Fatalf("bounded: %+v %v", res, err)
	}
	res, err = loadgen.SM2Ceiling(context.Background(), 300*time.Millisecond, nil)
	if err != nil || res.Records == 0 || res.Errors != 0 {
		t.Fatalf("sm2: %+v %v", res, err)
	}
}

// TestProfileMix drives an in-process node so that `go test
// -cpuprofile` shows the node's hot spots. Set YIKATONG_PROFILE_MIX.
func TestProfileMix(t *testing.T) {
	mix := os.Getenv("YIKATONG_PROFILE_MIX")
	if mix == "" {
		t.Skip("set YIKATONG_PROFILE_MIX=charge|identify|peak|offline")
	}
	n := nodetest.Start(t, nodetest.Options{Demo: true, DemoResidents: 50})
	res, err := loadgen.Run(context.Background(), loadgen.Options{Node: n.URL, Demo: n.Demo, Mix: mix, Duration: 8 * time.Second,
		Concurrency: 64, Residents: 200, Codes: -1, BatchSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	res.Print(os.Stdout)
}

// Every answered request of the bare mix is one record (no lost counts
// under concurrency).
func TestBareCountsEveryRequest(t *testing.T) {
	srv := httptest.NewServer(loadgen.BareHandler())
	defer srv.Close()
	res, err := loadgen.Run(context.Background(), loadgen.Options{Node: srv.URL, Mix: loadgen.MixBare, Duration: 500 * time.Millisecond, Concurrency: 16})
	if err != nil || res.Records != res.Requests || res.Accepted != res.Requests || res.Requests < 100 {
		t.Fatalf("%+v %v", res, err)
	}
}
