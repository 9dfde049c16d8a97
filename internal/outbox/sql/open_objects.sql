-- Walks the open changes object by object from after ($1, $2, $3), a loose
-- scan of deliveries_object_open (one index descent per object), and
-- returns the first open change of each of the next $4 objects.
WITH RECURSIVE o AS (
	(SELECT webhook, model, object_key, state, id FROM {{deliveries}}
	 WHERE state IN {{open}} AND (webhook, model, object_key) > ($1, $2, $3)
	 ORDER BY webhook, model, object_key, commit_lsn, seq LIMIT 1)
	UNION ALL
	SELECT n.webhook, n.model, n.object_key, n.state, n.id FROM o CROSS JOIN LATERAL (
		SELECT webhook, model, object_key, state, id FROM {{deliveries}} AS d
		WHERE d.state IN {{open}}
		  AND (d.webhook, d.model, d.object_key) > (o.webhook, o.model, o.object_key)
		ORDER BY d.webhook, d.model, d.object_key, d.commit_lsn, d.seq LIMIT 1) AS n
)
SELECT webhook, model, object_key, state, id FROM o LIMIT $4
