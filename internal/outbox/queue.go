package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// PurgeBatch is how many rows one retention DELETE removes.
const PurgeBatch = 1000

// claimTimeoutMargin caps how long before the caller's deadline the server
// cancels a claim (a quarter of the time left, at most this).
const claimTimeoutMargin = 2 * time.Second

// queries are the queue's statements (sql/*.sql), expanded once for a
// schema.
type queries struct {
	claim, outcome, promote, rescue, releaseUnheld, releaseBackoff string
	purgeDelivered, purgeFailed                                    string
	heartbeat, deregister, pruneDispatchers                        string
	openObjects, promoteOrphans, webhooksWithPending               string
}

func (s *Store) newQueries() queries {
	v := s.statementVars()
	return queries{
		claim:            s.statement("claim", v),
		outcome:          s.statement("outcome", v),
		promote:          s.statement("promote", v),
		rescue:           s.statement("rescue", v),
		releaseUnheld:    s.statement("release_unheld", v),
		releaseBackoff:   s.statement("release_backoff", v),
		purgeDelivered:   s.statement("purge_delivered", v),
		purgeFailed:      s.statement("purge_failed", v),
		heartbeat:        s.statement("heartbeat", v),
		deregister:       s.statement("deregister", v),
		pruneDispatchers: s.statement("prune_dispatchers", v),
		openObjects:      s.statement("open_objects", v),
		promoteOrphans:   s.statement("promote_orphans", v),
		// The webhooks that have pending rows: a loose index scan of
		// deliveries_due, one probe per webhook, however many rows wait.
		webhooksWithPending: fmt.Sprintf(webhookNamesSQL, s.deliveries, "state = 'pending'"),
	}
}

// ClaimRequest says what one claim takes.
type ClaimRequest struct {
	// By is the claiming dispatcher's id (locked_by).
	By string
	// Webhooks, Limits and Leases are parallel: up to Limits[i] rows of
	// Webhooks[i] are claimed, each for Leases[i].
	Webhooks []string
	Limits   []int32
	Leases   []time.Duration
	// Since, when set (parallel to Webhooks), skips the rows of Webhooks[i]
	// due before Since[i]; a zero time skips none. See sql/claim.sql.
	Since []time.Time
}

// ClaimResult is what one claim took.
type ClaimResult struct {
	// Rows are the claimed rows.
	Rows []Claimed
	// Parked counts, per webhook, the rows parked behind an earlier change
	// of their object.
	Parked map[string]int
	// Now is the server's now() for the claim: every row pending and due
	// at Now, committed before the claim started, was seen (claimed,
	// parked, or skipped as locked or past the limit).
	Now time.Time
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

// planSettings, in the transaction of a claim or an outcome, pins the plans
// of its statements. They run their generic plan from the first run:
// PostgreSQL otherwise plans them anew on every run (their custom plans
// look no dearer), which was half of their time (one-row claim 0.62 →
// 0.34 ms, outcome 0.49 → 0.42 ms). A connection keeps its generic plan
// until the table's statistics change, so a plan made while the outbox was
// small must still be right when it has grown: with sequential scans, hash
// and merge joins off, the only plans left are the index-driven nested
// loops the statements are written for, whatever the table's size or
// statistics (TestGenericPlansOfASmallOutboxScaleWithIt,
// TestQueuePlansIgnoreBacklogAndStatistics).
const planSettings = `set_config('plan_cache_mode', 'force_generic_plan', true),
	set_config('enable_seqscan', 'off', true), set_config('enable_hashjoin', 'off', true),
	set_config('enable_mergejoin', 'off', true)`

// Claim claims due rows for the webhooks of req in one statement.
// Claimed plus parked equal to a webhook's limit means more may be due.
//
// When ctx has a deadline, the server cancels the statement a little
// before it (a statement_timeout set for the claim's transaction alone):
// a claim the client gave up on must not commit, or its rows would stay
// delivering, claimed by a dispatcher that never saw them, until their
// lease ends.
//
// The claim commits without waiting for its WAL to be flushed
// (synchronous_commit off for its transaction alone): a claim lost in a
// server crash or a failover to a standby that lacked it leaves its rows as
// they were, pending with their attempts, so they are claimed and sent
// again (at-least-once). WAL is written in order, so a lost claim takes
// every later commit with it: never an outcome, promotion or attempt
// without the claim it belongs to. The wait it saves is on every
// delivery's path (0.65 ms of 1.45 at 1,000 commits/s here).
func (s *Store) Claim(ctx context.Context, req ClaimRequest) (res ClaimResult, err error) {
	leases := make([]int64, len(req.Leases))
	for i, l := range req.Leases {
		leases[i] = l.Microseconds()
	}
	since := req.Since
	if since == nil {
		since = make([]time.Time, len(req.Webhooks))
	}
	sinceArg := make([]pgtype.Timestamptz, len(since))
	for i, t := range since {
		sinceArg[i] = pgtype.Timestamptz{Time: t, Valid: true}
		if t.IsZero() {
			sinceArg[i] = pgtype.Timestamptz{InfinityModifier: pgtype.NegativeInfinity, Valid: true}
		}
	}
	b := &pgx.Batch{}
	// One batch is one implicit transaction: the settings end with it,
	// and now() is the claim's.
	var timeout *string // nil: the session's
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		left -= min(left/4, claimTimeoutMargin)
		if left < time.Millisecond {
			return res, fmt.Errorf("claim: %w", context.DeadlineExceeded)
		}
		ms := strconv.FormatInt(left.Milliseconds(), 10)
		timeout = &ms
	}
	b.Queue(`SELECT set_config('statement_timeout', coalesce($1, current_setting('statement_timeout')), true),
		set_config('synchronous_commit', 'off', true), now()`, timeout)
	b.Queue("SELECT " + planSettings)
	b.Queue(s.q.claim, req.Webhooks, req.Limits, leases, req.By, sinceArg)
	br := s.pool.SendBatch(ctx, b)
	defer func() {
		if cerr := br.Close(); err == nil && cerr != nil {
			res, err = ClaimResult{}, fmt.Errorf("claim: %w", cerr)
		}
	}()
	var timeoutSet, syncSet string
	if err := br.QueryRow().Scan(&timeoutSet, &syncSet, &res.Now); err != nil {
		return res, fmt.Errorf("claim: settings: %w", err)
	}
	if _, err := br.Exec(); err != nil {
		return res, fmt.Errorf("claim: settings: %w", err)
	}
	rows, err := br.Query()
	if err != nil {
		return ClaimResult{}, fmt.Errorf("claim: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			c       Claimed
			took    bool
			claimed pgtype.Timestamptz
		)
		if err := rows.Scan(&c.ID, &c.Webhook, &took, &c.Body, &c.Attempts, &claimed, &c.PrevAttemptAt, &c.CommittedAt, &c.Model); err != nil {
			return ClaimResult{}, fmt.Errorf("claim: read row: %w", err)
		}
		if !took {
			if res.Parked == nil {
				res.Parked = map[string]int{}
			}
			res.Parked[c.Webhook]++
			continue
		}
		c.ClaimedAt = claimed.Time
		res.Rows = append(res.Rows, c)
	}
	if err := rows.Err(); err != nil {
		return ClaimResult{}, fmt.Errorf("claim: %w", err)
	}
	return res, nil
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
	State         State // StateDelivered, StatePending or StateFailed
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
	// A batch runs as one implicit transaction: the setting ends with it.
	b.Queue("SELECT " + planSettings)
	b.Queue(s.q.outcome, args...)
	b.Queue(s.q.promote, args[1])
	br := s.pool.SendBatch(ctx, b)
	_, err := br.Exec()
	var n int64
	if err == nil {
		err = br.QueryRow().Scan(&n)
	}
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

// outcomeArgs are the outcome statement's arguments for batch (ids
// distinct), written by dispatcher by: $1 by, then one array per column of
// sql/outcome.sql's o, ids first.
func outcomeArgs(by string, batch []Outcome) []any {
	n := len(batch)
	var (
		ids, us           = make([]int64, n), make([]int64, n)
		states            = make([]string, n)
		modes, statuses   = make([]int32, n), make([]int32, n)
		errs, attemptErrs = make([]string, n), make([]string, n)
		responses, spans  = make([]string, n), make([]string, n)
		delays            = make([]pgtype.Int8, n)
		claimed, started  = make([]time.Time, n), make([]time.Time, n)
		prevs             = make([]pgtype.Timestamptz, n)
		recorded, probes  = make([]bool, n), make([]bool, n)
	)
	for i := range batch {
		o := &batch[i]
		ids[i], states[i], modes[i], statuses[i], errs[i] = o.ID, string(o.State), int32(o.Mode), int32(o.Status), o.Err
		if o.State == StatePending && o.Mode != Released {
			delays[i] = pgtype.Int8{Int64: o.Delay.Microseconds(), Valid: true}
		}
		claimed[i], prevs[i] = o.ClaimedAt, o.PrevAttemptAt
		if o.recorded() {
			recorded[i] = true
			started[i], us[i] = o.Sent.Started, o.Sent.Duration.Microseconds()
			attemptErrs[i], responses[i], probes[i], spans[i] = o.Sent.Error, o.Sent.Response, o.Sent.Probe, o.Sent.SpanID
		}
	}
	return []any{by, ids, states, modes, statuses, errs, delays, claimed, prevs, recorded,
		started, us, attemptErrs, responses, probes, spans}
}

// recorded reports whether o records an attempt: it was sent.
func (o *Outcome) recorded() bool { return o.Mode != Released && !o.Sent.Started.IsZero() }

// Rescue puts back to pending the rows claimed by dispatchers silent for
// longer than dead, and rows whose lease ran out. It returns how many.
func (s *Store) Rescue(ctx context.Context, dead time.Duration) (int64, error) {
	b := &pgx.Batch{}
	// A batch runs as one implicit transaction: the setting ends with it.
	b.Queue("SELECT " + rescueSettings)
	b.Queue(s.q.rescue, dead.Microseconds())
	br := s.pool.SendBatch(ctx, b)
	_, err := br.Exec()
	var n int64
	if err == nil {
		var tag pgconn.CommandTag
		tag, err = br.Exec()
		n = tag.RowsAffected()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("rescue: %w", err)
	}
	return n, nil
}

// rescueSettings, in a rescue's transaction, has it read deliveries_lease
// with an index scan rather than a bitmap scan. Rows that were delivering
// leave their entries there until VACUUM (120,000 after a burst); a bitmap
// scan visits each one's row on every rescue (6,000 pages every 2 s),
// while an index scan marks the entries of dead rows as it meets them, so
// that the next rescues read the index alone.
const rescueSettings = "set_config('enable_bitmapscan', 'off', true)"

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
	tag, err := s.pool.Exec(ctx, s.q.releaseBackoff, webhook)
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

// PromoteOrphans makes pending the parked changes that have no earlier open
// change any more, among the next n objects after c, and returns how many it
// promoted and where to resume (the zero cursor after the last object).
// Promotion normally happens with the predecessor's outcome; this catches
// rows whose predecessor was finished or deleted by hand. A row promoted
// too early is harmless: every claim checks its object again.
func (s *Store) PromoteOrphans(ctx context.Context, c ObjectCursor, n int) (int64, ObjectCursor, error) {
	rows, err := s.pool.Query(ctx, s.q.openObjects, c.Webhook, c.Model, c.Key, n)
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
		if State(st) == StateParked {
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
	tag, err := s.pool.Exec(ctx, s.q.promoteOrphans, ids)
	if err != nil {
		return 0, c, fmt.Errorf("promote orphaned parked rows: %w", err)
	}
	return tag.RowsAffected(), next, nil
}
