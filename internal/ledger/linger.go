package ledger

import "time"

// Sharing the chain head with other processes (PostgreSQL).
//
// With several node processes on one database, their batches take turns
// on the chain-head lock, which each holds through its COMMIT's WAL flush.
// A batch formed while another process's batch commits used to hold only
// the requests queued at that moment: each process's callers split into
// the batch committing and the one waiting, and batches shrank to about
// half (two processes: 7–8 requests against 12–15 alone).
//
// Now a batch that finds the chain head locked waits for it and then takes
// in every request that arrived meanwhile (absorb, pgbatch.go): the wait
// costs nothing, since the batch could not have started anyway, and a
// process's batch again holds all its waiting callers. Such a batch takes
// three round trips (BEGIN with the waiting lock, the reads, the writes
// with COMMIT), unless an attacher that is not a PipelineAttacher makes it
// use a database/sql transaction (attach.go). A process alone
// tries the lock with NOWAIT in its first pipeline and never pays for
// this; a process that saw another process on the chain head within the
// last sharedFor goes straight to the waiting path, saving the failed
// attempt (a NOWAIT that fails costs its pipeline and a ROLLBACK, two
// round trips, before the batch waits anyway). It sees another process
// when the chain head moved since its own last batch, or when its NOWAIT
// found the head locked. The second matters for batches that write no
// journal entry (scans that move no money): they leave the head where it
// was, so with the first sign alone two processes serving only such scans
// never noticed each other, and about half of their batches paid for a
// failed NOWAIT (docs/benchmarks.md, session 11). Once sharedFor has
// passed without a sign, the next batch tries NOWAIT again: a process
// that has the database to itself again returns to two round trips, and
// one that does not pays one failed attempt per sharedFor.
// (An earlier version lingered up to 1 ms before each batch instead; it
// raised the two-process ratio from 0.78 to 1.01 but did not refill the
// batches. docs/benchmarks.md.)
type lingerState struct {
	on      bool
	shared  bool          // another process was seen within sharedFor
	seen    time.Time     // when another process was last seen
	lastSeq int64         // chain head seq after this process's last batch
	dbTime  time.Duration // database time of the last batch (applyBatchPG)
}

// sharedFor is how long a process takes the waiting path after it last
// saw another process on the chain head.
const sharedFor = time.Second

// observe records, after a committed batch, whether another process had
// committed since the previous one (seqBefore: the chain head as locked;
// seqAfter: as written) or held the head when this batch tried it with
// NOWAIT (lockBusy); now is the time of the observation.
func (s *lingerState) observe(seqBefore, seqAfter int64, lockBusy bool, now time.Time, dbTime time.Duration) {
	if s.on && (lockBusy || s.lastSeq != 0 && seqBefore != s.lastSeq) {
		s.seen = now
	}
	s.shared = s.on && !s.seen.IsZero() && now.Sub(s.seen) < sharedFor
	s.lastSeq, s.dbTime = seqAfter, dbTime
}
