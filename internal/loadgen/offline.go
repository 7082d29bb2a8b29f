package loadgen

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/yikatong/yikatong/internal/node"
	"github.com/yikatong/yikatong/internal/scan"
	"github.com/yikatong/yikatong/internal/terminal"
	"github.com/yikatong/yikatong/internal/termsim"
)

// runOffline: each request is one signed batch of o.BatchSize records made
// by one offline terminal (cards, and e-codes while the pool lasts), as a
// gate uploads what it accepted while the network was down.
//
// A terminal uploads one batch at a time, its records numbered in the
// order it made them (the node serialises a terminal's uploads, and
// checks their order): a batch takes a terminal that is not uploading
// (idle), and there are at least as many terminals per scenario as
// callers, onboarded when the demo city has fewer, so no caller waits for
// another's terminal unless a scenario's share of o.Terminals is smaller.
func runOffline(ctx context.Context, o Options, c *client, pop *population) (Result, error) {
	ts := mixTargets(MixOffline)
	if least := o.Concurrency * len(ts); o.Terminals < least {
		o.Terminals = least
	}
	terms, err := terminalsFor(ctx, c, o, ts)
	if err != nil {
		return Result{}, err
	}
	idle := map[string]chan node.DemoTerminal{}
	for s, list := range terms {
		idle[s] = make(chan node.DemoTerminal, len(list))
		for _, t := range list {
			idle[s] <- t
		}
	}
	keys := map[string]edKey{}
	for _, list := range terms {
		for _, t := range list {
			if t.BatchKey == "" {
				return Result{}, fmt.Errorf("demo.json has no batch key for terminal %s", t.ID)
			}
			k, err := terminal.ParseBatchKey(t.BatchKey)
			if err != nil {
				return Result{}, err
			}
			keys[t.ID] = k
		}
	}
	var seq atomic.Int64
	prefix := fmt.Sprintf("ol%x-", time.Now().UnixNano()&0xffffffffff)
	counted := true
	res, err := runClosedLoop(ctx, o, &counted, func(ctx context.Context, w *workerStats, rng *rand.Rand, r *recorder) error {
		t := pick(ts, rng)
		var tm node.DemoTerminal
		select {
		case tm = <-idle[t.scenario]:
		case <-ctx.Done():
			return ctx.Err()
		}
		defer func() { idle[t.scenario] <- tm }()
		recs := make([]terminal.Record, o.BatchSize)
		var fallbacks int64 // records that found the code pool dry
		at := time.Now().UTC().Add(-time.Second)
		for i := range recs {
			n := seq.Add(1)
			rec := terminal.Record{ID: fmt.Sprintf("%s%d", prefix, n), Seq: n, At: at, Scenario: t.scenario, AmountFen: t.amount(rng)}
			if rng.Float64() < t.codeProb {
				if rec.Code = pop.code(); rec.Code == "" {
					fallbacks++
				}
			}
			if rec.Code == "" {
				rec.CardNumber = pop.people[rng.IntN(len(pop.people))].card
			}
			recs[i] = rec
		}
		rep, err := termsim.UploadRecords(ctx, c.hc, c.base, tm.Token, tm.ID, keys[tm.ID], recs, time.Now())
		if err != nil {
			return err
		}
		countReport(rep, w, r)
		r.fallbacks.Add(fallbacks)
		return nil
	})
	res.Terminals = countTerminals(terms)
	return res, err
}

func countReport(rep scan.BatchReport, w *workerStats, r *recorder) {
	r.records.Add(int64(rep.Records))
	r.accepted.Add(int64(rep.Applied + rep.Duplicates))
	r.declined.Add(int64(rep.Declined + rep.Rejected))
	for _, it := range rep.Items {
		if it.Status == scan.StatusDeclined || it.Status == scan.StatusRejected {
			w.reasons[string(it.Reason)]++
		}
	}
}

type edKey = ed25519.PrivateKey
