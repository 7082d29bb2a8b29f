-- Web sessions: the cookie carries an auth token (auth_tokens); this table
-- adds what a browser session needs on top: the CSRF token and the time of
-- the last request (idle time-out). Only the token's SHA-256 is stored.
CREATE TABLE web_sessions (
    token_hash TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    last_seen  BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_last_seen ON web_sessions(last_seen);

-- Disputes: a resident contests one charge on the statement. Staff resolve
-- it by a refund (a ledger reversal, refund_transfer) or reject it with a
-- reason the resident sees. One dispute per charge.
CREATE TABLE disputes (
    id              TEXT PRIMARY KEY,
    resident_id     TEXT NOT NULL,
    card_number     TEXT NOT NULL,
    transfer_id     TEXT NOT NULL UNIQUE,
    account_id      TEXT NOT NULL,
    amount_fen      BIGINT NOT NULL,
    reason          TEXT NOT NULL,
    status          TEXT NOT NULL,
    resolution      TEXT NOT NULL DEFAULT '',
    refund_transfer TEXT NOT NULL DEFAULT '',
    created_at      BIGINT NOT NULL,
    resolved_at     BIGINT NOT NULL DEFAULT 0,
    resolved_by     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX disputes_resident ON disputes(resident_id, created_at);
CREATE INDEX disputes_status ON disputes(status, created_at);
