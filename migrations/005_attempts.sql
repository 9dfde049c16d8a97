-- walhook attempt history, version 5. {{schema}} is replaced by the quoted schema name.

-- One row per HTTP attempt of a delivery (a circuit-breaker probe included;
-- a claimed row put back unsent is no attempt). attempt numbers the
-- delivery's attempts 1, 2, 3 ... (deliveries.attempt_seq is the last
-- number) and keeps counting when the delivery is retried by hand, unlike deliveries.attempts, which `walhook retry
-- --reset-attempts` resets and which a failed probe does not count. The
-- statement that records an attempt deletes the delivery's attempts older
-- than its last 20, and the retention DELETE of a delivery deletes its
-- attempts: a delivery deleted by hand leaves its attempts behind (delete
-- them by delivery_id). No foreign key: its check on every insert and its
-- trigger on every purged row would slow the outcome and retention
-- statements, which already delete what they must.
CREATE TABLE IF NOT EXISTS {{schema}}.attempts (
    delivery_id bigint      NOT NULL,
    attempt     integer     NOT NULL CHECK (attempt > 0),
    started_at  timestamptz NOT NULL,
    duration    interval    NOT NULL,
    -- The HTTP status; NULL when there was no response.
    status      integer,
    -- Why there was no usable response (connection, TLS, timeout, a
    -- redirect, which is not followed); NULL when the receiver answered.
    error       text,
    -- The first 4 KB of the response body, as valid UTF-8 without NUL
    -- bytes; NULL when empty.
    response    text,
    -- The attempt was a circuit-breaker probe.
    probe       boolean     NOT NULL DEFAULT false,
    -- The span id sent as the parent in the attempt's traceparent header.
    span_id     text,
    PRIMARY KEY (delivery_id, attempt)
);

-- The number of the delivery's last recorded attempt: the statement that
-- records an attempt counts it here (the row is updated anyway), so that
-- numbering an attempt reads nothing.
ALTER TABLE {{schema}}.deliveries ADD COLUMN IF NOT EXISTS attempt_seq integer NOT NULL DEFAULT 0;

COMMENT ON TABLE {{schema}}.attempts IS
    'walhook: the last 20 HTTP attempts of each delivery (when, how long, status, error or the first 4 KB of the response body)';
