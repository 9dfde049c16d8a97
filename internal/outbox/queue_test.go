package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/test/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

func setup(t testing.TB) (*Store, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pg.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := migrations.Apply(ctx, pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	return New(pool, "walhook"), pool
}

func exec(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// insert adds a pending change of object key for webhook, in commit order.
func insert(t *testing.T, pool *pgxpool.Pool, webhook, key string, lsn int) int64 {
	t.Helper()
	var id int64
	err := pool.QueryRow(context.Background(), `INSERT INTO walhook.deliveries
		(webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
		VALUES ($1, 'updated', 'M', $2, ('0/' || to_hex($3::int))::pg_lsn, 0, now(), '{}') RETURNING id`,
		webhook, key, lsn).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func count(t testing.TB, pool *pgxpool.Pool, where string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries WHERE `+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func state(t *testing.T, pool *pgxpool.Pool, id int64) State {
	t.Helper()
	var s string
	if err := pool.QueryRow(context.Background(), `SELECT state FROM walhook.deliveries WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return State(s)
}

func claimIDs(t *testing.T, s *Store, webhook string, limit int) ([]Claimed, int) {
	t.Helper()
	c, err := s.Claim(context.Background(), ClaimRequest{By: "d1", Webhooks: []string{webhook},
		Limits: []int32{int32(limit)}, Leases: []time.Duration{time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	return c.Rows, c.Parked[webhook]
}

func finish(t *testing.T, s *Store, c Claimed, st State) {
	t.Helper()
	n, err := s.WriteOutcomes(context.Background(), "d1", []Outcome{{ID: c.ID, ClaimedAt: c.ClaimedAt, State: st}})
	if err != nil || n != 1 {
		t.Fatalf("WriteOutcomes = %d, %v", n, err)
	}
}

// An object's changes go out one at a time in commit order: later ones
// are parked by the claim and promoted by their predecessor's outcome,
// delivered or failed; other objects are not held back.
func TestParkAndPromote(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	r1 := insert(t, pool, "w", "x", 100)
	r2 := insert(t, pool, "w", "x", 200)
	other := insert(t, pool, "w", "y", 250)
	r3 := insert(t, pool, "w", "x", 300)

	c, parked := claimIDs(t, s, "w", 10)
	if len(c) != 2 || c[0].ID != r1 || c[1].ID != other || parked != 2 {
		t.Fatalf("first claim: %+v, %d parked; want %d and %d claimed, 2 parked", c, parked, r1, other)
	}
	if state(t, pool, r2) != StateParked || state(t, pool, r3) != StateParked {
		t.Fatal("later changes of x are not parked")
	}
	// Nothing due: parked rows are not read again.
	if c, parked := claimIDs(t, s, "w", 10); len(c) != 0 || parked != 0 {
		t.Fatalf("second claim: %+v, %d parked", c, parked)
	}
	finish(t, s, c[0], StateDelivered)
	if state(t, pool, r2) != StatePending || state(t, pool, r3) != StateParked {
		t.Fatalf("after r1 delivered: r2 %s, r3 %s; want pending, parked", state(t, pool, r2), state(t, pool, r3))
	}
	c2, _ := claimIDs(t, s, "w", 10)
	if len(c2) != 1 || c2[0].ID != r2 {
		t.Fatalf("third claim: %+v, want r2", c2)
	}
	// A failed change does not block later ones.
	finish(t, s, c2[0], StateFailed)
	c3, _ := claimIDs(t, s, "w", 10)
	if len(c3) != 1 || c3[0].ID != r3 {
		t.Fatalf("fourth claim: %+v, want r3", c3)
	}
	// A retry (pending again, due later) keeps the object's next change
	// parked, and the contract's SQL retry of a failed row is checked
	// against its object like any pending row.
	r4 := insert(t, pool, "w", "x", 400)
	n, err := s.WriteOutcomes(context.Background(), "d1", []Outcome{{ID: c3[0].ID, ClaimedAt: c3[0].ClaimedAt,
		State: StatePending, Delay: time.Hour, Status: 503, Err: "HTTP 503"}})
	if err != nil || n != 1 {
		t.Fatal(n, err)
	}
	if c, parked := claimIDs(t, s, "w", 10); len(c) != 0 || parked != 1 || state(t, pool, r4) != StateParked {
		t.Fatalf("claim behind a retry: %+v, %d parked, r4 %s", c, parked, state(t, pool, r4))
	}
	// r2 is earlier than r3: retried by SQL, it has no earlier open change
	// and goes out (the order a manual retry asks for).
	exec(t, pool, `UPDATE walhook.deliveries SET state = 'pending', next_attempt_at = now() WHERE state = 'failed'`)
	if c, _ := claimIDs(t, s, "w", 10); len(c) != 1 || c[0].ID != r2 {
		t.Fatalf("claim after the SQL retry: %+v, want r2", c)
	}
}

// A claim never parks a row behind a change whose outcome is being written
// at that moment (its row is locked): the promotion could miss it. The row
// stays pending for the next claim instead.
func TestClaimLeavesRowBehindLockedPredecessor(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	ctx := context.Background()
	insert(t, pool, "w", "x", 100)
	c, _ := claimIDs(t, s, "w", 10)
	r2 := insert(t, pool, "w", "x", 200)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE walhook.deliveries SET state = 'delivered', delivered_at = now(), locked_until = NULL WHERE id = $1`, c[0].ID); err != nil {
		t.Fatal(err)
	}
	got, parked := claimIDs(t, s, "w", 10)
	if len(got) != 0 || parked != 0 || state(t, pool, r2) != StatePending {
		t.Fatalf("claim behind a locked predecessor: %+v, %d parked, r2 %s", got, parked, state(t, pool, r2))
	}
}

// explain runs sql under EXPLAIN (ANALYZE, BUFFERS) in a transaction that
// is rolled back, with a custom and with a generic plan (what a prepared
// statement gets after five runs), and returns the larger number of
// buffers touched and that plan.
func explain(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) (int64, string) {
	n, plan, _ := explainJIT(t, pool, sql, args...)
	return n, plan
}

// explainJIT is explain, and says whether either plan was JIT-compiled.
func explainJIT(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) (int64, string, bool) {
	t.Helper()
	ctx := context.Background()
	var worst int64
	var worstPlan string
	jit := false
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL plan_cache_mode = "+mode); err != nil {
				return err
			}
			// The text plan below runs the statement again, on the data
			// as it was before this run.
			if _, err := tx.Exec(ctx, "SAVEPOINT before_explain"); err != nil {
				return err
			}
			var js string
			if err := tx.QueryRow(ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+sql, args...).Scan(&js); err != nil {
				return err
			}
			var plan []struct {
				Plan map[string]any `json:"Plan"`
				JIT  any            `json:"JIT"`
			}
			if err := json.Unmarshal([]byte(js), &plan); err != nil {
				return err
			}
			p := plan[0].Plan
			jit = jit || plan[0].JIT != nil
			n := int64(p["Shared Hit Blocks"].(float64) + p["Shared Read Blocks"].(float64))
			if n >= worst {
				if _, err := tx.Exec(ctx, "ROLLBACK TO SAVEPOINT before_explain"); err != nil {
					return err
				}
				rows, _ := tx.Query(ctx, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "+sql, args...)
				lines, _ := pgx.CollectRows(rows, pgx.RowTo[string])
				worst, worstPlan = n, mode+":\n"+strings.Join(lines, "\n")
			}
			return pgx.ErrTxClosed // roll back
		})
		if err != nil && !errors.Is(err, pgx.ErrTxClosed) {
			t.Fatalf("explain %s: %v", mode, err)
		}
	}
	return worst, worstPlan, jit
}

// The statements that run all the time touch a number of buffers bounded by
// their batch, not by the backlog, on a 1,000,000-row outbox that was never
// analyzed or vacuumed, where most rows wait behind retrying changes of
// their objects.
func TestQueuePlansIgnoreBacklogAndStatistics(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 1,000,000-row outbox")
	}
	t.Parallel()
	s, pool := setup(t)
	ctx := context.Background()
	// No statistics, ever: the worst case production can meet.
	exec(t, pool, `ALTER TABLE walhook.deliveries SET (autovacuum_enabled = false)`)
	exec(t, pool, `ALTER TABLE walhook.attempts SET (autovacuum_enabled = false)`)
	// 1,000,000 rows of two webhooks: 2,000 objects whose first change is
	// retrying (due in an hour) with 400,000 changes behind them, then
	// 600,000 rows of 300,000 other objects, due now, and some delivered
	// and failed rows.
	exec(t, pool, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body,
			state, attempts, next_attempt_at, last_attempt_at, delivered_at)
		SELECT CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END, 'updated', 'M',
			CASE WHEN g <= 402000 THEN 'r' || (g % 2000) ELSE 'o' || (g % 300000) END,
			('0/' || to_hex(16 + g))::pg_lsn, 0, now(), '{}',
			CASE WHEN g % 97 = 0 AND g > 402000 THEN 'delivered' WHEN g % 101 = 0 AND g > 402000 THEN 'failed' ELSE 'pending' END,
			CASE WHEN g <= 2000 THEN 1 ELSE 0 END,
			CASE WHEN g <= 2000 THEN now() + interval '1 hour' ELSE now() - interval '1 minute' END,
			CASE WHEN g <= 2000 OR (g % 101 = 0 AND g > 402000) THEN now() - interval '40 days' END,
			CASE WHEN g % 97 = 0 AND g > 402000 THEN now() - interval '10 days' END
		FROM generate_series(1, 1000000) AS g`)
	// 500,000 attempts: one for every other delivery.
	exec(t, pool, `INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration, status, response)
		SELECT g, 1, now(), interval '1 ms', 500, 'down' FROM generate_series(1, 1000000, 2) AS g`)
	var analyzed bool
	if err := pool.QueryRow(ctx, `SELECT bool_or(last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)
		FROM pg_stat_user_tables WHERE relid IN ('walhook.deliveries'::regclass, 'walhook.attempts'::regclass)`).Scan(&analyzed); err != nil || analyzed {
		t.Fatalf("outbox analyzed (%v, %v): the test needs tables without statistics", analyzed, err)
	}

	const batch = 64
	// Bounds: a claim touches a few index and heap pages per row it takes
	// or parks; the backlog is 1,000,000 rows in about 10,000 pages.
	limit := int64(2 * batch * 40)
	never := time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)
	claimArgs := []any{[]string{"a", "b"}, []int32{batch, batch}, []int64{60e6, 60e6}, "d1", []time.Time{never, never}}
	// First claims meet the 400,000 rows blocked behind retrying changes:
	// they park them, a batch at a time.
	for i := range 3 {
		n, plan := explain(t, pool, s.q.claim, claimArgs...)
		if n > limit {
			t.Fatalf("claim %d touched %d buffers (limit %d):\n%s", i, n, limit, plan)
		}
		if _, err := s.Claim(ctx, ClaimRequest{By: "d1", Webhooks: []string{"a", "b"}, Limits: []int32{batch, batch},
			Leases: []time.Duration{time.Minute, time.Minute}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, pool, `state = 'parked'`); n != 6*batch {
		t.Fatalf("%d rows parked, want %d", n, 6*batch)
	}
	// The first retrying changes finish: their parked successors are
	// promoted.
	var ids []int64
	for id := int64(1); id <= batch; id++ {
		ids = append(ids, id)
	}
	exec(t, pool, `UPDATE walhook.deliveries SET state = 'delivered', delivered_at = now(), locked_until = NULL WHERE id = ANY($1)`, ids)
	stmts := []struct {
		name string
		sql  string
		args []any
	}{
		{"promote", s.q.promote, []any{ids}},
		{"rescue", s.q.rescue, []any{int64(5e6)}},
		{"release unheld", s.q.releaseUnheld, []any{"d1", []int64{1, 2, 3}}},
		{"release backoff", s.q.releaseBackoff, []any{"a"}},
		{"purge delivered", s.q.purgeDelivered, []any{int64(7 * 24 * 3600e6)}},
		{"purge failed", s.q.purgeFailed, []any{int64(30 * 24 * 3600e6)}},
		{"webhooks with pending rows", s.q.webhooksWithPending, nil},
		{"orphan sweep", s.q.openObjects, []any{"", "", "", 1000}},
	}
	for _, st := range stmts {
		n, plan := explain(t, pool, st.sql, st.args...)
		// release backoff touches the 1,000 retrying rows of webhook a;
		// the purges up to PurgeBatch rows. An updated row costs a heap page
		// and an entry in each of the indexes whose columns it changes.
		bound := limit
		switch st.name {
		case "release backoff":
			bound = 1000 * 25
		case "purge delivered", "purge failed":
			bound = PurgeBatch * 25
		case "orphan sweep":
			bound = 1000 * 8 // one index descent per object
		}
		if n > bound || strings.Contains(plan, "Seq Scan on attempts") {
			t.Errorf("%s touched %d buffers (limit %d):\n%s", st.name, n, bound, plan)
		}
	}

	// Outcomes of a batch of claimed rows that have AttemptsKept attempts
	// each: every one records an attempt and deletes its oldest.
	rows, err := pool.Query(ctx, `UPDATE walhook.deliveries SET state = 'delivering', attempts = attempts + 1,
			attempt_seq = `+fmt.Sprint(AttemptsKept)+`, locked_by = 'd1', locked_until = now() + interval '1 minute', last_attempt_at = now()
		WHERE id IN (SELECT id FROM walhook.deliveries WHERE state = 'pending' AND id > 402000 ORDER BY id LIMIT $1)
		RETURNING id, last_attempt_at`, batch)
	if err != nil {
		t.Fatal(err)
	}
	var outcomes []Outcome
	var o Outcome
	if _, err := pgx.ForEachRow(rows, []any{&o.ID, &o.ClaimedAt}, func() error {
		o.State, o.Status, o.Sent = StatePending, 503, SentAttempt{Started: time.Now(), Duration: time.Millisecond, Response: "busy"}
		outcomes = append(outcomes, o)
		return nil
	}); err != nil || len(outcomes) != batch {
		t.Fatalf("%d claimed rows for the outcome (%v)", len(outcomes), err)
	}
	claimedIDs := outcomeArgs("d1", outcomes)[1].([]int64)
	exec(t, pool, `INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration)
		SELECT id, a, now(), interval '1 ms' FROM unnest($1::bigint[]) AS id, generate_series(1, $2) AS a
		ON CONFLICT DO NOTHING`, claimedIDs, AttemptsKept)
	if n, plan := explain(t, pool, s.q.outcome, outcomeArgs("d1", outcomes)...); n > limit ||
		!strings.Contains(plan, "Insert on attempts") || !strings.Contains(plan, "Delete on attempts") ||
		strings.Contains(plan, "Seq Scan on attempts") {
		t.Errorf("outcome touched %d buffers (limit %d):\n%s", n, limit, plan)
	}
	if n, plan := explain(t, pool, fmt.Sprintf(attemptsSQL, s.attempts), claimedIDs[0]); n > 2*AttemptsKept+10 {
		// Each kept attempt may lie on a heap page of its own.
		t.Errorf("reading a delivery's attempts touched %d buffers (limit %d):\n%s", n, 2*AttemptsKept+10, plan)
	}

	// walhook status: the counts read the partial index of their state
	// (never the table), the rest a few index pages.
	for _, q := range []string{statusQueries.pending, statusQueries.parked, statusQueries.delivering,
		statusQueries.delivered, statusQueries.failed} {
		q = fmt.Sprintf(q, s.deliveries)
		if _, plan := explain(t, pool, q); strings.Contains(plan, "Seq Scan") {
			t.Errorf("status count reads the whole table:\n%s", plan)
		}
	}
	for _, st := range []struct {
		name string
		sql  string
		args []any
	}{
		{"last errors", fmt.Sprintf(lastErrorsSQL, s.deliveries), []any{[]string{"a", "b", "c"}}},
		{"webhook names", fmt.Sprintf(webhookNamesSQL, s.deliveries, "true"), nil},
	} {
		if n, plan := explain(t, pool, st.sql, st.args...); n > 200 {
			t.Errorf("%s touched %d buffers (limit 200):\n%s", st.name, n, plan)
		}
	}

	// With statistics, the planner takes a claim's parameter LIMIT for
	// 10% of the table, and the default jit_above_cost would compile each
	// claim for a second or more: connections prepared by PrepareConn
	// never JIT-compile.
	exec(t, pool, `ANALYZE walhook.deliveries`)
	cfg := pool.Config()
	cfg.AfterConnect = PrepareConn
	prepared, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer prepared.Close()
	if _, plan, jit := explainJIT(t, prepared, s.q.claim, claimArgs...); jit {
		t.Errorf("claim JIT-compiled on a prepared connection:\n%s", plan)
	}
	if _, _, jit := explainJIT(t, pool, s.q.claim, claimArgs...); !jit {
		t.Log("this server does not JIT-compile the claim even unprepared (no LLVM, or jit off)")
	}
}

// A failed change that a later change of its object was delivered after is
// superseded: Superseded counts it and SkipSuperseded leaves it failed.
func TestRequeueSuperseded(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	ctx := context.Background()
	old := insert(t, pool, "w", "x", 100)
	newer := insert(t, pool, "w", "x", 200)
	alone := insert(t, pool, "w", "y", 150)
	exec(t, pool, `UPDATE walhook.deliveries SET state = 'failed', attempts = 8, last_attempt_at = now() WHERE id IN ($1, $2)`, old, alone)
	exec(t, pool, `UPDATE walhook.deliveries SET state = 'delivered', attempts = 1, delivered_at = now() WHERE id = $1`, newer)
	f := RequeueFilter{AllFailed: true}
	if n, err := s.Superseded(ctx, f, time.Now()); err != nil || n != 1 {
		t.Fatalf("Superseded = %d, %v; want 1", n, err)
	}
	f.SkipSuperseded = true
	if n, err := s.Requeue(ctx, f, time.Now()); err != nil || n != 1 {
		t.Fatalf("Requeue skipping superseded = %d, %v; want 1", n, err)
	}
	if state(t, pool, old) != StateFailed || state(t, pool, alone) != StatePending {
		t.Errorf("after requeue: old %s (want failed), alone %s (want pending)", state(t, pool, old), state(t, pool, alone))
	}
	if n, err := s.Requeue(ctx, RequeueFilter{IDs: []int64{old}}, time.Now()); err != nil || n != 1 {
		t.Fatalf("Requeue by id = %d, %v", n, err)
	}
}

// A parked change whose predecessor was finished by hand (an UPDATE that
// skipped the outcome's promotion) is found by PromoteOrphans; a parked row
// that still has an open predecessor is left alone. The cursor walks the
// objects a batch at a time and starts over at the end.
func TestPromoteOrphans(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	ctx := context.Background()
	a1 := insert(t, pool, "w", "a", 100)
	a2 := insert(t, pool, "w", "a", 200)
	b1 := insert(t, pool, "w", "b", 150)
	b2 := insert(t, pool, "w", "b", 250)
	if _, parked := claimIDs(t, s, "w", 10); parked != 2 {
		t.Fatalf("%d parked, want 2", parked)
	}
	// a1 is finished by hand: a2 has no predecessor any more.
	exec(t, pool, `UPDATE walhook.deliveries SET state = 'delivered', delivered_at = now(), locked_until = NULL WHERE id = $1`, a1)
	n, next, err := s.PromoteOrphans(ctx, ObjectCursor{}, 1)
	if err != nil || n != 1 || next.Key != "a" {
		t.Fatalf("first sweep = %d, %+v, %v; want a2 promoted, cursor at a", n, next, err)
	}
	if state(t, pool, a2) != StatePending || state(t, pool, b2) != StateParked {
		t.Fatalf("a2 %s, b2 %s; want pending, parked", state(t, pool, a2), state(t, pool, b2))
	}
	n, next, err = s.PromoteOrphans(ctx, next, 1)
	if err != nil || n != 0 || next.Key != "b" {
		t.Fatalf("second sweep = %d, %+v, %v; want nothing promoted (b1 still open), cursor at b", n, next, err)
	}
	n, next, err = s.PromoteOrphans(ctx, next, 1)
	if err != nil || n != 0 || next != (ObjectCursor{}) {
		t.Fatalf("third sweep = %d, %+v, %v; want the end", n, next, err)
	}
	_ = b1
}

// After a burst, deliveries_due holds the entries of every finished row
// until VACUUM, at the head of the index: a claim that starts at the head
// reads them all. A claim given Since starts past them.
func TestClaimSinceSkipsFinishedRowsAtTheHead(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	ctx := context.Background()
	exec(t, pool, `ALTER TABLE walhook.deliveries SET (autovacuum_enabled = false)`)
	exec(t, pool, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body, next_attempt_at)
		SELECT 'w', 'created', 'M', g::text, ('0/' || to_hex(16 + g))::pg_lsn, 0, now(), '{}', now() - interval '1 minute'
		FROM generate_series(1, 50000) AS g`)
	exec(t, pool, `UPDATE walhook.deliveries SET state = 'delivered', delivered_at = now()`)
	var before time.Time
	if err := pool.QueryRow(ctx, `SELECT now()`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		insert(t, pool, "w", fmt.Sprint("new", i), 1000000+i)
	}
	req := ClaimRequest{By: "d1", Webhooks: []string{"w"}, Limits: []int32{64}, Leases: []time.Duration{time.Minute}}
	// Twice from the head: the first marks the dead entries, the second
	// still reads their pages.
	var head int
	for range 2 {
		_, plan := explain(t, pool, s.q.claim, "{w}", "{64}", "{60000000}", "d1", []time.Time{{}})
		head = dueScanBuffers(t, plan)
	}
	_, plan := explain(t, pool, s.q.claim, "{w}", "{64}", "{60000000}", "d1", []time.Time{before.Add(-time.Second)})
	if n := dueScanBuffers(t, plan); n > 10 || head < 100 {
		t.Errorf("the scan of deliveries_due read %d buffers from the head, %d since the burst (want under 10):\n%s", head, n, plan)
	}
	req.Since = []time.Time{before.Add(-time.Second)}
	if res, err := s.Claim(ctx, req); err != nil || len(res.Rows) != 5 || res.Now.Before(before) {
		t.Fatalf("Claim since the burst = %d rows at %s, %v; want 5", len(res.Rows), res.Now, err)
	}
}

// dueScanBuffers returns the buffers the scan of deliveries_due read in an
// EXPLAIN (ANALYZE, BUFFERS) plan.
func dueScanBuffers(t *testing.T, plan string) int {
	t.Helper()
	_, after, ok := strings.Cut(plan, "Index Scan using deliveries_due")
	if !ok {
		t.Fatalf("no scan of deliveries_due:\n%s", plan)
	}
	_, after, ok = strings.Cut(after, "Buffers: shared hit=")
	if !ok {
		t.Fatalf("no buffers for the scan of deliveries_due:\n%s", plan)
	}
	return int(leadingNumber(after))
}

// Promote finds its rows by primary key whatever the statistics say. With
// statistics taken while some rows were open, and the index of open rows
// full of finished rows' entries (as after a burst, until VACUUM), the
// planner ANDed the ids with the whole of deliveries_object_open when the
// UPDATE's WHERE checked the state: a thousand pages per outcome batch.
func TestPromoteAfterABurst(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	exec(t, pool, `ALTER TABLE walhook.deliveries SET (autovacuum_enabled = false)`)
	rows := func(from, to int) {
		exec(t, pool, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
			SELECT 'w', 'created', 'M', g::text, ('0/' || to_hex(16 + g))::pg_lsn, 0, now(), '{}'
			FROM generate_series($1::int, $2::int) AS g`, from, to)
		exec(t, pool, `UPDATE walhook.deliveries SET state = 'delivered', delivered_at = now() WHERE id BETWEEN $1 AND $2 - 100`, from, to)
	}
	// Autovacuum visits the table early in the burst, when the index of
	// open rows is small; then the burst goes on.
	rows(1, 400)
	exec(t, pool, `VACUUM ANALYZE walhook.deliveries`)
	rows(401, 100000)
	exec(t, pool, `UPDATE walhook.deliveries SET state = 'delivered', delivered_at = now() WHERE id <= 99996 AND state = 'pending'`)
	n, plan := explain(t, pool, s.q.promote, []int64{99993, 99994, 99995, 99996})
	if n > 100 {
		t.Errorf("promote of 4 rows read %d buffers (want under 100):\n%s", n, plan)
	}
}
