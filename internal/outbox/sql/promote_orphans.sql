-- Parked rows of $1 whose earlier change is finished become pending.
UPDATE {{deliveries}} SET state = 'pending', next_attempt_at = greatest(next_attempt_at, now())
WHERE id = ANY($1::bigint[]) AND state = 'parked'
