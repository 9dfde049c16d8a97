-- walhook capture checkpoints, version 7. {{schema}} is replaced by the quoted schema name.

-- From this version on capture confirms a position to the slot only once the
-- checkpoint holds it, idle positions (keepalives) included. A slot found at a
-- position past such a checkpoint skipped changes (dropped and created again,
-- a failover to a server without a synced copy of the slot): capture reports
-- the gap. A checkpoint written by an older walhook may lag its slot by idle
-- WAL, so the comparison waits until this version has written it once.
ALTER TABLE {{schema}}.checkpoints
    ADD COLUMN IF NOT EXISTS covers_confirmed boolean NOT NULL DEFAULT false;
