// Package ledger is yikatong's double-entry ledger: accounts, transfers,
// linked sets, holds (pending → posted/voided/expired), reversals and an
// append-only, hash-chained journal, on SQLite or PostgreSQL.
//
// Money is int64 fen. An account's balance is credits minus debits; the sum
// of all balances is always zero. Money from outside (bank top-ups, treasury
// funding, the medical insurance fund) comes from "external" accounts that
// may go negative without bound; every other account has a floor (0, or a
// bounded negative floor for "ride first, pay later") that its available
// balance (balance − pending holds) may not cross.
//
// # Idempotency
//
// Every write carries a caller-chosen key. The SM3 hash of the request's
// content is stored with the journal entry: the same key with the same
// content returns the original result (same id, same timestamps, Replayed
// set); with other content it is idempotency_conflict. A refused request
// (insufficient funds, closed account, …) writes nothing and does not use
// up its key, so a retry may succeed later — e.g. a fare retried after a
// top-up. This differs from TigerBeetle, which records failed results per
// id; we chose it because a refused payment at a gate must be payable once
// the resident has topped up, under the same terminal transaction key.
//
// # Group commit
//
// All writes go through one committer goroutine per Ledger. It takes what
// is queued (up to MaxBatch entries, never waiting when idle) and applies
// the whole batch in one database transaction with one commit (one fsync,
// on SQLite deferred: see below):
// one query finds known keys, one loads the touched accounts (on
// PostgreSQL SELECT … FOR UPDATE in id order, after locking the single
// chain-head row, so several node processes over one database serialise
// their batches and never overspend or deadlock), multi-row INSERTs write
// the journal, and ONE UPDATE writes every touched account's new balance —
// a hot account credited by every fare in the batch is updated once. A
// request uses exactly one connection (the committer's), never two.
//
// A refused request never fails its batch-mates. A database error fails
// the whole batch: every caller gets "unavailable" (retry with the same
// key) and nothing is written. A unique violation on a key committed by
// another process meanwhile re-runs the batch, which then sees that row.
//
// On SQLite (the single-writer backend) three things make a batch cheap:
// its statements come in power-of-two size classes prepared once at Open
// (stmts.go); its writes say OR ROLLBACK, so SQLite keeps no statement
// journal (which spilled to a temporary file); and the accounts' state as
// of the last committed batch is kept in memory (cache.go), so a batch
// reads only accounts it has not seen. The cache is checked under the
// write lock at the start of every batch — PRAGMA data_version (another
// process wrote), the chain head's seq, CloseAccount's epoch — and dropped
// on any doubt and after any failed batch. And its fsync is deferred
// (sync.go): the batch commits with synchronous=NORMAL on the reserved
// writer connection, and a syncer goroutine fdatasyncs the write-ahead log
// before any of its callers is answered, while the committer already
// applies the next batch. An answered transfer is on disk exactly as with
// synchronous=FULL; SQLite replays the log up to its first bad frame, so a
// power cut keeps a prefix of the commits. Other writers of the database
// keep synchronous=FULL. On PostgreSQL, where several
// node processes may write, nothing is cached: each batch locks and
// re-reads its accounts. There a batch's cost is its round trips, so it
// is two pipelines on one connection (pgbatch.go): BEGIN, the chain-head
// lock, the keys and the accounts FOR UPDATE in one; the journal, holds,
// accounts, chain head and COMMIT in the other, every statement with a
// fixed text (rows bound as arrays). And when several processes take turns
// on the chain-head lock, a batch that finds it taken waits for it and
// then takes in the requests that arrived meanwhile (linger.go).
//
// # Attachments
//
// A caller may write its own rows in the batch's transaction (Attach,
// AttachMany; attach.go): after the batch has loaded (under its locks) its
// Attacher may refuse requests (their transfers are not applied, the rest
// of the batch goes on), and after the ledger's writes it writes its rows,
// knowing each request's outcome (a refused transfer's attachment is still
// written if the Attacher wants, e.g. as a decline record). One COMMIT
// covers both, or neither. The scan path uses it so that a charging scan
// costs one commit, not two.
//
// # Journal
//
// Each entry's hash is SM3(previous hash || canonical entry) (GM/T 0004,
// via emmansun/gmsm), from 32 zero bytes; the chain head row holds the last
// seq and hash. Transfers and journal entries are never updated or
// deleted; only account balances/version/status and hold status change in
// place. Each movement stores both accounts' balances after it, which
// gives statements their running balance and lets Check verify them.
//
// Statements find an account's entries in one of two ways. Providers,
// programmes, clearing and the bank — few accounts with many entries each
// — through indexes on (debit, seq) and (credit, seq). Residents' wallets
// and medical accounts (ids "w:…", "m:…"; millions of accounts, a few
// entries a day) are left out of those indexes, which would cost each of
// their transfers one more B-tree page at a random place: every movement
// names instead the previous movement of its debit and of its credit
// account, the account row names its last one (a row the batch writes
// anyway), and a resident's statement follows that chain, walked inside
// the database by one recursive query (migration 0031; read.go).
//
// Check verifies in one snapshot: sum of balances 0, each balance equal to
// its postings, pending amounts equal to pending holds, running balances,
// the accounts' chains of movements, and the hash chain end to end.
//
// # Holds
//
// A hold reserves funds on its debit account until posted (any amount up
// to the amount held; the rest is released), voided, or past its timeout.
// Expiry happens lazily whenever a batch touches the hold or an account
// with holds, and in bulk when the node calls ExpireHolds periodically; an
// expiry is a journal entry of its own. Posting or voiding a hold that is
// no longer pending is hold_not_pending.
//
// # Reversals
//
// Corrections are new entries in the opposite direction referring to the
// original; the reversals of one entry never exceed its amount
// (reversal_exceeds), and reversals of reversals are bounded likewise. The
// floor of the account being debited by the reversal still applies.
package ledger
