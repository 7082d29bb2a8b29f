-- Residents' accounts (wallets "w:…", medical accounts "m:…") are the
-- millions of accounts of a city, each moving a few times a day. The
-- indexes on (debit, seq) and (credit, seq) cost every transfer of theirs
-- a B-tree entry at a random place: one more WAL page per resident account
-- per transfer, besides the account row itself. Their statements follow a
-- chain instead: every moving entry (transfer, post, reversal) names the
-- previous moving entry of its debit account and of its credit account,
-- and the account row the last one — a row each batch writes anyway.
-- The indexes stay for every other account (providers, programmes,
-- clearing, the bank): few accounts, many entries each, appended in order.
ALTER TABLE ledger_journal ADD COLUMN debit_prev BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ledger_journal ADD COLUMN credit_prev BIGINT NOT NULL DEFAULT 0;
ALTER TABLE ledger_accounts ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0;
-- backfill: the chains of the entries written before this migration.
UPDATE ledger_journal SET debit_prev = p.prev FROM (
    SELECT seq, acct, LAG(seq, 1, 0) OVER (PARTITION BY acct ORDER BY seq) AS prev FROM (
        SELECT seq, debit AS acct FROM ledger_journal WHERE type IN ('transfer', 'post', 'reversal')
        UNION ALL SELECT seq, credit FROM ledger_journal WHERE type IN ('transfer', 'post', 'reversal')) AS m
) AS p WHERE p.seq = ledger_journal.seq AND p.acct = ledger_journal.debit;
UPDATE ledger_journal SET credit_prev = p.prev FROM (
    SELECT seq, acct, LAG(seq, 1, 0) OVER (PARTITION BY acct ORDER BY seq) AS prev FROM (
        SELECT seq, debit AS acct FROM ledger_journal WHERE type IN ('transfer', 'post', 'reversal')
        UNION ALL SELECT seq, credit FROM ledger_journal WHERE type IN ('transfer', 'post', 'reversal')) AS m
) AS p WHERE p.seq = ledger_journal.seq AND p.acct = ledger_journal.credit;
UPDATE ledger_accounts SET last_seq = l.seq FROM (
    SELECT acct, MAX(seq) AS seq FROM (
        SELECT seq, debit AS acct FROM ledger_journal WHERE type IN ('transfer', 'post', 'reversal')
        UNION ALL SELECT seq, credit FROM ledger_journal WHERE type IN ('transfer', 'post', 'reversal')) AS m
    GROUP BY acct
) AS l WHERE l.acct = ledger_accounts.id;
DROP INDEX ledger_journal_debit;
DROP INDEX ledger_journal_credit;
CREATE INDEX ledger_journal_debit ON ledger_journal(debit, seq) WHERE substr(debit, 1, 2) NOT IN ('w:', 'm:');
CREATE INDEX ledger_journal_credit ON ledger_journal(credit, seq) WHERE substr(credit, 1, 2) NOT IN ('w:', 'm:');
