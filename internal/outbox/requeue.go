package outbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoFilter is returned by Requeue when the filter selects nothing: a
// requeue must name IDs, a webhook, a model, a time window or all failed rows.
var ErrNoFilter = errors.New("requeue: give delivery ids, a webhook, a model, --since or --all-failed")

// RequeueFilter selects the deliveries Requeue puts back to pending. Its
// conditions combine with AND.
type RequeueFilter struct {
	// IDs selects these deliveries, in state failed or delivered (sending a
	// delivered one again). Without IDs only failed rows are requeued.
	IDs []int64
	// Webhook and Model select by name.
	Webhook, Model string
	// Since selects rows whose last attempt is at most this long ago.
	Since time.Duration
	// AllFailed selects every failed row; needed when nothing else is given.
	AllFailed bool
	// ResetAttempts sets attempts to 0, giving the full retry schedule again.
	// Otherwise the attempts count is kept and a failed row gets one more
	// attempt, as with the plain SQL UPDATE.
	ResetAttempts bool
	// SkipSuperseded leaves alone the rows a later change of the same
	// object (webhook, model, key) was delivered after: sending them would
	// put older state last at the receiver.
	SkipSuperseded bool
}

// failedAtCaptureSQL is true for a row d that capture stored failed (its
// webhook's body_template failed to render): never attempted, and its body
// is the default body, not the template's, so Requeue leaves it alone.
const failedAtCaptureSQL = `(d.state = 'failed' AND d.attempts = 0)`

// FailedAtCapture reports whether a delivery in state with attempts was
// stored failed by capture (its body_template failed): it is never
// re-queued; fix the template and resend the object with walhook backfill.
// Every other failed row has made at least one attempt.
func FailedAtCapture(state State, attempts int) bool {
	return state == StateFailed && attempts == 0
}

// supersededSQL is true for a row d of which a later change of the same
// object was delivered.
const supersededSQL = `EXISTS (SELECT 1 FROM %[1]s AS l
	WHERE l.webhook = d.webhook AND l.model = d.model AND l.object_key = d.object_key
	  AND (l.commit_lsn, l.seq) > (d.commit_lsn, d.seq) AND l.state = 'delivered')`

// Requeue puts the deliveries f selects back to pending, due now, and returns
// how many it changed. It never touches pending or delivering rows, nor
// rows failed at capture (see FailedAtCapture and CountFailedAtCapture).
// It notifies running Dispatchers so the rows go out at once. now is the
// reference time for f.Since.
func (s *Store) Requeue(ctx context.Context, f RequeueFilter, now time.Time) (int64, error) {
	if len(f.IDs) == 0 && f.Webhook == "" && f.Model == "" && f.Since == 0 && !f.AllFailed {
		return 0, ErrNoFilter
	}
	if f.Since < 0 {
		return 0, fmt.Errorf("requeue: negative since %s", f.Since)
	}
	where, args := s.requeueWhere(f, now)
	where = append(where, "NOT "+failedAtCaptureSQL)
	set := "state = 'pending', next_attempt_at = now(), delivered_at = NULL, locked_until = NULL, locked_by = NULL"
	if f.ResetAttempts {
		set += ", attempts = 0"
	}
	if f.SkipSuperseded {
		where = append(where, "NOT "+fmt.Sprintf(supersededSQL, s.deliveries))
	}
	q := "UPDATE " + s.deliveries + " AS d SET " + set + " WHERE " + strings.Join(where, " AND ")
	var n int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, q, args...)
		if err != nil {
			return err
		}
		n = tag.RowsAffected()
		if n > 0 {
			_, err = tx.Exec(ctx, "SELECT pg_notify($1, '')", s.channel)
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("requeue: %w", err)
	}
	return n, nil
}

// requeueWhere is the condition of the rows f selects, on the deliveries
// table as d.
func (s *Store) requeueWhere(f RequeueFilter, now time.Time) (where []string, args []any) {
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	if len(f.IDs) > 0 {
		where = append(where, "id = ANY("+arg(f.IDs)+"::bigint[])", "state IN ('failed', 'delivered')")
	} else {
		where = append(where, "state = 'failed'")
	}
	if f.Webhook != "" {
		where = append(where, "webhook = "+arg(f.Webhook))
	}
	if f.Model != "" {
		where = append(where, "model = "+arg(f.Model))
	}
	if f.Since > 0 {
		where = append(where, "last_attempt_at >= "+arg(now.Add(-f.Since)))
	}
	return where, args
}

// Superseded counts the rows f selects (as Requeue would, without
// SkipSuperseded) that a later change of the same object was delivered
// after: retrying them puts older state last at the receiver.
func (s *Store) Superseded(ctx context.Context, f RequeueFilter, now time.Time) (int64, error) {
	if len(f.IDs) == 0 && f.Webhook == "" && f.Model == "" && f.Since == 0 && !f.AllFailed {
		return 0, ErrNoFilter
	}
	where, args := s.requeueWhere(f, now)
	where = append(where, "NOT "+failedAtCaptureSQL, fmt.Sprintf(supersededSQL, s.deliveries))
	var n int64
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM "+s.deliveries+" AS d WHERE "+strings.Join(where, " AND "), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count superseded deliveries: %w", err)
	}
	return n, nil
}

// CountFailedAtCapture counts the rows f selects that Requeue leaves alone
// because capture stored them failed (their body_template failed).
func (s *Store) CountFailedAtCapture(ctx context.Context, f RequeueFilter, now time.Time) (int64, error) {
	if len(f.IDs) == 0 && f.Webhook == "" && f.Model == "" && f.Since == 0 && !f.AllFailed {
		return 0, ErrNoFilter
	}
	where, args := s.requeueWhere(f, now)
	where = append(where, failedAtCaptureSQL)
	var n int64
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM "+s.deliveries+" AS d WHERE "+strings.Join(where, " AND "), args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("count deliveries failed at capture: %w", err)
	}
	return n, nil
}
