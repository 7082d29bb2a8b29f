-- Residents: personal data only sealed (internal/vault, aad = id); found by
-- the keyed hash of the ID number.
CREATE TABLE residents (
    id         TEXT PRIMARY KEY,
    id_hash    TEXT NOT NULL UNIQUE,
    id_masked  TEXT NOT NULL,
    id_kind    TEXT NOT NULL,
    category   TEXT NOT NULL,
    sex        TEXT NOT NULL,
    pii        BLOB NOT NULL,
    created_at BIGINT NOT NULL
);

-- Cards (social security cards). token is the e-code subject.
CREATE TABLE cards (
    number            TEXT PRIMARY KEY,
    resident_id       TEXT NOT NULL REFERENCES residents(id),
    token             TEXT NOT NULL UNIQUE,
    status            TEXT NOT NULL,
    locked            INTEGER NOT NULL DEFAULT 0,
    pin_fails         INTEGER NOT NULL DEFAULT 0,
    pin_hash          TEXT NOT NULL DEFAULT '',
    issued_at         BIGINT NOT NULL,
    status_changed_at BIGINT NOT NULL,
    replaced_by       TEXT NOT NULL DEFAULT ''
);
CREATE INDEX cards_resident ON cards(resident_id);
CREATE INDEX cards_status_changed ON cards(status_changed_at);
-- At most one live (active or lost) card per resident.
CREATE UNIQUE INDEX cards_one_live ON cards(resident_id) WHERE status IN ('active', 'lost');

-- Every status change and PIN administration step of a card.
CREATE TABLE card_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    card_number TEXT NOT NULL,
    event       TEXT NOT NULL,
    from_status TEXT NOT NULL DEFAULT '',
    to_status   TEXT NOT NULL DEFAULT '',
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL
);
CREATE INDEX card_events_card ON card_events(card_number, id);
