package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/walhook/walhook/internal/outbox"
)

// pgCPU returns the CPU seconds the cluster's processes used so far: the
// postmaster, its children alive now (backends, walsenders, autovacuum,
// checkpointer, ...) and those it reaped.
func (b *bench) pgCPU() float64 {
	pidText, err := os.ReadFile(filepath.Join(b.cl.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	first, _, _ := strings.Cut(string(pidText), "\n")
	pm, _ := strconv.Atoi(strings.TrimSpace(first))
	total := 0.0
	if f := statFields(pm); len(f) >= 15 {
		for _, i := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime
			v, _ := strconv.ParseFloat(f[i], 64)
			total += v
		}
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(pid); len(f) >= 13 && f[1] == strconv.Itoa(pm) {
			u, _ := strconv.ParseFloat(f[11], 64)
			s, _ := strconv.ParseFloat(f[12], 64)
			total += u + s
		}
	}
	return total / 100 // USER_HZ
}

// statFields are the fields of /proc/pid/stat after the command name:
// [0] state, [1] ppid, ... [11] utime, [12] stime, [13] cutime, [14] cstime.
func statFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
}

// walLSN is the server's current WAL insert position, in bytes.
func walLSN(ctx context.Context, pool *pgxpool.Pool) int64 {
	var n int64
	_ = pool.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn() - '0/0'`).Scan(&n)
	return n
}

// purgeAll deletes every delivered row of the outbox with the statement
// retention runs, and returns the WAL it wrote per row.
func purgeAll(ctx context.Context, pool *pgxpool.Pool) (float64, error) {
	s := outbox.New(pool, "walhook")
	w0 := walLSN(ctx, pool)
	var rows int64
	for {
		n, err := s.PurgeDelivered(ctx, 0)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return float64(walLSN(ctx, pool)-w0) / float64(max(rows, 1)), nil
		}
		rows += n
	}
}

// goal is one of the targets make bench checks.
type goal struct {
	name, phase, metric string
	target              float64
	atMost              bool // the figure must be <= target (else >=)
}

// goals are the cost and latency targets (docs/performance.md), read from
// the default burst (the outbox in the source database); a burst run with
// -outbox-database is shown beside them under its own name.
var goals = []goal{
	{"PostgreSQL CPU per 100,000 deliveries (live burst)", burstPhase, "PostgreSQL CPU per 100,000 deliveries", 9, true},
	{"WAL per delivery over its life", burstPhase, "walhook's WAL per delivery over its life", 1300, true},
	{"p50 at 1,000 commits/s right after the burst", burstPhase, "then 1,000 commits/s: p50", 3, true},
	{"p99 at 1,000 commits/s right after the burst", burstPhase, "then 1,000 commits/s: p99", 10, true},
	{"live burst", burstPhase, "deliveries/s, first commit to last delivery (walhook run, fresh outbox)", 7000, false},
	{"capture / pg_recvlogical", "capture", "walhook / pg_recvlogical", 0.5, false},
	{"restart: WAL from restart_lsn to the new change", burstPhase, restartWALMetric, 64, true},
	{"restart: start to the new change delivered", burstPhase, restartMetric, 1000, true},
}

// printGoals prints each goal's figure beside its target.
func (b *bench) printGoals() {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\ngoal\tfigure\ttarget\tmet")
	for _, g := range goals {
		for _, r := range b.results {
			name := g.name
			switch {
			case r.Metric != g.metric:
				continue
			case r.Phase == g.phase+outboxElsewhere:
				name += outboxElsewhere
			case r.Phase != g.phase:
				continue
			}
			met := r.Value >= g.target
			cmp := ">="
			if g.atMost {
				met, cmp = r.Value <= g.target, "<="
			}
			fmt.Fprintf(tw, "%s\t%.4g %s\t%s %g\t%v\n", name, r.Value, r.Unit, cmp, g.target, met)
		}
	}
	tw.Flush()
}

// percentiles returns the p50, p99 and maximum of ms (sorted in place).
func percentiles(ms []float64) (p50, p99, max float64) {
	if len(ms) == 0 {
		return 0, 0, 0
	}
	sort.Float64s(ms)
	pct := func(q float64) float64 { return ms[min(len(ms)-1, int(q*float64(len(ms))))] }
	return pct(0.5), pct(0.99), ms[len(ms)-1]
}

// printStatements prints the statements of the database of pool that took
// most time since the last reset, and resets the counts.
func printStatements(ctx context.Context, pool *pgxpool.Pool, title string) {
	if !statements {
		return
	}
	if _, err := pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		fmt.Fprintln(os.Stderr, "pg_stat_statements:", err)
		return
	}
	rows, err := pool.Query(ctx, `SELECT calls, round(total_exec_time::numeric, 1), round((total_exec_time / calls)::numeric, 3),
			rows, shared_blks_hit + shared_blks_read, wal_bytes, left(regexp_replace(query, '\s+', ' ', 'g'), 110)
		FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY total_exec_time DESC LIMIT 15`)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pg_stat_statements:", err)
		return
	}
	tw := tabwriter.NewWriter(os.Stderr, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "\n%s\ncalls\ttotal ms\tms/call\trows\tbuffers\twal bytes\tquery\n", title)
	for rows.Next() {
		var calls, nrows, bufs int64
		var total, per, wal float64
		var q string
		if err := rows.Scan(&calls, &total, &per, &nrows, &bufs, &wal, &q); err != nil {
			fmt.Fprintln(os.Stderr, err)
			break
		}
		fmt.Fprintf(tw, "%d\t%.1f\t%.3f\t%d\t%d\t%.0f\t%s\n", calls, total, per, nrows, bufs, wal, q)
	}
	rows.Close()
	tw.Flush()
	_, _ = pool.Exec(ctx, `SELECT pg_stat_statements_reset()`)
}

// commitToReceipt is the milliseconds from the commit time in a webhook's
// body (signal_received_timestamp) to now.
func commitToReceipt(body []byte, now time.Time) (float64, bool) {
	var p struct {
		TS json.Number `json:"signal_received_timestamp"`
	}
	if json.Unmarshal(body, &p) != nil {
		return 0, false
	}
	ts, err := p.TS.Float64()
	return float64(now.UnixMicro())/1e3 - ts*1e3, err == nil
}
