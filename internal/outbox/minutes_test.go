package outbox

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The statements of the status page charts read and write a range of the
// minutes table's key, not the table, on a table that was never analyzed:
// 1,000 webhooks over three hours (a trim that did not run for an hour),
// next to an outbox of 50,000 rows.
func TestMinutePlans(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 180,000-row minutes table")
	}
	t.Parallel()
	s, pool := setup(t)
	ctx := context.Background()
	exec(t, pool, `ALTER TABLE walhook.minutes SET (autovacuum_enabled = false)`)
	exec(t, pool, `ALTER TABLE walhook.deliveries SET (autovacuum_enabled = false)`)
	now := Minute(time.Now())
	exec(t, pool, `INSERT INTO walhook.minutes (minute, webhook, delivered, retried, failed, backlog)
		SELECT $1::timestamptz - m * interval '1 minute', 'w' || w, m, w % 3, w % 2, m + w
		FROM generate_series(0, 179) AS m, generate_series(1, 1000) AS w`, now)
	exec(t, pool, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body, state)
		SELECT 'w' || (g % 1000), 'updated', 'M', g::text, ('0/' || to_hex(16 + g))::pg_lsn, 0, now(), '{}',
			CASE WHEN g % 3 = 0 THEN 'failed' ELSE 'pending' END
		FROM generate_series(1, 50000) AS g`)
	var analyzed bool
	if err := pool.QueryRow(ctx, `SELECT bool_or(last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)
		FROM pg_stat_user_tables WHERE relid IN ('walhook.minutes'::regclass, 'walhook.deliveries'::regclass)`).Scan(&analyzed); err != nil || analyzed {
		t.Fatalf("analyzed (%v, %v): the test needs tables without statistics", analyzed, err)
	}
	var pages int64
	if err := pool.QueryRow(ctx, `SELECT pg_relation_size('walhook.minutes') / 8192`).Scan(&pages); err != nil {
		t.Fatal(err)
	}

	hooks := make([]string, 1000)
	minutes := make([]time.Time, 1000)
	counts := make([]int64, 1000)
	for i := range hooks {
		hooks[i] = "w" + strconv.Itoa(i+1)
		minutes[i] = now
		counts[i] = 1
	}
	hour := now.Add(-time.Hour)
	for _, st := range []struct {
		name  string
		sql   string
		args  []any
		bound int64
	}{
		// 61 minutes of 1,000 webhooks: about a third of the table.
		{"read the last hour", s.mq.read, []any{hour, now}, pages / 2},
		// A minute of 1,000 webhooks: a few pages each (12.3 a row on
		// PostgreSQL 13, up to 12 on later versions).
		{"add counts", s.mq.add, []any{minutes, hooks, counts, counts, counts}, 1000 * 13},
		// The oldest minute: 1,000 rows, a buffer or two each.
		{"trim", s.mq.trim, []any{now.Add(-178 * time.Minute)}, 2500},
	} {
		n, plan := explain(t, pool, st.sql, st.args...)
		if n > st.bound || strings.Contains(plan, "Seq Scan") {
			t.Errorf("%s touched %d buffers (limit %d; the table has %d pages):\n%s", st.name, n, st.bound, pages, plan)
		}
	}
	// Sampling: the minute is new, so each webhook's open rows are counted
	// through deliveries_object_open (never the whole outbox); a minute
	// sampled already costs one probe per webhook.
	next := now.Add(time.Minute)
	n, plan := explain(t, pool, s.mq.sample, next, hooks[:10])
	if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "deliveries_object_open") {
		t.Errorf("sampling the backlog touched %d buffers:\n%s", n, plan)
	}
	if n, plan := explain(t, pool, s.mq.sample, now.Add(-time.Minute), hooks); n > 1000*6 || strings.Contains(plan, "Seq Scan") {
		t.Errorf("sampling a minute sampled already touched %d buffers:\n%s", n, plan)
	}
}
