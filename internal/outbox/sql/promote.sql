-- Runs right after outcome, in its transaction but as a statement of its
-- own: its snapshot is taken after outcome got its row locks, so it sees
-- every row a claim parked behind the finished ones (such a claim holds a
-- share lock on the finished row until it commits). For each finished row
-- of $1, the first open change of its object becomes pending if it is
-- parked.
UPDATE {{deliveries}} AS d
SET state = 'pending', next_attempt_at = greatest(d.next_attempt_at, now())
WHERE d.id = ANY(ARRAY(
	SELECT (SELECT p.id FROM {{deliveries}} AS p
		WHERE p.webhook = f.webhook AND p.model = f.model AND p.object_key = f.object_key
		  AND p.state IN {{open}}
		ORDER BY p.commit_lsn, p.seq
		LIMIT 1)
	FROM {{deliveries}} AS f
	WHERE f.id = ANY($1::bigint[]) AND f.state IN ('delivered', 'failed')))
  AND d.state = 'parked'
