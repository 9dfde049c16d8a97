package outbox

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Rows capture stores failed because their body_template failed
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
		[]string{`{"default":1}`, `{"default":2}`}, []string{string(StateFailed), ""}, []string{"body_template: boom", ""},
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

// A claim the client gives up on (its context's deadline) is cancelled by
// the server itself, not committed: its rows would otherwise
// stay delivering, claimed by a dispatcher that never saw them, until their
// lease ends. pgx sends a cancel request when it gives up, but that needs
// a new connection, which a dead network path or a pooler does not
// deliver. A trigger makes the claim slower than the deadline and ignores
// such cancel requests, as if they never arrived.
func TestClaimGivenUpDoesNotCommit(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	for i := range 10 {
		insert(t, pool, "w", fmt.Sprint(i), 100+i)
	}
	exec(t, pool, `CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			BEGIN
				PERFORM pg_sleep(0.3);
			EXCEPTION WHEN query_canceled THEN
				IF SQLERRM LIKE '%statement timeout%' THEN RAISE; END IF;
			END;
			RETURN NEW;
		END $$`)
	exec(t, pool, `CREATE TRIGGER slow BEFORE UPDATE ON walhook.deliveries FOR EACH ROW EXECUTE FUNCTION slow()`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req := ClaimRequest{By: "d1", Webhooks: []string{"w"}, Limits: []int32{10}, Leases: []time.Duration{time.Minute}}
	start := time.Now()
	c, err := s.Claim(ctx, req)
	if err == nil {
		t.Fatalf("a claim of 3 s with a deadline of 1 s returned %d rows", len(c.Rows))
	}
	t.Logf("claim gave up after %s: %v", time.Since(start), err)
	// Long enough for the statement to have finished on the server.
	time.Sleep(3 * time.Second)
	if n := count(t, pool, "state = 'delivering'"); n != 0 {
		t.Errorf("%d rows delivering after a claim the client gave up on", n)
	}
	// With time enough, the same claim works.
	exec(t, pool, `DROP TRIGGER slow ON walhook.deliveries`)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if c, err := s.Claim(ctx2, req); err != nil || len(c.Rows) != 10 {
		t.Errorf("Claim = %d rows, %v; want 10", len(c.Rows), err)
	}
}
