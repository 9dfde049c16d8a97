-- Heartbeat rows silent for a day.
DELETE FROM {{dispatchers}} WHERE heartbeat_at < now() - interval '1 day'
