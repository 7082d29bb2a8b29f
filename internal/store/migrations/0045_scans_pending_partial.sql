-- Scans are written final in the ledger's batch; only rows left by older
-- versions (or a crash of them) are ever 'pending'. The full (state, at)
-- index cost every scan one more B-tree entry per commit for nothing: keep
-- it for pending rows only.
DROP INDEX scans_pending;
CREATE INDEX scans_pending ON scans(state, at) WHERE state = 'pending';
