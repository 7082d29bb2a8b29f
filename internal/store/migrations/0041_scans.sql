-- Providers (bus companies, hospitals, libraries, schools, employers …) and
-- the scenarios each may run on its terminals.
CREATE TABLE providers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    scenarios   TEXT NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

-- Terminals: a gate, POS, door or counter reader of one provider. Its bearer
-- token lives in auth_tokens (kind terminal); public_key is the Ed25519 key
-- that signs its offline batches (the private half never leaves the terminal).
CREATE TABLE terminals (
    id          TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL REFERENCES providers(id),
    name        TEXT NOT NULL,
    scenarios   TEXT NOT NULL,
    public_key  BLOB NOT NULL,
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    disabled_at BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX terminals_provider ON terminals(provider_id);

-- Every scan, online or offline. (terminal_id, idem_key) is the idempotency
-- key (offline records use "off:<record id>"); cti is the one-use nonce of a
-- code ("YK1:<issuer>:<hex>"), unique across every node process sharing the
-- database. state: pending (code claimed, money not yet settled) or final.
-- plan is the ledger transfers the scan makes (JSON), re-driven by a retry
-- of a pending scan with the same keys; answer is the sealed (vault) JSON answer returned again on a retry.
CREATE TABLE scans (
    terminal_id TEXT NOT NULL,
    idem_key    TEXT NOT NULL,
    req_hash    BLOB NOT NULL,
    cti         TEXT UNIQUE,
    provider_id TEXT NOT NULL,
    scenario    TEXT NOT NULL,
    resident_id TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL,
    decision    TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    charged_fen BIGINT NOT NULL DEFAULT 0,
    debt_fen    BIGINT NOT NULL DEFAULT 0,
    plan        TEXT NOT NULL DEFAULT '',
    offline     INTEGER NOT NULL DEFAULT 0,
    answer      BLOB,
    at          BIGINT NOT NULL,
    PRIMARY KEY (terminal_id, idem_key)
);
CREATE INDEX scans_provider_at ON scans(provider_id, at);
CREATE INDEX scans_pending ON scans(state, at);

-- Offline batches received (a re-sent batch is recognised by its id).
CREATE TABLE scan_batches (
    terminal_id TEXT NOT NULL,
    batch_id    TEXT NOT NULL,
    digest      BLOB NOT NULL,
    records     INTEGER NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (terminal_id, batch_id)
);

-- Other code schemes (多码融合): e.g. a city transit company's TC1 codes,
-- signed by the company's own key, whose transit accounts are bound to
-- residents' cards.
CREATE TABLE code_issuers (
    scheme      TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    alg         TEXT NOT NULL,
    public_key  BLOB NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (scheme, issuer)
);
CREATE TABLE code_bindings (
    scheme      TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    account     TEXT NOT NULL,
    card_number TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (scheme, issuer, account)
);
