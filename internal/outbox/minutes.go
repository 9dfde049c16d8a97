package outbox

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// MinutesKept is how long the minutes table keeps a minute: the status
// page's charts show the last hour; an hour more is left for clock skew
// between processes and for a page read while a trim runs.
const MinutesKept = 2 * time.Hour

// Minute truncates t to its minute, in UTC: the key of the minutes table.
func Minute(t time.Time) time.Time { return t.UTC().Truncate(time.Minute) }

// MinuteCounts are the attempts a webhook had in one minute, by outcome,
// and its backlog (deliveries not finished: pending, parked or delivering)
// when it was sampled in that minute.
type MinuteCounts struct {
	Minute  time.Time
	Webhook string
	// Delivered, Retried and Failed count attempts by outcome
	// (OutcomeDelivered, OutcomeRetry, OutcomeFailed).
	Delivered, Retried, Failed int64
	// Backlog is nil when no dispatcher sampled it in that minute.
	Backlog *int64
}

// minuteQueries are the statements on the minutes table, built once for a
// schema. Each reads or writes a range of its primary key (minute,
// webhook): their cost does not depend on statistics
// (TestMinutePlans).
type minuteQueries struct {
	add, sample, trim, read string
}

func newMinuteQueries(t, deliveries string) minuteQueries {
	return minuteQueries{
		// Adds counts to (minute, webhook) rows. Several dispatchers add to
		// the same rows; each statement names a row once and in key order
		// (AddMinutes sorts), so that two never deadlock.
		add: `INSERT INTO ` + t + ` AS m (minute, webhook, delivered, retried, failed)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[])
ON CONFLICT (minute, webhook) DO UPDATE SET
	delivered = m.delivered + EXCLUDED.delivered,
	retried = m.retried + EXCLUDED.retried,
	failed = m.failed + EXCLUDED.failed`,

		// Samples the backlog of each webhook of $2 (sorted) for minute $1,
		// unless a dispatcher did already: the probe of the primary key
		// comes first, so the count runs once a minute however many
		// dispatchers there are. The count reads the partial index
		// deliveries_object_open, whose rows are exactly the open ones.
		sample: `INSERT INTO ` + t + ` AS m (minute, webhook, backlog)
SELECT $1::timestamptz, w.name, (SELECT count(*) FROM ` + deliveries + ` AS d
		WHERE d.webhook = w.name AND d.state IN ` + openStatesSQL + `)
FROM unnest($2::text[]) WITH ORDINALITY AS w(name, i)
WHERE NOT EXISTS (SELECT 1 FROM ` + t + ` AS x WHERE x.minute = $1::timestamptz AND x.webhook = w.name AND x.backlog IS NOT NULL)
ORDER BY w.i
ON CONFLICT (minute, webhook) DO UPDATE SET backlog = EXCLUDED.backlog`,

		// A closed range (from -infinity): without statistics the planner
		// estimates a one-sided range at a third of the table and reads it
		// all; a closed one is a scan of the key's first column.
		trim: `DELETE FROM ` + t + ` WHERE minute >= '-infinity' AND minute < $1`,

		read: `SELECT minute, webhook, delivered, retried, failed, backlog FROM ` + t + `
WHERE minute >= $1 AND minute <= $2 ORDER BY minute, webhook`,
	}
}

// AddMinutes adds the counts of rows to the minutes table (their Backlog is
// ignored). Rows may name the same minute and webhook more than once.
func (s *Store) AddMinutes(ctx context.Context, rows []MinuteCounts) error {
	if len(rows) == 0 {
		return nil
	}
	type key struct {
		minute  time.Time
		webhook string
	}
	sum := map[key]*MinuteCounts{}
	var keys []key
	for _, r := range rows {
		k := key{Minute(r.Minute), r.Webhook}
		c, ok := sum[k]
		if !ok {
			c = &MinuteCounts{}
			sum[k] = c
			keys = append(keys, k)
		}
		c.Delivered += r.Delivered
		c.Retried += r.Retried
		c.Failed += r.Failed
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(a.minute.Compare(b.minute), cmp.Compare(a.webhook, b.webhook))
	})
	minutes := make([]time.Time, len(keys))
	hooks := make([]string, len(keys))
	delivered := make([]int64, len(keys))
	retried := make([]int64, len(keys))
	failed := make([]int64, len(keys))
	for i, k := range keys {
		c := sum[k]
		minutes[i], hooks[i], delivered[i], retried[i], failed[i] = k.minute, k.webhook, c.Delivered, c.Retried, c.Failed
	}
	if _, err := s.pool.Exec(ctx, s.mq.add, minutes, hooks, delivered, retried, failed); err != nil {
		return fmt.Errorf("add delivery counts per minute: %w", err)
	}
	return nil
}

// SampleBacklog records, for minute, the backlog of each of webhooks that
// no dispatcher sampled in that minute yet, and deletes the minutes older
// than MinutesKept before minute.
func (s *Store) SampleBacklog(ctx context.Context, minute time.Time, webhooks []string) error {
	minute = Minute(minute)
	names := slices.Clone(webhooks)
	slices.Sort(names)
	names = slices.Compact(names)
	b := &pgx.Batch{}
	b.Queue(s.mq.sample, minute, names)
	b.Queue(s.mq.trim, minute.Add(-MinutesKept))
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("sample the backlog per minute: %w", err)
	}
	return nil
}

// Minutes reads the minutes from..to (inclusive, truncated to minutes) of
// every webhook, oldest first. Minutes without attempts or samples have no
// row.
func (s *Store) Minutes(ctx context.Context, from, to time.Time) ([]MinuteCounts, error) {
	rows, err := s.pool.Query(ctx, s.mq.read, Minute(from), Minute(to))
	if err != nil {
		return nil, fmt.Errorf("read delivery counts per minute: %w", err)
	}
	var out []MinuteCounts
	var c MinuteCounts
	_, err = pgx.ForEachRow(rows, []any{&c.Minute, &c.Webhook, &c.Delivered, &c.Retried, &c.Failed, &c.Backlog}, func() error {
		r := c
		r.Minute = r.Minute.UTC()
		if c.Backlog != nil {
			v := *c.Backlog
			r.Backlog = &v
		}
		out = append(out, r)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read delivery counts per minute: %w", err)
	}
	return out, nil
}
