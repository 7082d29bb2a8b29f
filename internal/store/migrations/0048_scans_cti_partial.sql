-- A code's nonce (cti) is used once: until now a UNIQUE column, whose
-- index also held an entry for every scan without a code (card scans,
-- most offline records: cti NULL). Those entries served nothing and cost
-- every such scan one more B-tree insert in its commit, and would grow the
-- index by one entry per card tap for good (10 interleaved pairs of card
-- charges at 128 terminals: about 5 % more scans/s without them,
-- docs/benchmarks.md "Session 12"). The nonce is now unique through a
-- partial index of the scans that have one; its look-ups say
-- "cti IS NOT NULL" so that both planners use it
-- (scan.TestNonceLookupsUseThePartialIndex).
--
-- A column constraint cannot be dropped in the SQL both backends share
-- (SQLite cannot drop it at all), so the table is rebuilt, as in 0047:
-- on a large table this takes a while at start (stop every node process
-- of the city first, see docs/deploy.md).
CREATE TABLE scans_cti_partial (
    terminal_id TEXT NOT NULL,
    idem_key    TEXT NOT NULL,
    req_hash    BLOB NOT NULL,
    cti         TEXT,
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
    PRIMARY KEY (idem_key, terminal_id)
);
INSERT INTO scans_cti_partial (terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, plan, offline, answer, at)
SELECT terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, plan, offline, answer, at
FROM scans ORDER BY at;
DROP TABLE scans;
ALTER TABLE scans_cti_partial RENAME TO scans;
CREATE UNIQUE INDEX scans_cti ON scans(cti) WHERE cti IS NOT NULL;
CREATE INDEX scans_provider_at ON scans(provider_id, at);
CREATE INDEX scans_debt ON scans(resident_id) WHERE debt_fen > 0;
CREATE INDEX scans_pending ON scans(state, at) WHERE state = 'pending';
