-- walhook backfill progress, version 2. {{schema}} is replaced by the quoted schema name.

-- One row per backfill: a model, the webhook filter ('' = every matching
-- webhook), the event sent and the --where filter. last_key is the primary
-- key (as text) of the last row enqueued; an interrupted run resumes after it.
CREATE TABLE {{schema}}.backfills (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model       text        NOT NULL,
    webhook     text        NOT NULL DEFAULT '',
    event       text        NOT NULL CHECK (event IN ('created', 'updated')),
    where_sql   text        NOT NULL DEFAULT '',
    last_key    text[],
    rows_done   bigint      NOT NULL DEFAULT 0,
    deliveries  bigint      NOT NULL DEFAULT 0,
    rows_total  bigint,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CONSTRAINT backfills_key UNIQUE (model, webhook, event, where_sql)
);

COMMENT ON TABLE {{schema}}.backfills IS
    'walhook backfill progress: rows_done of rows_total (an estimate), resumes after last_key; finished_at set when done';

-- Backfill rows use a negative seq: they sort before the changes of a source
-- transaction whose commit record starts at the backfill page's LSN, and can
-- never collide with them (capture numbers changes from 0).
ALTER TABLE {{schema}}.deliveries DROP CONSTRAINT IF EXISTS deliveries_seq_check;
COMMENT ON COLUMN {{schema}}.deliveries.seq IS
    'position of the change in its transaction (from 0); negative for rows enqueued by walhook backfill';
