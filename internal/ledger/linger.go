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
// process's batch again holds all its waiting callers. Without attachments
// such a batch takes three round trips (BEGIN with the waiting lock, the
// reads, the writes with COMMIT); it took five through a database/sql
// transaction, which only attachments need. A process alone
// tries the lock with NOWAIT in its first pipeline and never pays for
// this; a process that saw another's commits at its last batch (shared)
// goes straight to the waiting path, saving the failed attempt.
// (An earlier version lingered up to 1 ms before each batch instead; it
// raised the two-process ratio from 0.78 to 1.01 but did not refill the
// batches. docs/benchmarks.md.)
type lingerState struct {
	on      bool
	shared  bool          // the last batch saw another process's commits
	lastSeq int64         // chain head seq after this process's last batch
	dbTime  time.Duration // database time of the last batch (applyBatchPG)
}

// observe records, after a committed batch, whether another process had
// committed since the previous one (seqBefore: the chain head as locked;
// seqAfter: as written).
func (s *lingerState) observe(seqBefore, seqAfter int64, dbTime time.Duration) {
	s.shared = s.on && s.lastSeq != 0 && seqBefore != s.lastSeq
	s.lastSeq, s.dbTime = seqAfter, dbTime
}
