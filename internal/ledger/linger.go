package ledger

import "time"

// Adaptive group commit (PostgreSQL).
//
// The committer takes whatever is queued and never waits while the
// database is idle. With one process that fills batches: requests queue up
// while the previous batch commits. With several node processes on one
// database, their batches take turns on the chain-head lock, and each
// process's callers are split between the batch it is committing and the
// one queuing behind it, so batches shrink (two processes halved them) and
// the per-batch cost (round trips, the chain row, COMMIT's WAL flush) is
// spread over fewer requests.
//
// So on PostgreSQL, when another process committed since this one's last
// batch (the chain head's seq is not the one it wrote) and the batch just
// collected holds fewer requests than the last two batches did together
// (in a closed loop, about the callers this process has), the committer
// waits a little for the rest: at most a quarter of the last batch's
// database time and at most maxLinger, and not at all when the last
// batches were single requests. While another process holds the
// chain-head lock, that wait costs nothing: the batch could not have
// started anyway. A process alone on its database never waits: there,
// waiting only merged the two halves of a closed loop's callers into
// lockstep batches, which raised p99 (docs/benchmarks.md).
type lingerState struct {
	on               bool
	shared           bool          // the last batch saw another process's commits
	lastSeq          int64         // chain head seq after this process's last batch
	prevOps, lastOps int           // requests in the last two batches
	dbTime           time.Duration // database time of the last batch (applyBatchPG)
}

// observe records, after a committed batch, whether another process had
// committed since the previous one (seqBefore: the chain head as locked;
// seqAfter: as written).
func (s *lingerState) observe(seqBefore, seqAfter int64, dbTime time.Duration) {
	s.shared = s.lastSeq != 0 && seqBefore != s.lastSeq
	s.lastSeq, s.dbTime = seqAfter, dbTime
}

const maxLinger = time.Millisecond

// linger extends batch (n items) by the requests arriving within the wait
// described on lingerState, and records its size.
func (l *Ledger) linger(batch []*op, n int) ([]*op, int) {
	s := &l.lg
	target := min(s.prevOps+s.lastOps, l.opt.MaxBatch)
	if s.on && s.shared && len(batch) < target && s.lastOps+s.prevOps > 2 {
		t := time.NewTimer(min(maxLinger, s.dbTime/4))
	wait:
		for len(batch) < target && n < l.opt.MaxBatch {
			select {
			case o := <-l.in:
				batch = append(batch, o)
				n += max(len(o.items), 1)
			case <-t.C:
				break wait
			case <-l.quit:
				break wait
			}
		}
		t.Stop()
	}
	s.prevOps, s.lastOps = s.lastOps, len(batch)
	return batch, n
}
