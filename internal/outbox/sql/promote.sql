-- Runs right after outcome, in its transaction but as a statement of its
-- own: its snapshot is taken after outcome got its row locks, so it sees
-- every row a claim parked behind the finished ones (such a claim holds a
-- share lock on the finished row until it commits). For each row of $1,
-- the first open change of its object becomes pending if it is parked. (A
-- row of $1 still open is that first open change itself, and not parked.)
--
-- The UPDATE finds its rows by primary key alone and checks the state in
-- SET, which a concurrent change of the row re-evaluates: a condition on
-- state in WHERE lets the planner AND the ids with the whole of
-- deliveries_object_open, which after a burst reads a thousand pages.
UPDATE {{deliveries}} AS d
SET state = CASE WHEN d.state = 'parked' THEN 'pending' ELSE d.state END,
	next_attempt_at = CASE WHEN d.state = 'parked' THEN greatest(d.next_attempt_at, now()) ELSE d.next_attempt_at END
WHERE d.id = ANY(ARRAY(
	SELECT n.id
	FROM {{deliveries}} AS f
	CROSS JOIN LATERAL (
		SELECT p.id, p.state FROM {{deliveries}} AS p
		WHERE p.webhook = f.webhook AND p.model = f.model AND p.object_key = f.object_key
		  AND p.state IN {{open}}
		ORDER BY p.commit_lsn, p.seq
		LIMIT 1) AS n
	WHERE f.id = ANY($1::bigint[]) AND n.state = 'parked'))
