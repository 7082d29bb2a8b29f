-- Pre-announced key rotation (internal/keys, docs/trust-bundle.md "Key
-- rotation and terminals"): an issuer key is registered, and published in
-- trust bundles, before it signs. active_from is the instant (Unix ms) from
-- which it signs; the key it replaces is retired at that same instant.
-- Keys registered before this migration signed from their creation.
ALTER TABLE issuer_keys ADD COLUMN active_from BIGINT;
UPDATE issuer_keys SET active_from = created_at;
