package outbox

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// BenchmarkDeliveryLife reports the WAL PostgreSQL writes for one delivery
// over its whole life, statement by statement as the product runs them:
// enqueued by capture (COPY and checkpoint, 1,000 rows per transaction),
// claimed and its outcome written (batches of 128, as under load), and
// purged. Full-page images (fpi) are counted apart: they depend on when
// the last checkpoint was, and the benchmark starts right after one. On
// PostgreSQL 15+ each stage's WAL is also split by kind (heap, index, lock,
// other).
func BenchmarkDeliveryLife(b *testing.B) {
	const rows, perTx, batch = 20000, 1000, 128
	body := `{"event":"created","model":"dcim.device","data":{"id":1,"name":"` + strings.Repeat("x", 400) + `"}}`
	for range b.N {
		s, pool := setup(b)
		ctx := context.Background()
		stages := []struct {
			name string
			run  func() error
		}{
			{"enqueue", func() error { return lifeEnqueue(ctx, s, pool, rows, perTx, body) }},
			{"claim+outcome", func() error { return lifeDeliver(ctx, s, batch) }},
			{"purge", func() error {
				for {
					n, err := s.PurgeDelivered(ctx, 0)
					if err != nil || n == 0 {
						return err
					}
				}
			}},
		}
		exec(b, pool, "CHECKPOINT")
		var total float64
		ranges := make([][2]int64, len(stages))
		for i, st := range stages {
			w0, f0 := walNow(b, pool)
			if err := st.run(); err != nil {
				b.Fatalf("%s: %v", st.name, err)
			}
			w1, f1 := walNow(b, pool)
			ranges[i] = [2]int64{w0, w1}
			total += float64(w1 - w0)
			b.ReportMetric(float64(w1-w0)/rows, "wal-B/delivery/"+st.name)
			b.ReportMetric(float64(f1-f0)/rows, "fpi/delivery/"+st.name)
		}
		b.ReportMetric(total/rows, "wal-B/delivery")
		// Where each stage's WAL goes: heap tuples, index entries, row
		// locks (pg_walinspect, PostgreSQL 15+).
		if _, err := pool.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_walinspect"); err == nil {
			exec(b, pool, "SELECT pg_switch_wal()") // the ranges must be flushed to be read
			for i, st := range stages {
				for kind, bytes := range walByKind(b, pool, ranges[i]) {
					b.ReportMetric(float64(bytes)/rows, "wal-B/delivery/"+st.name+"/"+kind)
				}
			}
		}
		if n := count(b, pool, "true"); n != 0 {
			b.Fatalf("%d rows left after the purge", n)
		}
	}
}

// walByKind sums the WAL records between two positions by kind: "heap"
// (tuples written: inserts, updates, deletes), "index" (B-tree entries and
// page splits), "lock" (row locks), "other".
func walByKind(tb testing.TB, pool *pgxpool.Pool, r [2]int64) map[string]int64 {
	tb.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT CASE
			WHEN "resource_manager/record_type" LIKE 'Heap/LOCK%' THEN 'lock'
			WHEN "resource_manager/record_type" LIKE 'Heap%' THEN 'heap'
			WHEN "resource_manager/record_type" LIKE 'Btree/%' THEN 'index'
			ELSE 'other' END, sum(combined_size)::bigint
		FROM pg_get_wal_stats(('0/0'::pg_lsn + $1::numeric), ('0/0'::pg_lsn + $2::numeric), true)
		GROUP BY 1`, r[0], r[1])
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]int64{}
	for rows.Next() {
		var kind string
		var n int64
		if err := rows.Scan(&kind, &n); err != nil {
			tb.Fatal(err)
		}
		out[kind] = n
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return out
}

// walNow returns the WAL insert position and the full-page images written
// so far (0 before PostgreSQL 14, which lacks pg_stat_wal).
func walNow(tb testing.TB, pool *pgxpool.Pool) (lsn int64, fpi int64) {
	tb.Helper()
	ctx := context.Background()
	if err := pool.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn() - '0/0'`).Scan(&lsn); err != nil {
		tb.Fatal(err)
	}
	_ = pool.QueryRow(ctx, `SELECT wal_fpi FROM pg_stat_wal`).Scan(&fpi)
	return lsn, fpi
}

// lifeEnqueue writes rows deliveries as capture does: per transaction a
// COPY of perTx rows and the checkpoint.
func lifeEnqueue(ctx context.Context, s *Store, pool *pgxpool.Pool, rows, perTx int, body string) error {
	st := s.Enqueue()
	for tx := 0; tx < rows/perTx; tx++ {
		err := pgx.BeginFunc(ctx, pool, func(t pgx.Tx) error {
			lsn := int64(tx+1) << 20
			_, err := t.CopyFrom(ctx, st.Table, st.Columns, pgx.CopyFromSlice(perTx, func(i int) ([]any, error) {
				return []any{"w", "created", "dcim.device", fmt.Sprint(tx*perTx + i), lsn, int32(i), time.Now(), body,
					string(StatePending), nil, nil}, nil
			}))
			if err != nil {
				return err
			}
			_, err = t.Exec(ctx, st.Checkpoint, "slot", fmt.Sprintf("0/%X", lsn+1))
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// lifeDeliver claims every row in batches and writes each batch's outcome:
// delivered on the first attempt, the attempt recorded.
func lifeDeliver(ctx context.Context, s *Store, batch int) error {
	for {
		res, err := s.Claim(ctx, ClaimRequest{By: "d1", Webhooks: []string{"w"}, Limits: []int32{int32(batch)},
			Leases: []time.Duration{time.Minute}})
		if err != nil {
			return err
		}
		claimed := res.Rows
		if len(claimed) == 0 {
			return nil
		}
		out := make([]Outcome, len(claimed))
		for i, c := range claimed {
			out[i] = Outcome{ID: c.ID, ClaimedAt: c.ClaimedAt, State: StateDelivered, Status: 204,
				Sent: SentAttempt{Started: time.Now(), Duration: time.Millisecond}}
		}
		n, err := s.WriteOutcomes(ctx, "d1", out)
		if err != nil {
			return err
		}
		if n != int64(len(out)) {
			return fmt.Errorf("outcomes: %d of %d written", n, len(out))
		}
	}
}
