-- Staff sign-in lock-out: consecutive wrong passwords per user name. The key
-- is the SHA-256 of the user name as typed (trimmed), known or not, so an
-- unknown name is limited exactly like a real one and no typed text is kept.
-- fails counts attempts since the last success or lock (a slot is taken
-- before the password is checked); locked_until is the end of the current
-- lock (Unix ms, 0 = none); lockouts counts locks in a row (the period grows).
CREATE TABLE staff_signin_throttle (
    name_hash    TEXT PRIMARY KEY,
    fails        INTEGER NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0,
    lockouts     INTEGER NOT NULL DEFAULT 0,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX staff_signin_throttle_updated ON staff_signin_throttle(updated_at);
