-- The outstanding "ride first, pay later" debt of a resident (the sum of
-- debt_fen over accepted offline scans) is read under the ledger batch's
-- lock on every debt charge; this index keeps that read to the resident's
-- own debt rows instead of the whole scans table.
CREATE INDEX scans_debt ON scans(resident_id) WHERE debt_fen > 0;
