package outbox

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Rows capture stores failed because their body_template failed (issue 24)
// were never purged (no last_attempt_at) and a retry sent their stored
// body, the default body, not the template's. Written by the enqueue
// statement they now carry last_attempt_at, so failed_retention deletes
// them; Requeue (walhook retry, the page) leaves them alone and counts
// them.
func TestRowsFailedAtCaptureArePurgedAndNotRequeued(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	ctx := context.Background()
	committed := time.Now().Add(-2 * time.Hour)
	args := []any{
		[]string{"w", "w"}, []string{"created", "created"}, []string{"M", "M"}, []string{"1", "2"},
		[]string{"0/10", "0/20"}, []int32{0, 0}, []time.Time{committed, committed},
		[]string{`{"default":1}`, `{"default":2}`}, []string{StateFailed, ""}, []string{"body_template: boom", ""},
	}
	exec(t, pool, s.Enqueue().Insert, args...)
	var failed, pending int64
	if err := pool.QueryRow(ctx, `SELECT id FROM walhook.deliveries WHERE object_key = '1'`).Scan(&failed); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT id FROM walhook.deliveries WHERE object_key = '2'`).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	var at pgtype.Timestamptz
	if err := pool.QueryRow(ctx, `SELECT last_attempt_at FROM walhook.deliveries WHERE id = $1`, failed).Scan(&at); err != nil {
		t.Fatal(err)
	}
	if !at.Valid || !at.Time.Equal(committed.Truncate(time.Microsecond)) {
		t.Errorf("last_attempt_at of a row failed at capture = %v, want its commit time %v", at, committed)
	}
	// Neither walhook retry nor the page re-queues it.
	for _, f := range []RequeueFilter{{AllFailed: true}, {IDs: []int64{failed}}, {Webhook: "w", ResetAttempts: true}} {
		if n, err := s.Requeue(ctx, f, time.Now()); err != nil || n != 0 {
			t.Errorf("Requeue(%+v) = %d, %v; want 0", f, n, err)
		}
		if n, err := s.CountFailedAtCapture(ctx, f, time.Now()); err != nil || n != 1 {
			t.Errorf("CountFailedAtCapture(%+v) = %d, %v; want 1", f, n, err)
		}
	}
	if st := state(t, pool, failed); st != StateFailed {
		t.Errorf("row failed at capture is %s after the retries", st)
	}
	// A row that failed after its attempts is still re-queued.
	exec(t, pool, `UPDATE walhook.deliveries SET state = 'failed', attempts = 3, last_attempt_at = now() WHERE id = $1`, pending)
	if n, err := s.Requeue(ctx, RequeueFilter{AllFailed: true}, time.Now()); err != nil || n != 1 {
		t.Errorf("Requeue of a row failed after its attempts = %d, %v; want 1", n, err)
	}
	// failed_retention of an hour deletes it.
	if n, err := s.PurgeFailed(ctx, time.Hour); err != nil || n != 1 {
		t.Errorf("PurgeFailed = %d, %v; want the row failed at capture", n, err)
	}
	if c := count(t, pool, "true"); c != 1 {
		t.Errorf("%d rows left, want 1", c)
	}
}
