-- walhook outbox, version 1. {{schema}} is replaced by the quoted schema name.
CREATE TABLE {{schema}}.deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook         text        NOT NULL,
    event           text        NOT NULL CHECK (event IN ('created', 'updated', 'deleted')),
    model           text        NOT NULL,
    object_key      text        NOT NULL,
    commit_lsn      pg_lsn      NOT NULL,
    seq             integer     NOT NULL CHECK (seq >= 0),
    committed_at    timestamptz NOT NULL,
    body            text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivering', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz,
    locked_by       text,
    last_status     integer,
    last_error      text,
    last_attempt_at timestamptz,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deliveries_change_key UNIQUE (webhook, commit_lsn, seq),
    CONSTRAINT deliveries_delivering_lease CHECK (state <> 'delivering' OR locked_until IS NOT NULL),
    CONSTRAINT deliveries_delivered_at CHECK (state <> 'delivered' OR delivered_at IS NOT NULL)
);

COMMENT ON TABLE {{schema}}.deliveries IS
    'walhook outbox: one row per (row change, webhook). Retry failed rows with: UPDATE ... SET state = ''pending'', next_attempt_at = now() WHERE state = ''failed''';

-- Claiming: due pending rows in order.
CREATE INDEX deliveries_due ON {{schema}}.deliveries (next_attempt_at, id) WHERE state = 'pending';
-- Per-object ordering: is an earlier change of the same object still open?
CREATE INDEX deliveries_object_open ON {{schema}}.deliveries (webhook, model, object_key, commit_lsn, seq)
    WHERE state IN ('pending', 'delivering');
-- Rescuing expired leases.
CREATE INDEX deliveries_lease ON {{schema}}.deliveries (locked_until) WHERE state = 'delivering';
-- Retention and listings.
CREATE INDEX deliveries_delivered ON {{schema}}.deliveries (delivered_at) WHERE state = 'delivered';
CREATE INDEX deliveries_failed ON {{schema}}.deliveries (webhook, last_attempt_at) WHERE state = 'failed';

-- Capture progress: the end LSN of the last source transaction whose
-- deliveries are committed, per replication slot.
CREATE TABLE {{schema}}.checkpoints (
    slot       text        PRIMARY KEY,
    lsn        pg_lsn      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
