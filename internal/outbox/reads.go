package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
)

// ErrNotFound is returned by Get for a delivery that does not exist.
var ErrNotFound = errors.New("delivery not found")

// Delivery is one outbox row, as `walhook deliveries` and the status page
// show it. Body is read by Get only.
type Delivery struct {
	ID            int64      `json:"id"`
	Webhook       string     `json:"webhook"`
	Event         string     `json:"event"`
	Model         string     `json:"model"`
	ObjectKey     string     `json:"object_key"`
	CommitLSN     string     `json:"commit_lsn"`
	Seq           int32      `json:"seq"`
	CommittedAt   time.Time  `json:"committed_at"`
	State         State      `json:"state"`
	Attempts      int32      `json:"attempts"`
	NextAttemptAt time.Time  `json:"next_attempt_at"`
	LockedUntil   *time.Time `json:"locked_until"`
	LockedBy      *string    `json:"locked_by"`
	LastStatus    *int32     `json:"last_status"`
	LastError     *string    `json:"last_error"`
	LastAttemptAt *time.Time `json:"last_attempt_at"`
	DeliveredAt   *time.Time `json:"delivered_at"`
	CreatedAt     time.Time  `json:"created_at"`
	Body          *string    `json:"body,omitempty"`
	// DBNow is the database's clock when the row was read, for ages.
	DBNow time.Time `json:"-"`
}

const deliveryColumns = `id, webhook, event, model, object_key, commit_lsn::text, seq, committed_at, state, attempts,
	next_attempt_at, locked_until, locked_by, last_status, last_error, last_attempt_at, delivered_at, created_at, now()`

func (d *Delivery) scanArgs() []any {
	return []any{&d.ID, &d.Webhook, &d.Event, &d.Model, &d.ObjectKey, &d.CommitLSN, &d.Seq, &d.CommittedAt, &d.State, &d.Attempts,
		&d.NextAttemptAt, &d.LockedUntil, &d.LockedBy, &d.LastStatus, &d.LastError, &d.LastAttemptAt, &d.DeliveredAt, &d.CreatedAt, &d.DBNow}
}

// utc puts every timestamp in UTC (pgx returns local times).
func (d *Delivery) utc() {
	for _, t := range []*time.Time{&d.CommittedAt, &d.NextAttemptAt, &d.CreatedAt} {
		*t = t.UTC()
	}
	for _, t := range []**time.Time{&d.LockedUntil, &d.LastAttemptAt, &d.DeliveredAt} {
		if *t != nil {
			u := (*t).UTC()
			*t = &u
		}
	}
}

// ListFilter selects deliveries for List. Empty fields select everything.
type ListFilter struct {
	State          State
	Webhook, Model string
	// After and Before page by id: rows with a larger id (oldest first),
	// or a smaller one (newest first, the default order).
	After, Before int64
	// Limit is the page size (required).
	Limit int
}

// List reads a page of deliveries, newest first, and says whether there are
// further rows in the paging direction. A state outside States is an error.
func (s *Store) List(ctx context.Context, f ListFilter) (rows []Delivery, more bool, err error) {
	if f.Limit <= 0 {
		return nil, false, errors.New("list deliveries: limit must be positive")
	}
	var where []string
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if f.State != "" {
		if !slices.Contains(States, f.State) {
			return nil, false, fmt.Errorf("list deliveries: unknown state %q (%s)", f.State, StateList())
		}
		// A literal from the fixed list, so that the planner can use the
		// partial index of that state.
		where = append(where, "state = '"+string(f.State)+"'")
	}
	if f.Webhook != "" {
		where = append(where, "webhook = "+arg(f.Webhook))
	}
	if f.Model != "" {
		where = append(where, "model = "+arg(f.Model))
	}
	order := "id DESC"
	switch {
	case f.After > 0:
		where = append(where, "id > "+arg(f.After))
		order = "id ASC"
	case f.Before > 0:
		where = append(where, "id < "+arg(f.Before))
	}
	q := "SELECT " + deliveryColumns + " FROM " + s.deliveries
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY " + order + " LIMIT " + arg(f.Limit+1)
	res, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, false, fmt.Errorf("list deliveries: %w", err)
	}
	var d Delivery
	_, err = pgx.ForEachRow(res, d.scanArgs(), func() error {
		d.utc()
		rows = append(rows, d)
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("list deliveries: %w", err)
	}
	if len(rows) > f.Limit {
		rows, more = rows[:f.Limit], true
	}
	if f.After > 0 {
		slices.Reverse(rows)
	}
	return rows, more, nil
}

// Get reads one delivery with its body; ErrNotFound when there is none.
func (s *Store) Get(ctx context.Context, id int64) (*Delivery, error) {
	d := &Delivery{Body: new(string)}
	err := s.pool.QueryRow(ctx, "SELECT "+deliveryColumns+", body FROM "+s.deliveries+" WHERE id = $1", id).
		Scan(append(d.scanArgs(), d.Body)...)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("delivery %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read delivery %d: %w", id, err)
	}
	d.utc()
	return d, nil
}

// Exists reports whether the outbox's deliveries table exists.
func (s *Store) Exists(ctx context.Context) (bool, error) {
	var reg *string
	if err := s.pool.QueryRow(ctx, "SELECT to_regclass($1)::text", s.deliveries).Scan(&reg); err != nil {
		return false, fmt.Errorf("look up %s: %w", s.deliveries, err)
	}
	return reg != nil, nil
}

// Counts are a webhook's deliveries by state.
type Counts struct {
	// Pending counts the rows waiting to be sent, parked ones included.
	Pending int64 `json:"pending"`
	// Parked counts the pending rows that wait for an earlier change of
	// their object.
	Parked     int64 `json:"parked"`
	Delivering int64 `json:"delivering"`
	Delivered  int64 `json:"delivered"`
	Failed     int64 `json:"failed"`
	// OldestPendingAge is the age (commit to now) of the oldest change
	// not sent yet; nil when none waits.
	OldestPendingAge *time.Duration `json:"-"`
}

// statusQueries are the reads of `walhook status`. Each goes through a
// partial index of its state (or the unique key), never through the whole
// table: an outbox of millions of delivered rows answers as fast as a small
// one (TestStatusReadsUseIndexes).
var statusQueries = struct {
	pending, parked, delivering, delivered, failed, oldest string
}{
	pending:    `SELECT webhook, count(*) FROM %[1]s WHERE state = 'pending' GROUP BY webhook`,
	parked:     `SELECT webhook, count(*) FROM %[1]s WHERE state = 'parked' GROUP BY webhook`,
	delivering: `SELECT webhook, count(*) FROM %[1]s WHERE state = 'delivering' GROUP BY webhook`,
	delivered:  `SELECT webhook, count(*) FROM %[1]s WHERE state = 'delivered' GROUP BY webhook`,
	failed:     `SELECT webhook, count(*) FROM %[1]s WHERE state = 'failed' GROUP BY webhook`,
	// The oldest open change of each webhook: the smallest commit LSN of
	// deliveries_object_open, its commit time from the unique key.
	oldest: `SELECT o.webhook, extract(epoch FROM now() - (
		SELECT min(x.committed_at) FROM %[1]s AS x WHERE x.webhook = o.webhook AND x.commit_lsn = o.lsn))::float8
FROM (SELECT webhook, min(commit_lsn) AS lsn FROM %[1]s WHERE state IN ` + openStatesSQL + ` GROUP BY webhook) AS o`,
}

// countQuery is one per-state count and where it adds up.
type countQuery struct {
	sql string
	add func(*Counts, int64)
}

var (
	countPending    = countQuery{statusQueries.pending, func(c *Counts, n int64) { c.Pending += n }}
	countParked     = countQuery{statusQueries.parked, func(c *Counts, n int64) { c.Pending += n; c.Parked += n }}
	countDelivering = countQuery{statusQueries.delivering, func(c *Counts, n int64) { c.Delivering += n }}
	countDelivered  = countQuery{statusQueries.delivered, func(c *Counts, n int64) { c.Delivered += n }}
	countFailed     = countQuery{statusQueries.failed, func(c *Counts, n int64) { c.Failed += n }}
)

// CountAll counts every webhook's deliveries by state, delivered ones
// included (for `walhook status`), through the partial index of each state.
func (s *Store) CountAll(ctx context.Context) (map[string]*Counts, error) {
	return s.count(ctx, countPending, countParked, countDelivering, countDelivered, countFailed)
}

// CountOpen counts the rows not finished yet and the failed ones, per
// webhook, leaving out the delivered rows, the bulk of the table (for the
// status page and /metrics).
func (s *Store) CountOpen(ctx context.Context) (map[string]*Counts, error) {
	return s.count(ctx, countPending, countParked, countDelivering, countFailed)
}

// count runs qs and the oldest open change's age in one round trip.
func (s *Store) count(ctx context.Context, qs ...countQuery) (map[string]*Counts, error) {
	out := map[string]*Counts{}
	get := func(name string) *Counts {
		c, ok := out[name]
		if !ok {
			c = &Counts{}
			out[name] = c
		}
		return c
	}
	var b pgx.Batch
	for _, q := range qs {
		b.Queue(fmt.Sprintf(q.sql, s.deliveries)).Query(func(rows pgx.Rows) error {
			var name string
			var n int64
			_, err := pgx.ForEachRow(rows, []any{&name, &n}, func() error {
				q.add(get(name), n)
				return nil
			})
			return err
		})
	}
	b.Queue(fmt.Sprintf(statusQueries.oldest, s.deliveries)).Query(func(rows pgx.Rows) error {
		var name string
		var age *float64
		_, err := pgx.ForEachRow(rows, []any{&name, &age}, func() error {
			if age != nil {
				d := time.Duration(*age * float64(time.Second))
				get(name).OldestPendingAge = &d
			}
			return nil
		})
		return err
	})
	if err := s.pool.SendBatch(ctx, &b).Close(); err != nil {
		return nil, fmt.Errorf("count deliveries: %w", err)
	}
	return out, nil
}

// LastError is the most recent failed attempt of a webhook.
type LastError struct {
	DeliveryID int64      `json:"delivery_id"`
	State      State      `json:"state"`
	Status     *int32     `json:"status"`
	Error      string     `json:"error"`
	At         *time.Time `json:"at"`
}

// lastErrorsSQL finds, per webhook ($1), its most recent failed row
// (deliveries_failed, newest first) and its row waiting longest for a retry
// (deliveries_due, the latest next_attempt_at: the latest failed attempt
// with the longest backoff), and keeps the newer of the two: one index step
// each, however large the outbox.
const lastErrorsSQL = `SELECT w.name, e.id, e.state, e.last_status, e.last_error, e.last_attempt_at
FROM unnest($1::text[]) AS w(name)
CROSS JOIN LATERAL (
	SELECT * FROM (
		(SELECT id, state, last_status, last_error, last_attempt_at FROM %[1]s
			WHERE state = 'failed' AND webhook = w.name ORDER BY last_attempt_at DESC LIMIT 1)
		UNION ALL
		(SELECT id, state, last_status, last_error, last_attempt_at FROM %[1]s
			WHERE state = 'pending' AND webhook = w.name AND next_attempt_at > now() AND last_error IS NOT NULL
			ORDER BY next_attempt_at DESC, id DESC LIMIT 1)
	) AS c ORDER BY last_attempt_at DESC NULLS LAST LIMIT 1) AS e`

// LastErrors returns the most recent error of each of the named webhooks:
// its newest failed row, or a newer row waiting for a retry (for `walhook
// status`).
func (s *Store) LastErrors(ctx context.Context, names []string) (map[string]*LastError, error) {
	out := map[string]*LastError{}
	if len(names) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, fmt.Sprintf(lastErrorsSQL, s.deliveries), names)
	if err != nil {
		return nil, fmt.Errorf("read last errors: %w", err)
	}
	var name string
	var le LastError
	var msg pgtype.Text
	_, err = pgx.ForEachRow(rows, []any{&name, &le.DeliveryID, &le.State, &le.Status, &msg, &le.At}, func() error {
		e := le
		e.Error = msg.String
		if e.At != nil {
			t := e.At.UTC()
			e.At = &t
		}
		out[name] = &e
		le = LastError{}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read last errors: %w", err)
	}
	return out, nil
}

// WebhookNames lists the webhooks that have rows in any state: one index
// probe per webhook (a loose scan of the unique key).
func (s *Store) WebhookNames(ctx context.Context) ([]string, error) {
	return s.webhookNames(ctx, fmt.Sprintf(webhookNamesSQL, s.deliveries, "true"))
}

// webhookNames runs a webhookNamesSQL statement.
func (s *Store) webhookNames(ctx context.Context, sql string) ([]string, error) {
	rows, err := s.pool.Query(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	return names, nil
}

// webhookNamesSQL lists the distinct webhooks of the rows matching %[2]s
// (a condition that a partial index's predicate, or true for the unique
// key, serves), one index probe per webhook.
const webhookNamesSQL = `WITH RECURSIVE w AS (
	(SELECT webhook FROM %[1]s WHERE %[2]s ORDER BY webhook LIMIT 1)
	UNION ALL
	SELECT (SELECT d.webhook FROM %[1]s AS d WHERE %[2]s AND d.webhook > w.webhook ORDER BY d.webhook LIMIT 1)
	FROM w WHERE w.webhook IS NOT NULL
)
SELECT webhook FROM w WHERE webhook IS NOT NULL`

// LastFailures returns the most recent failed delivery of each of the named
// webhooks: one backward step on deliveries_failed per webhook (for the
// status page). Errors are cut to 300 characters.
func (s *Store) LastFailures(ctx context.Context, names []string) (map[string]*LastError, error) {
	out := map[string]*LastError{}
	if len(names) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT w.name, f.id, f.last_attempt_at, f.last_status, left(f.last_error, 300)
FROM unnest($1::text[]) AS w(name)
CROSS JOIN LATERAL (SELECT id, last_attempt_at, last_status, last_error FROM `+s.deliveries+`
	WHERE state = 'failed' AND webhook = w.name ORDER BY last_attempt_at DESC LIMIT 1) AS f`, names)
	if err != nil {
		return out, fmt.Errorf("read last failures: %w", err)
	}
	var name string
	var le LastError
	var msg pgtype.Text
	_, err = pgx.ForEachRow(rows, []any{&name, &le.DeliveryID, &le.At, &le.Status, &msg}, func() error {
		e := le
		e.State, e.Error = StateFailed, msg.String
		out[name] = &e
		le = LastError{}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("read last failures: %w", err)
	}
	return out, nil
}

// Checkpoint reads capture's checkpoint for slot: the end LSN of the last
// source transaction whose deliveries are committed. ok is false when
// capture has not written one yet.
func (s *Store) Checkpoint(ctx context.Context, slot string) (lsn string, updated time.Time, ok bool, err error) {
	err = s.pool.QueryRow(ctx, "SELECT lsn::text, updated_at FROM "+s.checkpoints+" WHERE slot = $1", slot).
		Scan(&lsn, &updated)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", time.Time{}, false, nil
	}
	if err != nil {
		return "", time.Time{}, false, fmt.Errorf("read checkpoint of slot %s: %w", slot, err)
	}
	return lsn, updated.UTC(), true, nil
}

// Dispatcher is a dispatcher's heartbeat row.
type Dispatcher struct {
	ID          string    `json:"id"`
	StartedAt   time.Time `json:"started_at"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
	// Alive: it beat within the last few seconds (its claims are safe).
	Alive bool `json:"alive"`
	// Breakers holds the circuit breakers that are not closed, by webhook.
	Breakers map[string]BreakerStatus `json:"breakers,omitempty"`
}

// BreakerState is the state of a webhook's circuit breaker in a dispatcher.
type BreakerState string

// Circuit-breaker states.
const (
	// BreakerClosed: deliveries flow.
	BreakerClosed BreakerState = "closed"
	// BreakerOpen: the receiver kept failing; nothing is sent until the
	// next probe.
	BreakerOpen BreakerState = "open"
	// BreakerProbing: one delivery is being sent to test the receiver.
	BreakerProbing BreakerState = "probing"
)

// BreakerStatus is a circuit breaker's state as a dispatcher records it
// with its heartbeat.
type BreakerStatus struct {
	State BreakerState `json:"state"`
	// Since is when the breaker opened.
	Since time.Time `json:"since,omitzero"`
	// NextProbe is when the next probe may be sent (open only).
	NextProbe time.Time `json:"next_probe,omitzero"`
	// LastError is the failure that opened it, or the last probe's.
	LastError string `json:"last_error,omitempty"`
}

// DeadAfter is the silence after which a dispatcher counts as dead: its
// claimed rows are taken back by the others.
const DeadAfter = 5 * time.Second

// Dispatchers lists the dispatchers that beat within the last day.
func (s *Store) Dispatchers(ctx context.Context) ([]Dispatcher, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, started_at, heartbeat_at,
		heartbeat_at > now() - $1::bigint * interval '1 microsecond', webhooks::text
		FROM `+s.dispatchers+` ORDER BY id`, DeadAfter.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("read dispatchers: %w", err)
	}
	var out []Dispatcher
	var d Dispatcher
	var hooks string
	_, err = pgx.ForEachRow(rows, []any{&d.ID, &d.StartedAt, &d.HeartbeatAt, &d.Alive, &hooks}, func() error {
		x := d
		x.StartedAt, x.HeartbeatAt = x.StartedAt.UTC(), x.HeartbeatAt.UTC()
		x.Breakers = nil
		if err := json.Unmarshal([]byte(hooks), &x.Breakers); err != nil {
			return fmt.Errorf("dispatcher %s: webhooks: %w", x.ID, err)
		}
		if len(x.Breakers) == 0 {
			x.Breakers = nil
		}
		out = append(out, x)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read dispatchers: %w", err)
	}
	return out, nil
}

// AttemptRecord is one recorded HTTP attempt of a delivery.
type AttemptRecord struct {
	// Attempt numbers the delivery's attempts from 1; it keeps counting
	// after a retry by hand.
	Attempt   int32         `json:"attempt"`
	StartedAt time.Time     `json:"started_at"`
	Duration  time.Duration `json:"-"`
	// DurationMS is Duration in milliseconds, for JSON.
	DurationMS float64 `json:"duration_ms"`
	// Status is the HTTP status, nil without a response.
	Status *int32 `json:"status"`
	// Error says why there was no usable response.
	Error *string `json:"error"`
	// Response is the first MaxResponse bytes of the response body.
	Response *string `json:"response"`
	Probe    bool    `json:"probe"`
	SpanID   *string `json:"span_id"`
}

// Attempts reads the recorded attempts of delivery id (its last
// AttemptsKept), oldest first.
func (s *Store) Attempts(ctx context.Context, id int64) ([]AttemptRecord, error) {
	rows, err := s.pool.Query(ctx, fmt.Sprintf(attemptsSQL, s.attempts), id)
	if err != nil {
		return nil, fmt.Errorf("read attempts of delivery %d: %w", id, err)
	}
	var out []AttemptRecord
	var a AttemptRecord
	var us int64
	_, err = pgx.ForEachRow(rows, []any{&a.Attempt, &a.StartedAt, &us, &a.Status, &a.Error, &a.Response, &a.Probe, &a.SpanID}, func() error {
		a.StartedAt = a.StartedAt.UTC()
		a.Duration = time.Duration(us) * time.Microsecond
		a.DurationMS = float64(us) / 1000
		out = append(out, a)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read attempts of delivery %d: %w", id, err)
	}
	return out, nil
}

// attemptsSQL reads one delivery's attempts (%s: the attempts table) by
// primary key prefix.
const attemptsSQL = `SELECT attempt, started_at, (extract(epoch FROM duration) * 1000000)::bigint,
	status, error, response, probe, span_id
FROM %s WHERE delivery_id = $1 ORDER BY attempt`
