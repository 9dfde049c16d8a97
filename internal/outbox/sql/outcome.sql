-- Writes a batch of outcomes made by dispatcher $1. The batch comes as
-- parallel arrays, one element per delivery (ids distinct), named by o:
-- status 0 and empty texts are NULL; delay_us is NULL but for a retry
-- (next_attempt_at = now() + delay_us); prev_attempt_at is the row's
-- last_attempt_at before the claim; the attempt's columns (started_at ..
-- span_id) count only where recorded.
--
-- Rows are found by primary key only: each element of o looks its row up
-- (a nested loop over o, whatever the table's size; see planSettings), and
-- the attempts take what they need from the UPDATE's RETURNING, not from a
-- join of o with it. A row is only written while it is
-- still the claim this dispatcher made (locked_by, which only a claim sets,
-- and the claim's last_attempt_at), so a dispatcher whose claim was taken
-- back cannot overwrite a newer one. Mode 1 (released) puts back a row that
-- was not sent: attempts and last_attempt_at go back, the last outcome
-- stays. Mode 2 (probe) records a circuit-breaker probe that failed: its
-- status and error are kept but it does not count as one of the row's
-- attempts.
--
-- The rows written that were sent (recorded) get their attempt recorded,
-- numbered by the row's attempt_seq (counted here, so that numbering reads
-- nothing), and for the rows past {{attempts_kept}} attempts the oldest are
-- deleted (one index range each). An attempt of the same number left by a
-- delivery that had this id before (ids restarted by hand) is overwritten,
-- not an error that would hold the batch up. Rows not written (taken back
-- meanwhile) get no attempt: the outcome that counts is another
-- dispatcher's. It returns how many rows it wrote.
WITH o AS (
	SELECT * FROM unnest($2::bigint[], $3::text[], $4::int[], $5::int[], $6::text[], $7::bigint[],
		$8::timestamptz[], $9::timestamptz[], $10::bool[],
		$11::timestamptz[], $12::bigint[], $13::text[], $14::text[], $15::bool[], $16::text[])
	AS o(id, state, mode, status, error, delay_us,
		claimed_at, prev_attempt_at, recorded,
		started_at, duration_us, attempt_error, response, probe, span_id)
), u AS (
	UPDATE {{deliveries}} AS d
	SET state = o.state,
		attempts = d.attempts - CASE WHEN o.mode IN (1, 2) THEN 1 ELSE 0 END,
		next_attempt_at = coalesce(now() + o.delay_us * interval '1 microsecond', d.next_attempt_at),
		delivered_at = CASE WHEN o.state = 'delivered' THEN now() ELSE d.delivered_at END,
		last_status = CASE WHEN o.mode = 1 THEN d.last_status ELSE nullif(o.status, 0) END,
		last_error = CASE WHEN o.mode = 1 THEN d.last_error ELSE nullif(o.error, '') END,
		last_attempt_at = CASE WHEN o.mode = 1 THEN o.prev_attempt_at ELSE d.last_attempt_at END,
		attempt_seq = d.attempt_seq + CASE WHEN o.recorded THEN 1 ELSE 0 END,
		locked_until = NULL, locked_by = NULL
	FROM o
	WHERE d.id = o.id AND d.locked_by = $1 AND d.last_attempt_at = o.claimed_at
	RETURNING d.id, d.attempt_seq AS n, o.recorded, o.status, o.started_at, o.duration_us, o.attempt_error,
		o.response, o.probe, o.span_id
), a AS MATERIALIZED (
	SELECT * FROM u WHERE recorded
), ins AS (
	INSERT INTO {{attempts}} (delivery_id, attempt, started_at, duration, status, error, response, probe, span_id)
	SELECT id, n, started_at, duration_us * interval '1 microsecond', nullif(status, 0), nullif(attempt_error, ''),
		nullif(response, ''), probe, nullif(span_id, '')
	FROM a
	ON CONFLICT (delivery_id, attempt) DO UPDATE SET started_at = EXCLUDED.started_at, duration = EXCLUDED.duration,
		status = EXCLUDED.status, error = EXCLUDED.error, response = EXCLUDED.response, probe = EXCLUDED.probe,
		span_id = EXCLUDED.span_id
), trim AS (
	DELETE FROM {{attempts}} AS p
	USING a
	WHERE a.n > {{attempts_kept}} AND p.delivery_id = a.id AND p.attempt <= a.n - {{attempts_kept}}
)
SELECT count(*) FROM u
