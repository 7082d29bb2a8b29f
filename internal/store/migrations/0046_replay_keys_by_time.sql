-- From this migration on, a YK1 code's one-use nonce is stored in scans.cti
-- as "YK1:<issuer>:<issue time, 10 hex digits>:<nonce>" instead of
-- "YK1:<issuer>:<nonce>" (scan.replayKeys): new keys land at the end of
-- the cti index instead of on a random page of it, so the pages a batch
-- writes stay few and cached however large the table grows. Nothing is
-- rewritten; codes issued before this migration was applied are checked
-- under both keys (their nonce may have been stored under the old one),
-- and its applied_at in schema_migrations is that moment. Stop every node
-- process of the city before starting this version (see docs/deploy.md).
SELECT 1;
