-- Dispatcher $1 stopped cleanly.
DELETE FROM {{dispatchers}} WHERE id = $1
