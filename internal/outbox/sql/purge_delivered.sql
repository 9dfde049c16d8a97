-- Deletes up to {{purge_batch}} rows delivered more than $1 microseconds
-- ago, and their attempts (by primary key prefix); returns how many rows.
WITH gone AS (
	DELETE FROM {{deliveries}}
	WHERE id IN (SELECT id FROM {{deliveries}}
		WHERE state = 'delivered' AND delivered_at < now() - $1::bigint * interval '1 microsecond'
		LIMIT {{purge_batch}})
	  AND state = 'delivered' AND delivered_at < now() - $1::bigint * interval '1 microsecond'
	RETURNING id
), a AS (
	DELETE FROM {{attempts}} WHERE delivery_id = ANY(ARRAY(SELECT id FROM gone))
)
SELECT count(*) FROM gone
