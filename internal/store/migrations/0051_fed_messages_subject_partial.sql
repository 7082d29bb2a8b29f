-- The subject index serves one query: a card's exposure under the offline
-- risk limit (outbox rows still 'pending'). Over every row it cost each
-- authorisation and each clearing message a B-tree entry at a random place
-- (subjects come in no order): one WAL page per message on the home city's
-- inbox, and two on the sender's outbox (its insert and its state change).
-- Keep it for the rows that query reads.
DROP INDEX fed_messages_subject;
CREATE INDEX fed_messages_subject ON fed_messages(peer, subject) WHERE direction = 'out' AND state = 'pending';
