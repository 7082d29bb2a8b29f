-- Each terminal's offline high-water mark: the sequence number and time of
-- the latest record (by sequence number) the node has stored from it. A
-- later upload's records are checked against it (scan.ApplyBatch): a
-- record made after it (higher sequence) may not be dated before it by
-- more than scan.OfflineClockBack (the terminal's clock went back: a reset
-- clock would otherwise date taps days early, and judge them against the
-- card's state and the holder's age of then); a record made before it
-- (lower sequence, a late or re-sent batch) may not be dated after it by
-- more than that (its counter went back). offline_seq is NULL until the
-- first record is stored.
ALTER TABLE terminals ADD COLUMN offline_seq BIGINT;
ALTER TABLE terminals ADD COLUMN offline_at BIGINT NOT NULL DEFAULT 0;
