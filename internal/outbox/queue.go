package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// PurgeBatch is how many rows one retention DELETE removes.
const PurgeBatch = 1000

// claimTimeoutMargin caps how long before the caller's deadline the server
// cancels a claim (a quarter of the time left, at most this).
const claimTimeoutMargin = 2 * time.Second

// queries are the queue's statements, built once for a schema.
type queries struct {
	claim, outcome, promote, rescue, release string
	releaseUnheld                            string
	purgeDelivered, purgeFailed              string
	heartbeat, deregister, pruneDispatchers  string
	webhooksWithPending                      string
}

func newQueries(t, dispatchers, attempts string) queries {
	return queries{
		// For each webhook ($1) up to its limit ($2) of due pending rows,
		// oldest first, through deliveries_due (webhook, next_attempt_at,
		// id): an ordered index scan that stops after the LIMIT, whatever
		// the backlog and whatever the planner knows of the table. Rows
		// other claims hold are skipped.
		//
		// Each candidate's nearest earlier open change of the same object
		// is looked up with one probe of deliveries_object_open. Without
		// one, the candidate is claimed. With one, the candidate is parked,
		// which takes it out of deliveries_due for good, but only if that
		// earlier row can be share-locked at once: an earlier row whose
		// outcome is being written right now (row locked) may be about to
		// promote its successors, so the candidate is left pending for the
		// next claim rather than parked where nobody would promote it. The
		// share lock makes an outcome that starts later wait until this
		// claim has committed, so that its promotion sees the parked row.
		// SKIP LOCKED everywhere: a claim never waits for a lock.
		//
		// Every row is locked and decided before the first one is
		// updated: the arrays of agg are init plans, computed in full
		// before the UPDATE reads its first row. (Read lazily, a later
		// candidate's share lock would meet a row this very statement
		// already updated, and fail.) The UPDATE finds its rows by
		// primary key: no join order for missing statistics to get wrong.
		// $3 is the lease per webhook in microseconds, $4 the claiming
		// dispatcher.
		claim: `WITH cand AS MATERIALIZED (
	SELECT c.*, w.lease
	FROM unnest($1::text[], $2::int[], $3::bigint[]) AS w(name, lim, lease)
	CROSS JOIN LATERAL (
		SELECT d.id, d.webhook, d.model, d.object_key, d.commit_lsn, d.seq, d.last_attempt_at
		FROM ` + t + ` AS d
		WHERE d.state = 'pending' AND d.webhook = w.name AND d.next_attempt_at <= now()
		ORDER BY d.next_attempt_at, d.id
		LIMIT w.lim
		FOR UPDATE OF d SKIP LOCKED) AS c
), pick AS MATERIALIZED (
	SELECT c.id, c.last_attempt_at AS prev_attempt_at, c.lease, b.id IS NULL AS claim
	FROM cand AS c
	LEFT JOIN LATERAL (
		SELECT p.id FROM ` + t + ` AS p
		WHERE p.webhook = c.webhook AND p.model = c.model AND p.object_key = c.object_key
		  AND p.state IN ('pending', 'parked', 'delivering')
		  AND (p.commit_lsn, p.seq) < (c.commit_lsn, c.seq)
		ORDER BY p.commit_lsn DESC, p.seq DESC
		LIMIT 1) AS b ON true
	LEFT JOIN LATERAL (
		SELECT p.id FROM ` + t + ` AS p
		WHERE p.id = b.id AND p.state IN ('pending', 'parked', 'delivering')
		FOR SHARE OF p SKIP LOCKED) AS l ON true
	WHERE b.id IS NULL OR l.id IS NOT NULL
), agg AS (
	SELECT array_agg(id) AS ids, array_agg(claim) AS claims,
		array_agg(prev_attempt_at) AS prevs, array_agg(lease) AS leases
	FROM pick
)
UPDATE ` + t + ` AS d
SET state = CASE WHEN k.claim THEN 'delivering' ELSE 'parked' END,
	attempts = d.attempts + CASE WHEN k.claim THEN 1 ELSE 0 END,
	locked_until = CASE WHEN k.claim THEN now() + k.lease * interval '1 microsecond' END,
	locked_by = CASE WHEN k.claim THEN $4 END,
	last_attempt_at = CASE WHEN k.claim THEN now() ELSE d.last_attempt_at END
FROM unnest((SELECT ids FROM agg), (SELECT claims FROM agg), (SELECT prevs FROM agg), (SELECT leases FROM agg))
	AS k(id, claim, prev_attempt_at, lease)
WHERE d.id = k.id
RETURNING d.id, d.webhook, k.claim, CASE WHEN k.claim THEN d.body END, d.attempts,
	d.last_attempt_at, k.prev_attempt_at, d.committed_at, d.model`,

		// Writes a batch of outcomes. $1 maps each id to
		// [state, mode, status, error, delay_us, claimed_at, prev_attempt_at,
		// recorded]
		// (see outcomeJSON); rows are found by primary key only. A row is
		// only written while it is still the claim this dispatcher made
		// (locked_by, which only a claim sets, and the claim's
		// last_attempt_at), so a dispatcher whose claim was taken back
		// cannot overwrite a newer one. Mode 1 (released) puts back a row
		// that was not sent: attempts and last_attempt_at go back, the
		// last outcome stays. Mode 2 (probe) records a circuit-breaker
		// probe that failed: its status and error are kept but it does not
		// count as one of the row's attempts.
		//
		// The rows written that were sent (recorded = 1; $4 .. $11,
		// parallel arrays: id, start, duration in microseconds, status,
		// error, response, probe, span id; 0 and '' for NULL) get their
		// attempt recorded, numbered by the row's attempt_seq (counted
		// here, so that numbering reads nothing), and for the rows past
		// AttemptsKept attempts the oldest are deleted (one index range
		// each). An attempt of the same number left by a delivery that
		// had this id before (ids restarted by hand) is overwritten, not
		// an error that would hold the batch up. Rows not written (taken
		// back meanwhile) get no attempt:
		// the outcome that counts is another dispatcher's. It returns how
		// many rows it wrote.
		outcome: `WITH u AS (UPDATE ` + t + ` AS d
SET state = $1::jsonb -> d.id::text ->> 0,
	attempts = d.attempts - CASE WHEN ($1::jsonb -> d.id::text ->> 1) IN ('1', '2') THEN 1 ELSE 0 END,
	next_attempt_at = coalesce(now() + ($1::jsonb -> d.id::text ->> 4)::bigint * interval '1 microsecond',
		d.next_attempt_at),
	delivered_at = CASE WHEN $1::jsonb -> d.id::text ->> 0 = 'delivered' THEN now() ELSE d.delivered_at END,
	last_status = CASE WHEN $1::jsonb -> d.id::text ->> 1 = '1' THEN d.last_status
		ELSE ($1::jsonb -> d.id::text ->> 2)::int END,
	last_error = CASE WHEN $1::jsonb -> d.id::text ->> 1 = '1' THEN d.last_error
		ELSE $1::jsonb -> d.id::text ->> 3 END,
	last_attempt_at = CASE WHEN $1::jsonb -> d.id::text ->> 1 = '1'
		THEN ($1::jsonb -> d.id::text ->> 6)::timestamptz ELSE d.last_attempt_at END,
	attempt_seq = d.attempt_seq + ($1::jsonb -> d.id::text ->> 7)::int,
	locked_until = NULL, locked_by = NULL
WHERE d.id = ANY($2::bigint[]) AND d.locked_by = $3
	AND d.last_attempt_at = ($1::jsonb -> d.id::text ->> 5)::timestamptz
RETURNING d.id, d.attempt_seq
), a AS MATERIALIZED (
	SELECT x.*, u.attempt_seq AS n
	FROM unnest($4::bigint[], $5::timestamptz[], $6::bigint[], $7::int[], $8::text[], $9::text[], $10::bool[], $11::text[])
		AS x(id, started_at, us, status, error, response, probe, span_id)
	JOIN u ON u.id = x.id
), ins AS (
	INSERT INTO ` + attempts + ` (delivery_id, attempt, started_at, duration, status, error, response, probe, span_id)
	SELECT id, n, started_at, us * interval '1 microsecond', nullif(status, 0), nullif(error, ''),
		nullif(response, ''), probe, nullif(span_id, '')
	FROM a
	ON CONFLICT (delivery_id, attempt) DO UPDATE SET started_at = EXCLUDED.started_at, duration = EXCLUDED.duration,
		status = EXCLUDED.status, error = EXCLUDED.error, response = EXCLUDED.response, probe = EXCLUDED.probe,
		span_id = EXCLUDED.span_id
), trim AS (
	DELETE FROM ` + attempts + ` AS p
	USING a
	WHERE a.n > ` + strconv.Itoa(AttemptsKept) + ` AND p.delivery_id = a.id AND p.attempt <= a.n - ` + strconv.Itoa(AttemptsKept) + `
)
SELECT count(*) FROM u`,

		// Runs right after outcome, in its transaction but as a statement
		// of its own: its snapshot is taken after outcome got its row
		// locks, so it sees every row a claim parked behind the finished
		// ones (such a claim holds a share lock on the finished row until
		// it commits). For each finished row, the first open change of its
		// object becomes pending if it is parked.
		promote: `UPDATE ` + t + ` AS d
SET state = 'pending', next_attempt_at = greatest(d.next_attempt_at, now())
WHERE d.id = ANY(ARRAY(
	SELECT (SELECT p.id FROM ` + t + ` AS p
		WHERE p.webhook = f.webhook AND p.model = f.model AND p.object_key = f.object_key
		  AND p.state IN ('pending', 'parked', 'delivering')
		ORDER BY p.commit_lsn, p.seq
		LIMIT 1)
	FROM ` + t + ` AS f
	WHERE f.id = ANY($1::bigint[]) AND f.state IN ('delivered', 'failed')))
  AND d.state = 'parked'`,

		// Rows claimed by a dispatcher that stopped beating ($1: the
		// silence in microseconds after which it counts as dead), or whose
		// lease ran out, go back to pending. Their attempts are kept: the
		// dead dispatcher may well have sent them. Few rows are delivering
		// at any time: deliveries_lease holds exactly them.
		rescue: `UPDATE ` + t + ` AS d
SET state = 'pending', locked_until = NULL, locked_by = NULL
WHERE d.state = 'delivering'
  AND (d.locked_until < now() OR NOT EXISTS (
	SELECT 1 FROM ` + dispatchers + ` AS h
	WHERE h.id = d.locked_by AND h.heartbeat_at > now() - $1::bigint * interval '1 microsecond'))`,

		// Rows claimed by dispatcher $1 that it does not hold ($2: the ids
		// it holds): a claim committed but its answer never reached the
		// dispatcher (the connection died, the server failed over). They
		// were not sent, so the claim's attempt is taken back. The
		// dispatcher runs it with no claim in flight.
		releaseUnheld: `UPDATE ` + t + ` AS d
SET state = 'pending', locked_until = NULL, locked_by = NULL, attempts = greatest(d.attempts - 1, 0)
WHERE d.state = 'delivering' AND d.locked_by = $1 AND d.id <> ALL($2::bigint[])`,

		// A circuit breaker closed: the receiver answers again, so rows
		// waiting for a retry are due now.
		release: `UPDATE ` + t + `
SET next_attempt_at = now()
WHERE webhook = $1 AND state = 'pending' AND next_attempt_at > now()`,

		// The purges delete a batch of old rows and their attempts (by
		// primary key prefix) and return how many rows they deleted.
		purgeDelivered: fmt.Sprintf(purgeSQL, t, attempts,
			"state = 'delivered' AND delivered_at < now() - $1::bigint * interval '1 microsecond'"),
		purgeFailed: fmt.Sprintf(purgeSQL, t, attempts,
			"state = 'failed' AND last_attempt_at < now() - $1::bigint * interval '1 microsecond'"),

		heartbeat: `INSERT INTO ` + dispatchers + ` AS h (id, webhooks) VALUES ($1, $2)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), webhooks = EXCLUDED.webhooks`,
		deregister:       `DELETE FROM ` + dispatchers + ` WHERE id = $1`,
		pruneDispatchers: `DELETE FROM ` + dispatchers + ` WHERE heartbeat_at < now() - interval '1 day'`,

		// The webhooks that have pending rows: a loose index scan of
		// deliveries_due, one probe per webhook, however many rows wait.
		webhooksWithPending: fmt.Sprintf(webhookNamesSQL, t, "state = 'pending'"),
	}
}

// purgeSQL deletes up to PurgeBatch rows of %[1]s matching %[3]s, and
// their attempts in %[2]s, and returns how many rows it deleted.
var purgeSQL = `WITH gone AS (
	DELETE FROM %[1]s
	WHERE id IN (SELECT id FROM %[1]s WHERE %[3]s LIMIT ` + strconv.Itoa(PurgeBatch) + `)
		AND %[3]s
	RETURNING id
), a AS (
	DELETE FROM %[2]s WHERE delivery_id = ANY(ARRAY(SELECT id FROM gone))
)
SELECT count(*) FROM gone`

// ClaimRequest says what one claim takes.
type ClaimRequest struct {
	// By is the claiming dispatcher's id (locked_by).
	By string
	// Webhooks, Limits and Leases are parallel: up to Limits[i] rows of
	// Webhooks[i] are claimed, each for Leases[i].
	Webhooks []string
	Limits   []int32
	Leases   []time.Duration
}

// Claimed is a delivery a claim took.
type Claimed struct {
	ID       int64
	Webhook  string
	Model    string
	Body     []byte
	Attempts int
	// ClaimedAt is the last_attempt_at the claim wrote; it identifies the
	// claim when the outcome is written.
	ClaimedAt time.Time
	// PrevAttemptAt is last_attempt_at before the claim, restored when the
	// row is released unsent.
	PrevAttemptAt pgtype.Timestamptz
	CommittedAt   time.Time
}

// Claim claims due rows for the webhooks of req in one statement. It
// returns the claimed rows and how many rows it parked behind an earlier
// change of their object. Claimed plus parked equal to a webhook's limit
// means more may be due.
//
// When ctx has a deadline, the server cancels the statement a little
// before it (a statement_timeout set for the claim's transaction alone):
// a claim the client gave up on must not commit, or its rows would stay
// delivering, claimed by a dispatcher that never saw them, until their
// lease ends.
func (s *Store) Claim(ctx context.Context, req ClaimRequest) (out []Claimed, parked map[string]int, err error) {
	leases := make([]int64, len(req.Leases))
	for i, l := range req.Leases {
		leases[i] = l.Microseconds()
	}
	b := &pgx.Batch{}
	timeout := false
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		left -= min(left/4, claimTimeoutMargin)
		if left < time.Millisecond {
			return nil, nil, fmt.Errorf("claim: %w", context.DeadlineExceeded)
		}
		// One batch is one implicit transaction: the setting ends with it.
		b.Queue("SELECT set_config('statement_timeout', $1, true)", strconv.FormatInt(left.Milliseconds(), 10))
		timeout = true
	}
	b.Queue(s.q.claim, req.Webhooks, req.Limits, leases, req.By)
	br := s.pool.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); err == nil && cerr != nil {
			out, parked, err = nil, nil, fmt.Errorf("claim: %w", cerr)
		}
	}()
	if timeout {
		if _, err := br.Exec(); err != nil {
			return nil, nil, fmt.Errorf("claim: set statement_timeout: %w", err)
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, nil, fmt.Errorf("claim: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			c       Claimed
			took    bool
			claimed pgtype.Timestamptz
		)
		if err := rows.Scan(&c.ID, &c.Webhook, &took, &c.Body, &c.Attempts, &claimed, &c.PrevAttemptAt, &c.CommittedAt, &c.Model); err != nil {
			return nil, nil, fmt.Errorf("claim: read row: %w", err)
		}
		if !took {
			if parked == nil {
				parked = map[string]int{}
			}
			parked[c.Webhook]++
			continue
		}
		c.ClaimedAt = claimed.Time
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("claim: %w", err)
	}
	return out, parked, nil
}

// OutcomeMode says how an outcome relates to an attempt.
type OutcomeMode int

const (
	// Attempted means the row was sent; State, Status, Err and Delay record it.
	Attempted OutcomeMode = iota
	// Released means the row was not sent; it goes back to pending as it was.
	Released
	// Probed means a circuit-breaker probe failed; Status and Err are recorded
	// but the attempt is not counted against the row's retry budget.
	Probed
)

// Outcome is what became of one claimed row.
type Outcome struct {
	ID            int64
	ClaimedAt     time.Time
	PrevAttemptAt pgtype.Timestamptz
	State         string // StateDelivered, StatePending or StateFailed
	Mode          OutcomeMode
	Status        int           // HTTP status; 0 writes NULL
	Err           string        // last_error; "" writes NULL
	Delay         time.Duration // pending: next_attempt_at = now() + Delay
	// Sent is the HTTP attempt the outcome comes from, recorded in the
	// attempts table; its zero value (a released row) records none.
	Sent SentAttempt
}

// AttemptsKept is how many attempts of a delivery the attempts table keeps:
// recording one more deletes the oldest.
const AttemptsKept = 20

// MaxResponse is how much of a response body an attempt keeps.
const MaxResponse = 4 << 10

// SentAttempt is one HTTP attempt as the attempts table records it. The
// status is the Outcome's.
type SentAttempt struct {
	// Started is when the request started; zero when nothing was sent.
	Started  time.Time
	Duration time.Duration
	// Error says why there was no usable response ("" when the receiver
	// answered): connection, TLS, timeout, an unfollowed redirect.
	Error string
	// Response is the first MaxResponse bytes of the response body, valid
	// UTF-8 without NUL bytes.
	Response string
	// Probe: the attempt probed an open circuit breaker.
	Probe bool
	// SpanID is the parent span id of the attempt's traceparent.
	SpanID string
}

// WriteOutcomes records batch, made by dispatcher by, and makes the next
// parked change of each finished object pending, in one transaction (one
// round trip). It returns how many rows were written: fewer than
// len(batch) when some were taken back from this dispatcher meanwhile.
//
// An outcome of a delivery that a later outcome in batch supersedes (the
// row was taken back and claimed again, by this dispatcher too, while the
// first outcome waited to be written) is left out: only the latest claim
// can still be written, and one statement cannot write a row twice.
func (s *Store) WriteOutcomes(ctx context.Context, by string, batch []Outcome) (int64, error) {
	batch = latestClaims(batch)
	args := outcomeArgs(by, batch)
	b := &pgx.Batch{}
	b.Queue(s.q.outcome, args...)
	b.Queue(s.q.promote, args[1])
	// A batch runs as one implicit transaction.
	br := s.pool.SendBatch(ctx, b)
	var n int64
	err := br.QueryRow().Scan(&n)
	if err == nil {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("write %d outcomes: %w", len(batch), err)
	}
	return n, nil
}

// latestClaims is batch with, for each delivery id, only the outcome of
// its latest claim (the greatest ClaimedAt; the later one in batch on a
// tie). It returns batch itself when every id is distinct.
func latestClaims(batch []Outcome) []Outcome {
	at := make(map[int64]int, len(batch))
	dup := false
	for i := range batch {
		j, ok := at[batch[i].ID]
		if !ok {
			at[batch[i].ID] = i
			continue
		}
		dup = true
		if !batch[i].ClaimedAt.Before(batch[j].ClaimedAt) {
			at[batch[i].ID] = i
		}
	}
	if !dup {
		return batch
	}
	out := make([]Outcome, 0, len(at))
	for i := range batch {
		if at[batch[i].ID] == i {
			out = append(out, batch[i])
		}
	}
	return out
}

// outcomeArgs are the outcome statement's arguments for batch, written by
// dispatcher by.
func outcomeArgs(by string, batch []Outcome) []any {
	ids := make([]int64, len(batch))
	var a attemptArrays
	for i := range batch {
		o := &batch[i]
		ids[i] = o.ID
		if o.recorded() {
			a.add(o)
		}
	}
	return []any{outcomeJSON(batch), ids, by, a.ids, a.started, a.us, a.status, a.errs, a.responses, a.probes, a.spans}
}

// recorded reports whether o records an attempt: it was sent.
func (o *Outcome) recorded() bool { return o.Mode != Released && !o.Sent.Started.IsZero() }

// attemptArrays are the attempts of an outcome batch as the parallel
// arrays the outcome statement reads.
type attemptArrays struct {
	ids, us         []int64
	started         []time.Time
	status          []int32
	errs, responses []string
	probes          []bool
	spans           []string
}

func (a *attemptArrays) add(o *Outcome) {
	a.ids = append(a.ids, o.ID)
	a.started = append(a.started, o.Sent.Started)
	a.us = append(a.us, o.Sent.Duration.Microseconds())
	a.status = append(a.status, int32(o.Status))
	a.errs = append(a.errs, o.Sent.Error)
	a.responses = append(a.responses, o.Sent.Response)
	a.probes = append(a.probes, o.Sent.Probe)
	a.spans = append(a.spans, o.Sent.SpanID)
}

// outcomeJSON encodes batch as the jsonb object the outcome statement
// reads: {"<id>": [state, mode, status, error, delay_us, claimed_at,
// prev_attempt_at, recorded], ...}, with null for absent values and
// recorded 1 when the outcome records an attempt, else 0.
func outcomeJSON(batch []Outcome) string {
	b := make([]byte, 0, 96*len(batch))
	b = append(b, '{')
	for i, r := range batch {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = strconv.AppendInt(b, r.ID, 10)
		b = append(b, `":["`...)
		b = append(b, r.State...)
		b = append(b, `",`...)
		b = strconv.AppendInt(b, int64(r.Mode), 10)
		b = append(b, ',')
		if r.Status != 0 {
			b = strconv.AppendInt(b, int64(r.Status), 10)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, ',')
		if r.Err != "" {
			q, _ := json.Marshal(r.Err)
			b = append(b, q...)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, ',')
		if r.State == StatePending && r.Mode != Released {
			b = strconv.AppendInt(b, r.Delay.Microseconds(), 10)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, ',')
		b = appendTime(b, r.ClaimedAt)
		b = append(b, ',')
		if r.PrevAttemptAt.Valid {
			b = appendTime(b, r.PrevAttemptAt.Time)
		} else {
			b = append(b, "null"...)
		}
		if r.recorded() {
			b = append(b, ",1]"...)
		} else {
			b = append(b, ",0]"...)
		}
	}
	b = append(b, '}')
	return string(b)
}

// appendTime appends t as a quoted timestamp PostgreSQL reads back exactly.
func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, "2006-01-02T15:04:05.999999Z07:00")
	return append(b, '"')
}

// Rescue puts back to pending the rows claimed by dispatchers silent for
// longer than dead, and rows whose lease ran out. It returns how many.
func (s *Store) Rescue(ctx context.Context, dead time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, s.q.rescue, dead.Microseconds())
	if err != nil {
		return 0, fmt.Errorf("rescue: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ReleaseUnheld puts back to pending the rows claimed by dispatcher by
// other than held: claims whose answer was lost. It must not run while a
// claim of that dispatcher is in flight. It returns how many rows.
func (s *Store) ReleaseUnheld(ctx context.Context, by string, held []int64) (int64, error) {
	if held == nil {
		held = []int64{}
	}
	tag, err := s.pool.Exec(ctx, s.q.releaseUnheld, by, held)
	if err != nil {
		return 0, fmt.Errorf("release unheld claims: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ReleaseBackoff makes webhook's rows that wait for a retry due now.
func (s *Store) ReleaseBackoff(ctx context.Context, webhook string) (int64, error) {
	tag, err := s.pool.Exec(ctx, s.q.release, webhook)
	if err != nil {
		return 0, fmt.Errorf("release backoff of %s: %w", webhook, err)
	}
	return tag.RowsAffected(), nil
}

// PurgeDelivered deletes up to PurgeBatch delivered rows older than age,
// with their attempts.
func (s *Store) PurgeDelivered(ctx context.Context, age time.Duration) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, s.q.purgeDelivered, age.Microseconds()).Scan(&n); err != nil {
		return 0, fmt.Errorf("purge delivered rows: %w", err)
	}
	return n, nil
}

// PurgeFailed deletes up to PurgeBatch failed rows whose last attempt is
// older than age, with their attempts.
func (s *Store) PurgeFailed(ctx context.Context, age time.Duration) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, s.q.purgeFailed, age.Microseconds()).Scan(&n); err != nil {
		return 0, fmt.Errorf("purge failed rows: %w", err)
	}
	return n, nil
}

// Heartbeat records that dispatcher id is alive, with its per-webhook
// state (any JSON-encodable value; nil is {}).
func (s *Store) Heartbeat(ctx context.Context, id string, webhooks any) error {
	if webhooks == nil {
		webhooks = map[string]any{}
	}
	js, err := json.Marshal(webhooks)
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	if _, err := s.pool.Exec(ctx, s.q.heartbeat, id, string(js)); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// Deregister removes dispatcher id's heartbeat row (on a clean stop).
func (s *Store) Deregister(ctx context.Context, id string) error {
	if _, err := s.pool.Exec(ctx, s.q.deregister, id); err != nil {
		return fmt.Errorf("deregister dispatcher: %w", err)
	}
	return nil
}

// PruneDispatchers deletes heartbeat rows silent for a day.
func (s *Store) PruneDispatchers(ctx context.Context) error {
	if _, err := s.pool.Exec(ctx, s.q.pruneDispatchers); err != nil {
		return fmt.Errorf("prune dispatchers: %w", err)
	}
	return nil
}

// WebhooksWithPending lists the webhooks that have pending rows.
func (s *Store) WebhooksWithPending(ctx context.Context) ([]string, error) {
	return s.webhookNames(ctx, s.q.webhooksWithPending)
}

// ObjectCursor is where PromoteOrphans resumes: the last object it looked at.
type ObjectCursor struct{ Webhook, Model, Key string }

// orphansSQL walks the open changes object by object from after $1..$3 (a
// loose scan of deliveries_object_open: one index descent per object) and
// returns the first open change of each of the next $4 objects.
const orphansSQL = `WITH RECURSIVE o AS (
	(SELECT webhook, model, object_key, state, id FROM %[1]s
	 WHERE state IN ('pending', 'parked', 'delivering') AND (webhook, model, object_key) > ($1, $2, $3)
	 ORDER BY webhook, model, object_key, commit_lsn, seq LIMIT 1)
	UNION ALL
	SELECT n.webhook, n.model, n.object_key, n.state, n.id FROM o CROSS JOIN LATERAL (
		SELECT webhook, model, object_key, state, id FROM %[1]s AS d
		WHERE d.state IN ('pending', 'parked', 'delivering')
		  AND (d.webhook, d.model, d.object_key) > (o.webhook, o.model, o.object_key)
		ORDER BY d.webhook, d.model, d.object_key, d.commit_lsn, d.seq LIMIT 1) AS n
)
SELECT webhook, model, object_key, state, id FROM o LIMIT $4`

// PromoteOrphans makes pending the parked changes that have no earlier open
// change any more, among the next n objects after c, and returns how many it
// promoted and where to resume (the zero cursor after the last object).
// Promotion normally happens with the predecessor's outcome; this catches
// rows whose predecessor was finished or deleted by hand. A row promoted
// too early is harmless: every claim checks its object again.
func (s *Store) PromoteOrphans(ctx context.Context, c ObjectCursor, n int) (int64, ObjectCursor, error) {
	rows, err := s.pool.Query(ctx, fmt.Sprintf(orphansSQL, s.deliveries), c.Webhook, c.Model, c.Key, n)
	if err != nil {
		return 0, c, fmt.Errorf("look for orphaned parked rows: %w", err)
	}
	var ids []int64
	var next ObjectCursor
	seen := 0
	var st string
	var id int64
	_, err = pgx.ForEachRow(rows, []any{&next.Webhook, &next.Model, &next.Key, &st, &id}, func() error {
		seen++
		if st == StateParked {
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return 0, c, fmt.Errorf("look for orphaned parked rows: %w", err)
	}
	if seen < n {
		next = ObjectCursor{} // the end: start over next time
	}
	if len(ids) == 0 {
		return 0, next, nil
	}
	tag, err := s.pool.Exec(ctx, `UPDATE `+s.deliveries+` SET state = 'pending', next_attempt_at = greatest(next_attempt_at, now())
		WHERE id = ANY($1::bigint[]) AND state = 'parked'`, ids)
	if err != nil {
		return 0, c, fmt.Errorf("promote orphaned parked rows: %w", err)
	}
	return tag.RowsAffected(), next, nil
}
