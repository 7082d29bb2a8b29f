-- Collections of offline "ride first, pay later" debt (scans.debt_fen) from
-- a resident's later top-ups (internal/scan/collect.go). Append-only, like
-- the journal: one row per collection, written in the same ledger batch
-- transaction as its transfer (wallet → the account that advanced the
-- fare), so a row exists exactly when the money moved. seq numbers the
-- collections of one debt row 1, 2, …; the transfer's idempotency key is
-- derived from (terminal_id, idem_key, seq). What a resident still owes on
-- a scan is its debt_fen minus the sum of its collections.
CREATE TABLE scan_debt_collections (
    terminal_id    TEXT NOT NULL,
    idem_key       TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    resident_id    TEXT NOT NULL,
    amount_fen     BIGINT NOT NULL,
    credit_account TEXT NOT NULL,
    transfer_id    TEXT NOT NULL,
    at             BIGINT NOT NULL,
    PRIMARY KEY (terminal_id, idem_key, seq)
);
CREATE INDEX scan_debt_collections_resident ON scan_debt_collections(resident_id);
