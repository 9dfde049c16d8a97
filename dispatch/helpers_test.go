package dispatch_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/test/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) } // goleak included

// testEnv is one test's database with the outbox migrated.
type testEnv struct {
	t    testing.TB
	dsn  string
	pool *pgxpool.Pool
}

func setup(t testing.TB) *testEnv {
	t.Helper()
	e := &testEnv{t: t, dsn: pg.NewDB(t)}
	e.pool = e.newPool()
	if _, err := migrations.Apply(context.Background(), e.pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	e.exec(`CREATE SEQUENCE walhook_test_lsn START 1000000`)
	return e
}

func (e *testEnv) newPool() *pgxpool.Pool {
	e.t.Helper()
	pool, err := pgxpool.New(context.Background(), e.dsn)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(pool.Close)
	return pool
}

// hookConfig is a webhook with test-friendly defaults: short intervals.
func hookConfig(name, url string, opts ...func(*config.Webhook)) config.Webhook {
	w := config.Webhook{
		Name:        name,
		URL:         url,
		HTTPMethod:  "POST",
		ContentType: "application/json",
		Timeout:     config.Duration(5 * time.Second),
		Retry: config.Retry{
			MaxAttempts:     3,
			InitialInterval: config.Duration(10 * time.Millisecond),
			MaxInterval:     config.Duration(50 * time.Millisecond),
		},
	}
	for _, o := range opts {
		o(&w)
	}
	return w
}

func testConfig(concurrency int, hooks ...config.Webhook) *config.Config {
	c := &config.Config{
		Database: config.Database{Schema: "walhook"},
		Webhooks: hooks,
		Dispatch: config.Dispatch{
			Concurrency:  concurrency,
			PollInterval: config.Duration(100 * time.Millisecond),
			Retention:    config.Duration(168 * time.Hour),
		},
	}
	c.ApplyDefaults()
	return c
}

func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// start runs a Dispatcher on pool until the returned stop is called (or
// the test ends). stop returns Run's error.
func (e *testEnv) start(pool *pgxpool.Pool, cfg *config.Config, opts ...func(*dispatch.Options)) (stop func() error) {
	e.t.Helper()
	_, stop = e.startDispatcher(pool, cfg, opts...)
	return stop
}

// startDispatcher is start that also returns the running Dispatcher.
func (e *testEnv) startDispatcher(pool *pgxpool.Pool, cfg *config.Config, opts ...func(*dispatch.Options)) (_ *dispatch.Dispatcher, stop func() error) {
	e.t.Helper()
	o := dispatch.Options{Pool: pool, Config: cfg, Logger: testLogger(e.t), Version: "test"}
	for _, f := range opts {
		f(&o)
	}
	d, err := dispatch.New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("Run did not return within 30s of cancel")
			}
		})
		return runErr
	}
	e.t.Cleanup(func() {
		if err := stop(); err != nil {
			e.t.Error(err)
		}
	})
	return d, stop
}

// delivery is a row to insert.
type delivery struct {
	webhook, model, key string
	lsn                 uint64
	seq                 int
	body                string
}

// insert adds rows (pending, due now) in the given order and returns their ids.
func (e *testEnv) insert(rows ...delivery) []int64 {
	e.t.Helper()
	var hooks, models, keys, lsns, bodies []string
	var seqs []int32
	for _, r := range rows {
		if r.model == "" {
			r.model = "Site"
		}
		hooks, models, keys, bodies = append(hooks, r.webhook), append(models, r.model), append(keys, r.key), append(bodies, r.body)
		lsns = append(lsns, fmt.Sprintf("%X/%X", r.lsn>>32, uint32(r.lsn)))
		seqs = append(seqs, int32(r.seq))
	}
	q := `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
		SELECT h, 'created', m, k, l::pg_lsn, s, now(), b
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[]) WITH ORDINALITY AS u(h, m, k, l, s, b, o)
		ORDER BY o
		RETURNING id`
	qrows, err := e.pool.Query(context.Background(), q, hooks, models, keys, lsns, seqs, bodies)
	if err != nil {
		e.t.Fatal(err)
	}
	ids, err := pgx.CollectRows(qrows, pgx.RowTo[int64])
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}

// insertOne adds one row for webhook with a fresh key and returns its id.
func (e *testEnv) insertOne(webhook, body string) int64 {
	e.t.Helper()
	var id int64
	err := e.pool.QueryRow(context.Background(), `INSERT INTO walhook.deliveries
		(webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
		VALUES ($1, 'created', 'Site', gen_random_uuid()::text,
			('0/' || to_hex(nextval('walhook_test_lsn')))::pg_lsn, 0, now(), $2)
		RETURNING id`, webhook, body).Scan(&id)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

// insertMany adds n rows for webhook with distinct keys via generate_series.
func (e *testEnv) insertMany(webhook string, n, offset int) {
	e.t.Helper()
	e.exec(`INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
		SELECT $1, 'created', 'Site', g::text, ('0/' || to_hex(g))::pg_lsn, 0, now(),
			'{"event":"created","model":"Site","data":{"id":' || g || '}}'
		FROM generate_series($2::int + 1, $2::int + $3::int) AS g`, webhook, offset, n)
}

func (e *testEnv) exec(sql string, args ...any) int64 {
	e.t.Helper()
	tag, err := e.pool.Exec(context.Background(), sql, args...)
	if err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return tag.RowsAffected()
}

func (e *testEnv) count(where string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(context.Background(), "SELECT count(*) FROM walhook.deliveries WHERE "+where, args...).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// outboxRow is a delivery row as stored.
type outboxRow struct {
	State         string
	Attempts      int
	LastStatus    *int
	LastError     *string
	LockedBy      *string
	LockedUntil   *time.Time
	DeliveredAt   *time.Time
	LastAttemptAt *time.Time
	NextAttemptAt time.Time
}

func (e *testEnv) row(id int64) outboxRow {
	e.t.Helper()
	var r outboxRow
	err := e.pool.QueryRow(context.Background(), `SELECT state, attempts, last_status, last_error, locked_by,
		locked_until, delivered_at, last_attempt_at, next_attempt_at FROM walhook.deliveries WHERE id = $1`, id).
		Scan(&r.State, &r.Attempts, &r.LastStatus, &r.LastError, &r.LockedBy, &r.LockedUntil, &r.DeliveredAt,
			&r.LastAttemptAt, &r.NextAttemptAt)
	if err != nil {
		e.t.Fatalf("row %d: %v", id, err)
	}
	return r
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitState waits until row id is in state.
func (e *testEnv) waitState(id int64, state string, timeout time.Duration) outboxRow {
	e.t.Helper()
	var r outboxRow
	waitFor(e.t, timeout, fmt.Sprintf("delivery %d to be %s", id, state), func() bool {
		r = e.row(id)
		return r.State == state
	})
	return r
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}
