-- Dispatcher $1 is alive; $2 is its per-webhook state (jsonb).
INSERT INTO {{dispatchers}} AS h (id, webhooks) VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), webhooks = EXCLUDED.webhooks
