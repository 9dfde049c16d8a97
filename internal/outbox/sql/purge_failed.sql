-- Deletes up to {{purge_batch}} failed rows whose last attempt is more than
-- $1 microseconds old, and their attempts (by primary key prefix); returns
-- how many rows.
WITH gone AS (
	DELETE FROM {{deliveries}}
	WHERE id IN (SELECT id FROM {{deliveries}}
		WHERE state = 'failed' AND last_attempt_at < now() - $1::bigint * interval '1 microsecond'
		LIMIT {{purge_batch}})
	  AND state = 'failed' AND last_attempt_at < now() - $1::bigint * interval '1 microsecond'
	RETURNING id
), a AS (
	DELETE FROM {{attempts}} WHERE delivery_id = ANY(ARRAY(SELECT id FROM gone))
)
SELECT count(*) FROM gone
