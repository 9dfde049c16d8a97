package outbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/test/pgtest"
)

// TestClaimAndOutcomeAreNotPlannedEachTime: the statements every delivery
// runs (claim, outcome, promote) run their generic plan from the first
// run: PostgreSQL would plan them anew on every run (custom plans), which
// was half of their time. pg_prepared_statements counts both kinds (14+).
func TestClaimAndOutcomeAreNotPlannedEachTime(t *testing.T) {
	t.Parallel()
	_, shared := setup(t)
	ctx := context.Background()
	var version int
	if err := shared.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version < 140000 {
		t.Skip("pg_prepared_statements counts plans from PostgreSQL 14")
	}
	pool := oneConnection(t, shared)
	s := New(pool, "walhook")
	for i := range 10 {
		insert(t, shared, "w", fmt.Sprint(i), i+1)
		res, err := s.Claim(ctx, ClaimRequest{By: "d1", Webhooks: []string{"w"}, Limits: []int32{8},
			Leases: []time.Duration{time.Minute}})
		if err != nil || len(res.Rows) != 1 {
			t.Fatalf("claim %d: %d rows, %v", i, len(res.Rows), err)
		}
		c := res.Rows[0]
		if _, err := s.WriteOutcomes(ctx, "d1", []Outcome{{ID: c.ID, ClaimedAt: c.ClaimedAt, State: StateDelivered,
			Status: 204, Sent: SentAttempt{Started: time.Now(), Duration: time.Millisecond}}}); err != nil {
			t.Fatal(err)
		}
	}
	for name, q := range map[string]string{"claim": s.q.claim, "outcome": s.q.outcome, "promote": s.q.promote} {
		var generic, custom int64
		err := pool.QueryRow(ctx, `SELECT generic_plans, custom_plans FROM pg_prepared_statements
			WHERE statement = $1`, q).Scan(&generic, &custom)
		if err != nil {
			t.Fatalf("%s: %v (prepared: %s)", name, err, prepared(t, pool))
		}
		if custom != 0 || generic != 10 {
			t.Errorf("%s ran %d custom plans and %d generic ones, want 0 and 10", name, custom, generic)
		}
	}
}

// oneConnection is a pool of one connection to shared's database: every
// statement is prepared once, and keeps its plans.
func oneConnection(t *testing.T, shared *pgxpool.Pool) *pgxpool.Pool {
	t.Helper()
	pc := shared.Config().Copy()
	pc.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// prepared lists the start of the statements prepared on pool's connection.
func prepared(t *testing.T, pool *pgxpool.Pool) string {
	rows, err := pool.Query(context.Background(), `SELECT left(statement, 60) FROM pg_prepared_statements`)
	if err != nil {
		return err.Error()
	}
	var out []string
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		out = append(out, s)
	}
	return strings.Join(out, " | ")
}

// TestGenericPlansOfASmallOutboxScaleWithIt: a connection keeps the generic
// plans it made while the outbox was small (no statistics change to
// invalidate them), so those plans must not depend on the table's size. A
// plan made on 20 rows then runs on 100,000 (never analyzed): the claim,
// the outcome and the promotion each read a number of buffers bounded by
// their batch, and looks each row of its batch up rather than comparing it
// with every other. (A hash join over a sequential scan of the outbox,
// planned for 900 rows, made claims of a burst 11 ms instead of 3.5; an
// outcome that joined its batch with the UPDATE's rows took 5.5 ms for 128
// rows instead of 1.2.)
func TestGenericPlansOfASmallOutboxScaleWithIt(t *testing.T) {
	t.Parallel()
	_, shared := setup(t)
	ctx := context.Background()
	exec(t, shared, `ALTER TABLE walhook.deliveries SET (autovacuum_enabled = false)`)
	exec(t, shared, `ALTER TABLE walhook.attempts SET (autovacuum_enabled = false)`)
	pool := oneConnection(t, shared)
	s := New(pool, "walhook")
	deliver := func(limit int32) []Outcome {
		res, err := s.Claim(ctx, ClaimRequest{By: "d1", Webhooks: []string{"w"}, Limits: []int32{limit},
			Leases: []time.Duration{time.Minute}})
		if err != nil {
			t.Fatal(err)
		}
		var out []Outcome
		for _, c := range res.Rows {
			out = append(out, Outcome{ID: c.ID, ClaimedAt: c.ClaimedAt, State: StateDelivered, Status: 204,
				Sent: SentAttempt{Started: time.Now(), Duration: time.Millisecond}})
		}
		return out
	}
	for i := range 20 {
		insert(t, shared, "w", fmt.Sprint(i), i+1)
	}
	for range 4 {
		if _, err := s.WriteOutcomes(ctx, "d1", deliver(5)); err != nil {
			t.Fatal(err)
		}
	}
	// The outbox grows: 100,000 rows, half delivered, the rest due.
	exec(t, shared, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body,
			state, delivered_at)
		SELECT 'w', 'created', 'M', 'k' || g, ('0/' || to_hex(1000 + g))::pg_lsn, 0, now(), '{}',
			CASE WHEN g <= 50000 THEN 'delivered' ELSE 'pending' END, CASE WHEN g <= 50000 THEN now() END
		FROM generate_series(1, 100000) AS g`)
	out := deliver(128)
	if len(out) != 128 {
		t.Fatalf("claimed %d rows, want 128", len(out))
	}
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	ids := make([]int64, len(out))
	for i, o := range out {
		ids[i] = o.ID
	}
	args := outcomeArgs("d1", out)
	for _, st := range []struct {
		name, sql string
		args      []any
	}{
		{"claim", s.q.claim, []any{[]string{"w"}, []int32{128}, []int64{60e6}, "d1", []time.Time{{}}}},
		{"outcome", s.q.outcome, args},
		{"promote", s.q.promote, []any{ids}},
	} {
		// Writing a row's new version and its index entries touches about 20
		// buffers; a scan of the outbox touches all of it (1,700 pages).
		n, plan := explainPrepared(t, c.Conn(), st.sql, st.args...)
		if n > 40*128 || strings.Contains(plan, "Seq Scan") || strings.Contains(plan, "Hash Join") ||
			strings.Contains(plan, "Merge Join") {
			t.Errorf("%s, with the plan made on 20 rows, read %d buffers on 100,000 rows (want no scan of the outbox, under %d buffers):\n%s",
				st.name, n, 40*128, plan)
		}
		// Nor a nested loop that compares every row of the batch with
		// every other (hash joins are off): each row must be looked up.
		if strings.Contains(plan, "Rows Removed by Join Filter") {
			t.Errorf("%s joins the batch with itself, row by row:\n%s", st.name, plan)
		}
	}
}

// explainPrepared runs EXPLAIN (ANALYZE, BUFFERS) EXECUTE of the statement
// conn prepared for sql, so with the plan it cached, in a transaction with
// the settings walhook gives it, rolled back. It returns the buffers
// touched and the plan.
func explainPrepared(t *testing.T, conn *pgx.Conn, sql string, args ...any) (int64, string) {
	t.Helper()
	ctx := context.Background()
	var name string
	if err := conn.QueryRow(ctx, `SELECT name FROM pg_prepared_statements WHERE statement = $1`, sql).Scan(&name); err != nil {
		t.Fatalf("the prepared statement: %v", err)
	}
	params := make([]string, len(args))
	for i := range args {
		params[i] = fmt.Sprintf("$%d", i+1)
	}
	q := "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE " + pgx.Identifier{name}.Sanitize() + "(" + strings.Join(params, ", ") + ")"
	return explainWith(t, conn, planSettings, q, append([]any{pgx.QueryExecModeSimpleProtocol}, args...)...)
}

// explainWith runs the EXPLAIN (ANALYZE) query q on db in a transaction that
// first makes settings (set_config calls) and is rolled back. It returns the
// buffers the top node touched and the plan.
func explainWith(t *testing.T, db interface {
	Begin(context.Context) (pgx.Tx, error)
}, settings, q string, args ...any) (int64, string) {
	t.Helper()
	ctx := context.Background()
	var lines []string
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT "+settings); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		lines, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		return pgx.ErrTxClosed // roll back
	})
	if err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		t.Fatalf("explain: %v", err)
	}
	return topBuffers(lines), strings.Join(lines, "\n")
}

// TestRescueAfterABurstReadsTheIndexAlone: after a burst, deliveries_lease
// holds an entry for every row that was delivering, until VACUUM. The
// rescue (every 2 s) meets them all; once one rescue has met them, the
// next ones read the index without visiting the rows (a bitmap scan
// visited all of them every time).
func TestRescueAfterABurstReadsTheIndexAlone(t *testing.T) {
	t.Parallel()
	// A cluster of its own: an entry is marked only once its row is dead
	// to every transaction, and other tests' transactions would keep the
	// rows visible to them.
	ctx := context.Background()
	cl, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	pool, err := pgxpool.New(ctx, cl.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := migrations.Apply(ctx, pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	s := New(pool, "walhook")
	exec(t, pool, `ALTER TABLE walhook.deliveries SET (autovacuum_enabled = false)`)
	exec(t, pool, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body,
			state, attempts, locked_until, locked_by, last_attempt_at)
		SELECT 'w', 'created', 'M', 'k' || g, ('0/' || to_hex(1000 + g))::pg_lsn, 0, now(), '{}',
			'delivering', 1, now() + interval '1 hour', 'd1', now()
		FROM generate_series(1, 20000) AS g`)
	exec(t, pool, `UPDATE walhook.deliveries SET state = 'delivered', delivered_at = now(), locked_until = NULL, locked_by = NULL`)
	for range 2 {
		if _, err := s.Rescue(ctx, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	n, plan := explainWith(t, pool, rescueSettings, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "+s.q.rescue, int64(5e6))
	// The index is 17 pages; the rows, about 410.
	if n > 300 {
		t.Errorf("the third rescue after a burst of 20,000 read %d buffers (want under 300):\n%s", n, plan)
	}
}

// topBuffers is the buffers of the first "Buffers:" line of a text plan:
// the top node's, which count its children's.
func topBuffers(lines []string) int64 {
	for _, l := range lines {
		if _, after, ok := strings.Cut(l, "Buffers: shared hit="); ok {
			return leadingNumber(after)
		}
	}
	return 0
}

// leadingNumber is the decimal number s starts with (0 if none).
func leadingNumber(s string) int64 {
	var n int64
	for _, ch := range s {
		if ch < '0' || ch > '9' {
			break
		}
		n = n*10 + int64(ch-'0')
	}
	return n
}
