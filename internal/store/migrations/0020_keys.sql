-- Issuer keys that sign e-codes (internal/keys). The private part is a file
-- DATA/keys/issuer-<kid>.key; this registry is shared by every process of the
-- node. seq orders the keys and is UNIQUE so two processes cannot both create
-- "the next" key: the loser of the race reloads.
CREATE TABLE issuer_keys (
    kid        TEXT PRIMARY KEY,
    seq        BIGINT NOT NULL UNIQUE,
    alg        TEXT NOT NULL,
    public_key BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    not_after  BIGINT
);

-- The node key that signs trust bundles and federation messages
-- (DATA/keys/node.key). One row per purpose.
CREATE TABLE node_keys (
    purpose    TEXT PRIMARY KEY,
    kid        TEXT NOT NULL UNIQUE,
    alg        TEXT NOT NULL,
    public_key BLOB NOT NULL,
    created_at BIGINT NOT NULL
);
