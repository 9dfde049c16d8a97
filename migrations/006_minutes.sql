-- walhook delivery charts, version 6. {{schema}} is replaced by the quoted schema name.

-- Per webhook and minute: the attempts dispatchers made, by outcome (as in
-- walhook_delivery_attempts_total: delivered, retry, failed), and the
-- backlog (deliveries not finished: pending, parked or delivering) sampled
-- once in the minute. The status page draws its last-hour charts from it.
--
-- Dispatchers count attempts in memory and add them here every few seconds
-- (INSERT ... ON CONFLICT DO UPDATE adding the counts, so several
-- dispatchers sum); the first dispatcher to reach a new minute samples the
-- backlog. Rows older than two hours are deleted. A minute without a row had
-- no attempt; a NULL backlog was not sampled (no dispatcher ran).
--
-- The primary key starts with the minute: the page's read of the last hour
-- and the trim are range scans of it, whatever the number of webhooks and
-- whether or not the table was ever analyzed. Rows are updated in place a
-- few times a minute: a low fillfactor keeps those updates HOT.
CREATE TABLE IF NOT EXISTS {{schema}}.minutes (
    minute    timestamptz NOT NULL,
    webhook   text        NOT NULL,
    delivered bigint      NOT NULL DEFAULT 0,
    retried   bigint      NOT NULL DEFAULT 0,
    failed    bigint      NOT NULL DEFAULT 0,
    backlog   bigint,
    PRIMARY KEY (minute, webhook)
) WITH (fillfactor = 50);

COMMENT ON TABLE {{schema}}.minutes IS
    'walhook: delivery attempts per webhook and minute (delivered, retried, failed) and the sampled backlog, for the status page charts; kept two hours';
