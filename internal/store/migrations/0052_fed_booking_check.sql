-- An online authorisation by another city (an outbox charge) must end in a
-- booking here: the scan's row in the scans table, written with the
-- clr:<home> → provider transfer. If the booking failed after the home city
-- charged (the database went away, the terminal gave up and its code
-- expired), the home city would keep money this city never credited.
-- check_booking_at (Unix ms, 0 = nothing to check) is when the outbox
-- checks that the scan was booked, and voids the charge if it was not.
ALTER TABLE fed_messages ADD COLUMN check_booking_at BIGINT NOT NULL DEFAULT 0;
CREATE INDEX fed_messages_booking ON fed_messages(check_booking_at) WHERE check_booking_at > 0;
