-- Ledger accounts. balance_fen = credits - debits posted; pending_fen = sum of
-- pending holds debiting the account. Only balance_fen, pending_fen, version
-- and status ever change in place.
CREATE TABLE ledger_accounts (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    currency    TEXT NOT NULL,
    floor_fen   BIGINT NOT NULL DEFAULT 0,
    unbounded   INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL DEFAULT 'open',
    label       TEXT NOT NULL DEFAULT '',
    balance_fen BIGINT NOT NULL DEFAULT 0,
    pending_fen BIGINT NOT NULL DEFAULT 0,
    version     BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

-- The journal: every event (transfer, hold, post, void, expire, reversal),
-- append-only and hash-chained: hash = SM3(previous hash || canonical entry).
-- A transfer's id is "tr-<seq>".
CREATE TABLE ledger_journal (
    seq          INTEGER PRIMARY KEY,
    idem_key     TEXT UNIQUE,
    req_hash     BLOB,
    type         TEXT NOT NULL,
    kind         TEXT NOT NULL DEFAULT '',
    debit        TEXT NOT NULL,
    credit       TEXT NOT NULL,
    amount       BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    ref          BIGINT NOT NULL DEFAULT 0,
    link         BIGINT NOT NULL DEFAULT 0,
    debit_after  BIGINT NOT NULL DEFAULT 0,
    credit_after BIGINT NOT NULL DEFAULT 0,
    memo         TEXT NOT NULL DEFAULT '',
    meta         TEXT NOT NULL DEFAULT '',
    at           BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL DEFAULT 0,
    hash         BLOB NOT NULL
);
CREATE INDEX ledger_journal_debit ON ledger_journal(debit, seq);
CREATE INDEX ledger_journal_credit ON ledger_journal(credit, seq);
CREATE INDEX ledger_journal_ref ON ledger_journal(ref) WHERE ref <> 0;

-- Holds (two-phase transfers): the hold itself is a journal entry; this
-- table keeps only its mutable status.
CREATE TABLE ledger_holds (
    id           BIGINT PRIMARY KEY,
    debit        TEXT NOT NULL,
    credit       TEXT NOT NULL,
    amount       BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    status       TEXT NOT NULL,
    resolved_seq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX ledger_holds_pending ON ledger_holds(expires_at) WHERE status = 'pending';
CREATE INDEX ledger_holds_pending_debit ON ledger_holds(debit) WHERE status = 'pending';

-- The chain head: last seq and hash. Writers lock this row first, which
-- serialises the chain across node processes sharing one database.
CREATE TABLE ledger_chain (
    id   INTEGER PRIMARY KEY,
    seq  BIGINT NOT NULL,
    hash BLOB NOT NULL
);
INSERT INTO ledger_chain(id, seq, hash) VALUES (1, 0, X'0000000000000000000000000000000000000000000000000000000000000000');
