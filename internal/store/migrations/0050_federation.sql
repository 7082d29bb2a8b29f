-- Federation (internal/federation): peers' trust bundles as last fetched,
-- the clearing messages exchanged with peers (outbox and inbox in one
-- table), and the signed daily settlement statements.

-- The last verified bundle of each region member (kept across restarts so
-- a node can still vouch for its peers while they are unreachable).
CREATE TABLE fed_peer_bundles (
    city        TEXT PRIMARY KEY,
    bundle      BLOB NOT NULL,
    fetched_at  BIGINT NOT NULL
);

-- Clearing messages. id is the message id (= idempotency key on both
-- sides). direction: out (we sent / will send it) or in (a peer sent it).
-- state: out: sending | pending | voiding | acked | declined | voided
--        in:  applied | declined | voided
-- subject is the opaque card token (never a name or ID number); amount in fen.
CREATE TABLE fed_messages (
    id          TEXT NOT NULL,
    direction   TEXT NOT NULL,
    peer        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL DEFAULT '',
    amount_fen  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     BIGINT NOT NULL DEFAULT 0,
    last_error  TEXT NOT NULL DEFAULT '',
    body        BLOB,
    answer      BLOB,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (id, direction)
);
CREATE INDEX fed_messages_due ON fed_messages(state, next_at);
CREATE INDEX fed_messages_peer ON fed_messages(peer, created_at);
CREATE INDEX fed_messages_subject ON fed_messages(peer, subject, state);

-- Daily settlement statements: one per peer and day, with both signatures.
CREATE TABLE fed_statements (
    peer        TEXT NOT NULL,
    day         TEXT NOT NULL,
    statement   BLOB NOT NULL,
    ours        TEXT NOT NULL,
    theirs      TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (peer, day)
);
