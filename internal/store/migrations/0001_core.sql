-- Node-wide settings (city id, created time, …).
CREATE TABLE node_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Audit log: every staff read of personal data and every sensitive action.
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    actor_role TEXT NOT NULL,
    action     TEXT NOT NULL,
    subject    TEXT NOT NULL DEFAULT '',
    detail     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_at ON audit_log(at);
