package loadgen

import (
	"math"
	"testing"
	"time"
)

// Percentiles are nearest-rank: the smallest sample with at least p of
// the samples at or below it (rank ceil(p·n)), never a lower one.
func TestPercentilesNearestRank(t *testing.T) {
	for _, n := range []int{1, 2, 10, 99, 100, 101, 150, 199, 1000, 1999} {
		r := newRecorder()
		w := r.newWorker()
		for i := n; i >= 1; i-- { // merged unsorted
			w.lat = append(w.lat, time.Duration(i)*time.Millisecond)
		}
		r.merge(w)
		res := r.result("t", 1, time.Second)
		for _, c := range []struct {
			p   float64
			got time.Duration
		}{{0.50, res.P50}, {0.90, res.P90}, {0.99, res.P99}} {
			rank := int(math.Ceil(c.p * float64(n)))
			if want := time.Duration(rank) * time.Millisecond; c.got != want {
				t.Errorf("n=%d p%.0f = %v, want %v (rank %d)", n, c.p*100, c.got, want, rank)
			}
		}
	}
}

// The code pools of the mixes that show codes cover the rates the runs
// reach: a pool that runs dry turns the rest of the run into card scans
// (no SM2 verify), so the figure is no longer the mix's. bench-scans has
// measured the peak mix at up to 8,569 scans/s (docs/benchmarks.md,
// session 10) over its default 10 s.
func TestPeakCodePoolCoversMeasuredRates(t *testing.T) {
	share := 0.0
	total := 0
	for _, tg := range mixTargets(MixPeak) {
		share += float64(tg.weight) * tg.codeProb
		total += tg.weight
	}
	share /= float64(total)
	for _, d := range []time.Duration{10 * time.Second, 20 * time.Second} {
		need := int(share * 8569 * d.Seconds())
		if got := defaultCodes(Options{Mix: MixPeak, Duration: d, Codes: -1}); got < need {
			t.Errorf("peak over %s: a pool of %d codes, %d needed at 8,569 scans/s (%.0f %% of scans show a code)", d, got, need, share*100)
		}
	}
}
