-- walhook outbox, version 3: a queue whose claims cost the same whatever the
-- backlog, the rows blocked behind a retrying change, or the table's
-- statistics. {{schema}} is replaced by the quoted schema name.

-- 'parked': a change that waits for an earlier change of the same object
-- (same webhook, model and object_key) to be delivered or to fail. A claim
-- that meets such a row parks it, which takes it out of the due index; the
-- transaction that records its predecessor's outcome makes the earliest
-- parked row of the object pending again. The retry statement of the
-- contract (UPDATE ... SET state = 'pending' WHERE state = 'failed') keeps
-- working: a pending row is always checked against its object before it is
-- sent.
ALTER TABLE {{schema}}.deliveries DROP CONSTRAINT IF EXISTS deliveries_state_check;
ALTER TABLE {{schema}}.deliveries ADD CONSTRAINT deliveries_state_check
    CHECK (state IN ('pending', 'parked', 'delivering', 'delivered', 'failed'));

-- Claims run per webhook: an ordered scan of this index with a LIMIT reads
-- the rows it returns and stops, however many rows are queued and whatever
-- the planner knows of the table.
DROP INDEX IF EXISTS {{schema}}.deliveries_due;
CREATE INDEX deliveries_due ON {{schema}}.deliveries (webhook, next_attempt_at, id) WHERE state = 'pending';

-- An object's open changes in commit order: the claim looks up the nearest
-- earlier open change of a candidate (one index probe), the outcome the
-- earliest parked change of a finished one.
DROP INDEX IF EXISTS {{schema}}.deliveries_object_open;
CREATE INDEX deliveries_object_open ON {{schema}}.deliveries (webhook, model, object_key, commit_lsn, seq)
    WHERE state IN ('pending', 'parked', 'delivering');

-- Retention of failed rows (dispatch.failed_retention).
CREATE INDEX deliveries_failed_at ON {{schema}}.deliveries (last_attempt_at) WHERE state = 'failed';

-- A queue table: every row is inserted, updated two to four times and
-- deleted. Vacuum it after 2% of its rows changed rather than the default
-- 20% (dead index entries slow the index scans of claims), and analyze it as
-- often, although no statement of walhook depends on its statistics.
ALTER TABLE {{schema}}.deliveries SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02
);

-- One row per running dispatcher, its heartbeat refreshed every second. A
-- row in 'delivering' whose dispatcher has not beaten for a few seconds is
-- taken back at once (a killed process's rows go out again within 10 s),
-- while a live dispatcher keeps its claim however slow its receiver.
-- webhooks holds the dispatcher's circuit-breaker state per webhook (for
-- walhook status and the status page). Updated in place every second: a
-- low fillfactor keeps those updates HOT.
CREATE TABLE {{schema}}.dispatchers (
    id           text        PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    webhooks     jsonb       NOT NULL DEFAULT '{}'
) WITH (fillfactor = 50);

COMMENT ON TABLE {{schema}}.dispatchers IS
    'walhook dispatchers: heartbeat_at is refreshed every second; rows claimed by a dispatcher silent for 5 s are sent again';

-- The capture checkpoint is updated in place by every outbox transaction.
ALTER TABLE {{schema}}.checkpoints SET (fillfactor = 50);
