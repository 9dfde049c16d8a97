-- Rows claimed by a dispatcher that stopped beating ($1: the silence in
-- microseconds after which it counts as dead), or whose lease ran out, go
-- back to pending. Their attempts are kept: the dead dispatcher may well
-- have sent them. Few rows are delivering at any time: deliveries_lease
-- holds exactly them.
UPDATE {{deliveries}} AS d
SET state = 'pending', locked_until = NULL, locked_by = NULL
WHERE d.state = 'delivering'
  AND (d.locked_until < now() OR NOT EXISTS (
	SELECT 1 FROM {{dispatchers}} AS h
	WHERE h.id = d.locked_by AND h.heartbeat_at > now() - $1::bigint * interval '1 microsecond'))
