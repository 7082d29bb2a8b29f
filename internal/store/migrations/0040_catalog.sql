-- Service catalogue (internal/catalog): the 13 service items of the
-- regulation and their scenarios. Rules, concessions and visible fields are
-- JSON documents evaluated by catalog.Decide / catalog.View, so a scenario
-- can be added or changed without a code change. Seed rows are inserted by
-- catalog.Open (ON CONFLICT DO NOTHING), never overwritten.
CREATE TABLE catalog_items (
    number         INTEGER PRIMARY KEY,
    name_zh        TEXT NOT NULL,
    name_en        TEXT NOT NULL,
    description_zh TEXT NOT NULL DEFAULT '',
    description_en TEXT NOT NULL DEFAULT ''
);

CREATE TABLE catalog_scenarios (
    id                   TEXT PRIMARY KEY,
    item                 INTEGER NOT NULL REFERENCES catalog_items(number),
    position             INTEGER NOT NULL,
    name_zh              TEXT NOT NULL,
    name_en              TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    default_amount_fen   BIGINT NOT NULL DEFAULT 0,
    amount_from_terminal INTEGER NOT NULL DEFAULT 0,
    max_amount_fen       BIGINT NOT NULL DEFAULT 0,
    eligibility          TEXT NOT NULL DEFAULT '{}',
    concessions          TEXT NOT NULL DEFAULT '[]',
    view_fields          TEXT NOT NULL DEFAULT '[]',
    offline_allowed      INTEGER NOT NULL DEFAULT 0,
    credit_limit_fen     BIGINT NOT NULL DEFAULT 0,
    local_only           INTEGER NOT NULL DEFAULT 0,
    require_pin          INTEGER NOT NULL DEFAULT 0,
    pin_above_fen        BIGINT NOT NULL DEFAULT 0,
    enabled              INTEGER NOT NULL DEFAULT 1,
    origin               TEXT NOT NULL,
    version              BIGINT NOT NULL DEFAULT 1,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL
);
CREATE INDEX catalog_scenarios_item ON catalog_scenarios(item, position);

-- One row; bumped in the same transaction as every catalogue change so that
-- every process sharing the database notices and drops its in-memory cache.
CREATE TABLE catalog_generation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL
);
INSERT INTO catalog_generation(id, generation) VALUES (1, 1);
