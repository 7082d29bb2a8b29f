-- The scans table's primary key becomes (idem_key, terminal_id) instead of
-- (terminal_id, idem_key). With the terminal first, a city of thousands of
-- terminals writes each scan's key into its own terminal's part of the
-- index: one page of its own per scan (a group commit of 40 scans wrote
-- about 40 pages of this index). With the key first, keys that grow with
-- time (a counter, or a time-ordered key as yikatong's terminal program
-- makes, internal/termsim.NewRequestKey) land at the end of the index
-- whichever terminal sent them, so a batch shares a page or two. Random
-- keys cost one page each in either order, so no terminal loses. Every
-- look-up names both columns (scan.TestScanKeyLookupsSearchThePrimaryKey).
--
-- Neither SQLite nor the shared SQL of both backends can change a primary
-- key in place, so the table is rebuilt: on a large table this takes a
-- while at start (stop every node process of the city first, see
-- docs/deploy.md).
CREATE TABLE scans_key_first (
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
    PRIMARY KEY (idem_key, terminal_id)
);
INSERT INTO scans_key_first (terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, plan, offline, answer, at)
SELECT terminal_id, idem_key, req_hash, cti, provider_id, scenario, resident_id, state, decision, reason, charged_fen, debt_fen, plan, offline, answer, at
FROM scans ORDER BY at;
DROP TABLE scans;
ALTER TABLE scans_key_first RENAME TO scans;
CREATE INDEX scans_provider_at ON scans(provider_id, at);
CREATE INDEX scans_debt ON scans(resident_id) WHERE debt_fen > 0;
CREATE INDEX scans_pending ON scans(state, at) WHERE state = 'pending';
