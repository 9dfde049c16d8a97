package outbox

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Every written outcome of a sent row records its attempt, numbered on
// after the last one; a released row records none; only the last
// AttemptsKept are kept; the purge of a delivery deletes its attempts.
func TestAttemptsRecordedTrimmedAndPurged(t *testing.T) {
	t.Parallel()
	s, pool := setup(t)
	ctx := context.Background()
	id := insert(t, pool, "w", "x", 100)
	other := insert(t, pool, "w", "y", 200)
	// An attempt left by an earlier delivery of the same id (ids restarted
	// by hand) is overwritten, not an error.
	exec(t, pool, `INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration, status) VALUES ($1, 1, now(), '9 s', 418)`, id)
	start := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	const total = AttemptsKept + 5
	for i := 1; i <= total; i++ {
		c, _ := claimIDs(t, s, "w", 10)
		var batch []Outcome
		for _, r := range c {
			o := Outcome{ID: r.ID, ClaimedAt: r.ClaimedAt, PrevAttemptAt: r.PrevAttemptAt, State: StatePending, Status: 500,
				Err: "HTTP 500: down", Sent: SentAttempt{Started: start.Add(time.Duration(i) * time.Second),
					Duration: time.Duration(i) * time.Millisecond, Response: fmt.Sprintf("down %d", i), Probe: i == 3, SpanID: "00f067aa0ba902b7"}}
			if r.ID == other {
				// Released unsent: no attempt.
				o = Outcome{ID: r.ID, ClaimedAt: r.ClaimedAt, PrevAttemptAt: r.PrevAttemptAt, State: StatePending, Mode: Released}
			}
			batch = append(batch, o)
		}
		if n, err := s.WriteOutcomes(ctx, "d1", batch); err != nil || n != 2 {
			t.Fatalf("attempt %d: WriteOutcomes = %d, %v", i, n, err)
		}
	}
	got, err := s.Attempts(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != AttemptsKept {
		t.Fatalf("%d attempts kept, want %d", len(got), AttemptsKept)
	}
	for k, a := range got {
		n := total - AttemptsKept + 1 + k
		if int(a.Attempt) != n || a.Status == nil || *a.Status != 500 || a.Error != nil ||
			a.Response == nil || *a.Response != fmt.Sprintf("down %d", n) ||
			!a.StartedAt.Equal(start.Add(time.Duration(n)*time.Second)) || a.Duration != time.Duration(n)*time.Millisecond ||
			a.SpanID == nil || *a.SpanID != "00f067aa0ba902b7" || a.Probe {
			t.Errorf("attempt %d: %+v", n, a)
		}
	}
	if a, _ := s.Attempts(ctx, other); len(a) != 0 {
		t.Errorf("a row released unsent has %d attempts", len(a))
	}
	// An outcome that is no longer this dispatcher's claim records nothing.
	// (The claim returns both rows, in an order this test does not fix.)
	c, _ := claimIDs(t, s, "w", 10)
	k := -1
	for i := range c {
		if c[i].ID == id {
			k = i
		}
	}
	if k < 0 {
		t.Fatalf("delivery %d was not claimed: %+v", id, c)
	}
	if n, err := s.WriteOutcomes(ctx, "d2", []Outcome{{ID: c[k].ID, ClaimedAt: c[k].ClaimedAt, State: StateDelivered,
		Status: 200, Sent: SentAttempt{Started: time.Now(), Duration: time.Millisecond}}}); err != nil || n != 0 {
		t.Fatalf("stale WriteOutcomes = %d, %v", n, err)
	}
	if a, _ := s.Attempts(ctx, c[k].ID); len(a) != AttemptsKept || a[AttemptsKept-1].Attempt != total {
		t.Errorf("a stale outcome recorded an attempt: %d kept, %+v", len(a), a)
	}
	// A transport error: no status, no response.
	if n, err := s.WriteOutcomes(ctx, "d1", []Outcome{{ID: c[k].ID, ClaimedAt: c[k].ClaimedAt, State: StateFailed,
		Err: "dial tcp: connection refused", Sent: SentAttempt{Started: time.Now(), Duration: time.Millisecond,
			Error: "dial tcp: connection refused"}}}); err != nil || n != 1 {
		t.Fatalf("WriteOutcomes = %d, %v", n, err)
	}
	a, _ := s.Attempts(ctx, id)
	if len(a) == 0 {
		t.Fatal("no attempts after a refused attempt")
	}
	if last := a[len(a)-1]; len(a) != AttemptsKept || last.Attempt != total+1 || last.Status != nil ||
		last.Response != nil || last.Error == nil || !strings.Contains(*last.Error, "connection refused") {
		t.Errorf("after a refused attempt: %d kept, last %+v", len(a), last)
	}

	// Retention deletes failed and delivered rows with their attempts, and
	// nobody else's.
	keep := insert(t, pool, "w", "z", 300)
	exec(t, pool, `INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration) VALUES ($1, 1, now(), '1ms')`, keep)
	exec(t, pool, `UPDATE walhook.deliveries SET last_attempt_at = now() - interval '40 days' WHERE id = $1`, id)
	if n, err := s.PurgeFailed(ctx, 30*24*time.Hour); err != nil || n != 1 {
		t.Fatalf("PurgeFailed = %d, %v", n, err)
	}
	if a, _ := s.Attempts(ctx, id); len(a) != 0 {
		t.Errorf("%d attempts of a purged failed row left", len(a))
	}
	exec(t, pool, `UPDATE walhook.deliveries SET state = 'delivered', delivered_at = now() - interval '8 days', locked_until = NULL WHERE id = $1`, keep)
	exec(t, pool, `INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration) VALUES ($1, 1, now(), '1ms')`, other)
	if n, err := s.PurgeDelivered(ctx, 7*24*time.Hour); err != nil || n != 1 {
		t.Fatalf("PurgeDelivered = %d, %v", n, err)
	}
	if a, _ := s.Attempts(ctx, keep); len(a) != 0 {
		t.Errorf("%d attempts of a purged delivered row left", len(a))
	}
	if a, _ := s.Attempts(ctx, other); len(a) != 1 {
		t.Errorf("the purge deleted the attempts of a row it kept (%d left)", len(a))
	}
}
