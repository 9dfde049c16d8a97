-- Claims, for each webhook ($1) up to its limit ($2), the due pending rows,
-- oldest first, for the webhook's lease ($3, microseconds), by dispatcher $4,
-- among the rows due since $5 (per webhook; '-infinity' for all).
--
-- The lower bound skips the head of deliveries_due: the entries of rows that
-- were pending and are not any more stay in the index until VACUUM, and
-- after a burst a scan from the start reads through all of them (500 index
-- pages per 100,000 rows, on every claim). The dispatcher passes a bound it
-- knows no pending row is older than, except rows a full claim (no bound,
-- once per poll) finds.
--
-- Candidates come through deliveries_due (webhook, next_attempt_at, id): an
-- ordered index scan that stops after the LIMIT, whatever the backlog and
-- whatever the planner knows of the table. Rows other claims hold are
-- skipped.
--
-- Each candidate's nearest earlier open change of the same object is looked
-- up with one probe of deliveries_object_open. Without one, the candidate
-- is claimed. With one, the candidate is parked, which takes it out of
-- deliveries_due for good, but only if that earlier row can be share-locked
-- at once: an earlier row whose outcome is being written right now (row
-- locked) may be about to promote its successors, so the candidate is left
-- pending for the next claim rather than parked where nobody would promote
-- it. The share lock makes an outcome that starts later wait until this
-- claim has committed, so that its promotion sees the parked row. SKIP
-- LOCKED everywhere: a claim never waits for a lock.
--
-- Every row is locked and decided before the first one is updated: the
-- arrays of agg are init plans, computed in full before the UPDATE reads
-- its first row. (Read lazily, a later candidate's share lock would meet a
-- row this very statement already updated, and fail.) The UPDATE finds its
-- rows by primary key: no join order for missing statistics to get wrong.
WITH cand AS MATERIALIZED (
	SELECT c.*, w.lease
	FROM unnest($1::text[], $2::int[], $3::bigint[], $5::timestamptz[]) AS w(name, lim, lease, since)
	CROSS JOIN LATERAL (
		SELECT d.id, d.webhook, d.model, d.object_key, d.commit_lsn, d.seq, d.last_attempt_at
		FROM {{deliveries}} AS d
		WHERE d.state = 'pending' AND d.webhook = w.name AND d.next_attempt_at <= now()
		  AND d.next_attempt_at >= w.since
		ORDER BY d.next_attempt_at, d.id
		LIMIT w.lim
		FOR UPDATE OF d SKIP LOCKED) AS c
), pick AS MATERIALIZED (
	SELECT c.id, c.last_attempt_at AS prev_attempt_at, c.lease, b.id IS NULL AS claim
	FROM cand AS c
	LEFT JOIN LATERAL (
		SELECT p.id FROM {{deliveries}} AS p
		WHERE p.webhook = c.webhook AND p.model = c.model AND p.object_key = c.object_key
		  AND p.state IN {{open}}
		  AND (p.commit_lsn, p.seq) < (c.commit_lsn, c.seq)
		ORDER BY p.commit_lsn DESC, p.seq DESC
		LIMIT 1) AS b ON true
	LEFT JOIN LATERAL (
		SELECT p.id FROM {{deliveries}} AS p
		WHERE p.id = b.id AND p.state IN {{open}}
		FOR SHARE OF p SKIP LOCKED) AS l ON true
	WHERE b.id IS NULL OR l.id IS NOT NULL
), agg AS (
	SELECT array_agg(id) AS ids, array_agg(claim) AS claims,
		array_agg(prev_attempt_at) AS prevs, array_agg(lease) AS leases
	FROM pick
)
UPDATE {{deliveries}} AS d
SET state = CASE WHEN k.claim THEN 'delivering' ELSE 'parked' END,
	attempts = d.attempts + CASE WHEN k.claim THEN 1 ELSE 0 END,
	locked_until = CASE WHEN k.claim THEN now() + k.lease * interval '1 microsecond' END,
	locked_by = CASE WHEN k.claim THEN $4 END,
	last_attempt_at = CASE WHEN k.claim THEN now() ELSE d.last_attempt_at END
FROM unnest((SELECT ids FROM agg), (SELECT claims FROM agg), (SELECT prevs FROM agg), (SELECT leases FROM agg))
	AS k(id, claim, prev_attempt_at, lease)
WHERE d.id = k.id
RETURNING d.id, d.webhook, k.claim, CASE WHEN k.claim THEN d.body END, d.attempts,
	d.last_attempt_at, k.prev_attempt_at, d.committed_at, d.model
