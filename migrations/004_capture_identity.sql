-- walhook capture identity, version 4. {{schema}} is replaced by the quoted schema name.

-- What a checkpoint belongs to: the source server (IDENTIFY_SYSTEM's system
-- identifier and timeline) and the replication slot's consistent point when
-- walhook created it. A slot created again (failover, restore) or another
-- source makes the stored LSN meaningless: capture then starts at the slot's
-- own position and reports the gap instead of skipping changes.
ALTER TABLE {{schema}}.checkpoints
    ADD COLUMN IF NOT EXISTS system_id text,
    ADD COLUMN IF NOT EXISTS timeline  integer,
    ADD COLUMN IF NOT EXISTS slot_lsn  pg_lsn;

-- Which capture (slot) writes the deliveries of which webhook name. Two
-- configurations capturing into one outbox must not share a webhook name:
-- their rows could collide on (webhook, commit_lsn, seq) and be dropped.
CREATE TABLE IF NOT EXISTS {{schema}}.webhook_owners (
    webhook    text        PRIMARY KEY,
    slot       text        NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE {{schema}}.webhook_owners IS
    'walhook: the replication slot whose capture writes each webhook''s deliveries; a configuration that names another slot''s webhook is refused';
