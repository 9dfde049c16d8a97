-- Rows claimed by dispatcher $1 that it does not hold ($2: the ids it
-- holds): a claim committed but its answer never reached the dispatcher
-- (the connection died, the server failed over). They were not sent, so the
-- claim's attempt is taken back. The dispatcher runs it with no claim in
-- flight.
UPDATE {{deliveries}} AS d
SET state = 'pending', locked_until = NULL, locked_by = NULL, attempts = greatest(d.attempts - 1, 0)
WHERE d.state = 'delivering' AND d.locked_by = $1 AND d.id <> ALL($2::bigint[])
