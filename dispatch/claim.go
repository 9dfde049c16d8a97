package dispatch

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// statements are the Dispatcher's SQL, built once for its schema.
type statements struct {
	claim, outcome, rescue, purge, unknown string
}

func newStatements(table string) statements {
	return statements{
		// Due rows of served webhooks whose object has no earlier open
		// change (deliveries_object_open), oldest first; rows other
		// senders hold are skipped. $3 is the lease in microseconds.
		//
		// The UPDATE finds its rows by primary key only and the previous
		// last_attempt_at comes from a jsonb map (a binary search): a join
		// here would let stale statistics pick a nested loop that is
		// quadratic in the batch, or a scan of the whole outbox.
		claim: `WITH due AS (
	SELECT d.id, d.last_attempt_at AS prev_attempt_at
	FROM ` + table + ` AS d
	WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND d.webhook = ANY($1::text[])
	  AND NOT EXISTS (
		SELECT 1 FROM ` + table + ` AS e
		WHERE e.webhook = d.webhook AND e.model = d.model AND e.object_key = d.object_key
		  AND e.state IN ('pending', 'delivering')
		  AND (e.commit_lsn, e.seq) < (d.commit_lsn, d.seq))
	ORDER BY d.next_attempt_at, d.id
	LIMIT $2
	FOR UPDATE OF d SKIP LOCKED
), prev AS (
	SELECT jsonb_object_agg(id::text, prev_attempt_at) AS m FROM due
)
UPDATE ` + table + ` AS d
SET state = 'delivering', attempts = d.attempts + 1,
	locked_until = now() + $3::bigint * interval '1 microsecond', locked_by = $4, last_attempt_at = now()
WHERE d.id = ANY(ARRAY(SELECT id FROM due))
RETURNING d.id, d.webhook, d.body, d.attempts, d.last_attempt_at,
	((SELECT m FROM prev) ->> d.id::text)::timestamptz, d.committed_at`,

		// Writes a batch of outcomes. $1 maps each id to
		// [state, undo, status, error, delay_us, claimed_at, prev_attempt_at]
		// (see outcomeJSON); rows are found by primary key only, for the
		// same reason as in claim. A row is only written while it is
		// still the claim this sender made (locked_by, which only a claim
		// sets, and the claim's last_attempt_at), so a sender whose lease
		// ran out cannot overwrite a newer claim. undo=1 releases an
		// unsent row: no attempt happened, so attempts and
		// last_attempt_at go back.
		outcome: `UPDATE ` + table + ` AS d
SET state = $1::jsonb -> d.id::text ->> 0,
	attempts = d.attempts - ($1::jsonb -> d.id::text ->> 1)::int,
	next_attempt_at = coalesce(now() + ($1::jsonb -> d.id::text ->> 4)::bigint * interval '1 microsecond',
		d.next_attempt_at),
	delivered_at = CASE WHEN $1::jsonb -> d.id::text ->> 0 = 'delivered' THEN now() ELSE d.delivered_at END,
	last_status = CASE WHEN $1::jsonb -> d.id::text ->> 1 = '1' THEN d.last_status
		ELSE ($1::jsonb -> d.id::text ->> 2)::int END,
	last_error = CASE WHEN $1::jsonb -> d.id::text ->> 1 = '1' THEN d.last_error
		ELSE $1::jsonb -> d.id::text ->> 3 END,
	last_attempt_at = CASE WHEN $1::jsonb -> d.id::text ->> 1 = '1'
		THEN ($1::jsonb -> d.id::text ->> 6)::timestamptz ELSE d.last_attempt_at END,
	locked_until = NULL, locked_by = NULL
WHERE d.id = ANY($2::bigint[]) AND d.locked_by = $3
	AND d.last_attempt_at = ($1::jsonb -> d.id::text ->> 5)::timestamptz`,

		rescue: `UPDATE ` + table + `
SET state = 'pending', locked_until = NULL, locked_by = NULL
WHERE state = 'delivering' AND locked_until < now()`,

		purge: `DELETE FROM ` + table + `
WHERE id IN (SELECT id FROM ` + table + `
		WHERE state = 'delivered' AND delivered_at < now() - $1::bigint * interval '1 microsecond'
		LIMIT ` + fmt.Sprint(retentionBatch) + `)
	AND state = 'delivered' AND delivered_at < now() - $1::bigint * interval '1 microsecond'`,

		unknown: `SELECT webhook, count(*) FROM ` + table + `
WHERE state = 'pending' AND NOT (webhook = ANY($1::text[]))
GROUP BY webhook ORDER BY webhook`,
	}
}

// job is one claimed delivery.
type job struct {
	id       int64
	hook     *hook
	body     []byte
	attempts int
	// claimedAt is the last_attempt_at the claim wrote; it identifies the
	// claim when the outcome is written.
	claimedAt time.Time
	// prevAttemptAt is last_attempt_at before the claim, restored when the
	// row is released unsent.
	prevAttemptAt pgtype.Timestamptz
	// committedAt is the commit time of the change (for the Observer).
	committedAt time.Time
	// deadline is the local (monotonic) time after which the row must not
	// be sent any more: the request could outlive the lease.
	deadline time.Time
}

// claimLoop claims deliveries into jobs until ctx is done. It claims when
// woken (NOTIFY, rows rescued), on every poll, and again at once after a
// full batch, as long as request slots are free; after outcomes are written
// it claims once no claim is running. Up to
// claimsInFlight claims run at once, so that sending never waits for a
// claim's round trip; each reserves its slots before it starts.
func (d *Dispatcher) claimLoop(ctx, hard context.Context, jobs chan<- *job) {
	type claimed struct {
		n, limit int
		err      error
	}
	done := make(chan claimed, claimsInFlight)
	inFlight := 0
	defer func() {
		// jobs is closed after we return: wait for running claims.
		for ; inFlight > 0; inFlight-- {
			<-done
		}
	}()
	poll := time.NewTimer(0)
	defer poll.Stop()
	var retry <-chan time.Time
	failures := 0
	want := true
	// wantClosed: outcomes were written since the last claim started. A
	// claim that starts later sees them, whatever started it; one for
	// them alone waits until no claim runs, so that it never takes the
	// slot a claim for newly enqueued rows needs.
	wantClosed := false
	for ctx.Err() == nil {
		if (want || (wantClosed && inFlight == 0)) && retry == nil && inFlight < claimsInFlight && len(d.hookNames) > 0 {
			if limit := d.claimLimit(); limit > 0 {
				d.held.Add(int64(limit))
				d.unwritten.Add(int64(limit))
				inFlight++
				want, wantClosed = false, false
				go func() {
					n, err := d.claim(hard, limit, jobs)
					done <- claimed{n, limit, err}
				}()
				continue
			}
		}
		select {
		case <-ctx.Done():
		case c := <-done:
			inFlight--
			if c.err != nil {
				failures++
				delay := d.retryDelay(failures)
				d.log.Warn().Err(c.err).Dur("retry_in", delay).Msg("claiming deliveries failed")
				retry = time.After(delay)
				want = true
				continue
			}
			failures = 0
			// A full batch suggests more is due.
			want = want || c.n == c.limit
		case <-d.wake:
			want = true
		case <-d.closed:
			wantClosed = true
		case <-poll.C:
			want = true
			poll.Reset(jitter(d.poll, d.rand()))
		case <-d.freed:
		case <-retry:
			retry = nil
		}
	}
}

// jitter spreads d by ±10%.
func jitter(d time.Duration, r float64) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*r))
}

// claimLimit is how many rows to claim now; 0 means wait for free slots.
// Rows of running claims count as held.
// While enough rows are queued to keep every slot busy, it waits until half
// of the local queue is free, so claims stay large.
func (d *Dispatcher) claimLimit() int {
	held := int(d.held.Load())
	free := d.maxHeld - held
	if free <= 0 || int(d.unwritten.Load()) >= d.maxUnwritten {
		return 0
	}
	if free < d.maxHeld/2 && held >= d.concurrency {
		return 0
	}
	// Each claim takes at most its share of the queue, so that another
	// can start while it runs: otherwise one claim's reservation (nearly
	// the whole queue) keeps every other claim waiting for its round trip,
	// even when it finds only a row or two, and claims are serialised.
	return min(free, maxClaimBatch, max(d.maxHeld/claimsInFlight, 1))
}

// claim claims up to limit due rows with one statement and queues them. The
// caller has counted limit rows as held and unwritten; claim gives back what
// it did not claim. Rows are queued only once the statement has completed:
// the server sends RETURNING rows before its implicit transaction commits,
// and an outcome written before that commit would not see the claim.
func (d *Dispatcher) claim(ctx context.Context, limit int, jobs chan<- *job) (n int, err error) {
	defer func() {
		d.held.Add(int64(n - limit))
		d.unwritten.Add(int64(n - limit))
	}()
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	start := time.Now()
	rows, err := d.pool.Query(ctx, d.sql.claim, d.hookNames, limit, d.lease.Microseconds(), d.id)
	if err != nil {
		return 0, fmt.Errorf("claim: %w", err)
	}
	claimed := make([]job, 0, min(limit, 64))
	var name string
	for rows.Next() {
		var j job
		if err := rows.Scan(&j.id, &name, &j.body, &j.attempts, &j.claimedAt, &j.prevAttemptAt, &j.committedAt); err != nil {
			rows.Close()
			return 0, fmt.Errorf("claim: read row: %w", err)
		}
		h, ok := d.hooks[name]
		if !ok {
			// Impossible: the statement only claims served webhooks.
			rows.Close()
			return 0, fmt.Errorf("claim: row %d names unknown webhook %q", j.id, name)
		}
		j.hook = h
		j.deadline = start.Add(d.lease - h.timeout - leaseSafety)
		claimed = append(claimed, j)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		// Whatever the statement did is rolled back or, at worst, returns
		// to pending when its lease expires.
		return 0, fmt.Errorf("claim: %w", err)
	}
	for i := range claimed {
		jobs <- &claimed[i] // never blocks: jobs holds maxHeld and held <= maxHeld
	}
	if len(claimed) > 0 {
		d.log.Debug().Int("claimed", len(claimed)).Msg("claimed deliveries")
	}
	return len(claimed), nil
}

// maintain takes back expired leases and deletes old delivered rows.
func (d *Dispatcher) maintain(ctx context.Context) {
	d.warnUnserved(ctx)
	rescue := time.NewTimer(0)
	defer rescue.Stop()
	purge := time.NewTimer(0)
	defer purge.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-rescue.C:
			d.rescue(ctx)
			rescue.Reset(jitter(d.rescueEvery, d.rand()))
		case <-purge.C:
			d.purge(ctx)
			purge.Reset(jitter(retentionEvery, d.rand()))
		}
	}
}

// rescue puts rows whose lease expired back to pending. Their attempts are
// kept: the crashed sender may well have sent them.
func (d *Dispatcher) rescue(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	tag, err := d.pool.Exec(ctx, d.sql.rescue)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn().Err(err).Msg("rescuing expired leases failed")
		}
		return
	}
	if n := tag.RowsAffected(); n > 0 {
		d.log.Warn().Int64("rows", n).Msg("took back deliveries whose lease expired")
		signal(d.wake)
	}
}

// purge deletes delivered rows older than the retention, a batch at a time.
func (d *Dispatcher) purge(ctx context.Context) {
	if d.retention <= 0 {
		return
	}
	var total int64
	for ctx.Err() == nil {
		qctx, cancel := context.WithTimeout(ctx, dbTimeout)
		tag, err := d.pool.Exec(qctx, d.sql.purge, d.retention.Microseconds())
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn().Err(err).Msg("deleting old delivered rows failed")
			}
			break
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < retentionBatch {
			break
		}
	}
	if total > 0 {
		d.log.Info().Int64("rows", total).Dur("retention", d.retention).Msg("deleted old delivered rows")
	}
}

// warnUnserved logs pending rows of webhooks this Dispatcher does not serve.
func (d *Dispatcher) warnUnserved(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	rows, err := d.pool.Query(ctx, d.sql.unknown, d.hookNames)
	if err != nil {
		return
	}
	var name string
	var n int64
	_, _ = pgx.ForEachRow(rows, []any{&name, &n}, func() error {
		d.log.Warn().Str("webhook", name).Int64("rows", n).
			Msg("pending deliveries for a webhook that is not configured or is disabled are not sent")
		return nil
	})
}

// listen wakes the claimer on every NOTIFY on the outbox channel. It keeps a
// connection of its own and reconnects with backoff; polling goes on
// meanwhile.
func (d *Dispatcher) listen(ctx context.Context) {
	failures := 0
	for {
		listened, err := d.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if listened {
			failures = 0
		}
		failures++
		delay := d.retryDelay(failures)
		d.log.Warn().Err(err).Dur("retry_in", delay).Msg("LISTEN connection lost; polling meanwhile")
		if !sleep(ctx, delay) {
			return
		}
	}
}

func (d *Dispatcher) listenOnce(ctx context.Context) (listened bool, err error) {
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("listen: acquire connection: %w", err)
	}
	// The connection leaves the pool: it carries a LISTEN and is closed
	// when done, and the pool may open another in its place.
	conn := c.Hijack()
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{d.channel}.Sanitize()); err != nil {
		return false, fmt.Errorf("listen: %w", err)
	}
	signal(d.wake) // catch up with anything enqueued while not listening
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return true, fmt.Errorf("listen: wait for notification: %w", err)
		}
		signal(d.wake)
	}
}
