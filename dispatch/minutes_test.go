package dispatch_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
)

// minuteRow is a row of the minutes table.
type minuteRow struct {
	delivered, retried, failed int64
	backlog                    *int64
}

func (e *testEnv) minutes(webhook string, minute time.Time) (minuteRow, bool) {
	e.t.Helper()
	var r minuteRow
	err := e.pool.QueryRow(context.Background(), `SELECT delivered, retried, failed, backlog FROM walhook.minutes
		WHERE webhook = $1 AND minute = $2`, webhook, outbox.Minute(minute)).Scan(&r.delivered, &r.retried, &r.failed, &r.backlog)
	if err != nil {
		return r, false
	}
	return r, true
}

// sumMinutes adds up the attempts of webhook over every minute.
func (e *testEnv) sumMinutes(webhook string) minuteRow {
	e.t.Helper()
	var r minuteRow
	err := e.pool.QueryRow(context.Background(), `SELECT coalesce(sum(delivered), 0), coalesce(sum(retried), 0), coalesce(sum(failed), 0)
		FROM walhook.minutes WHERE webhook = $1`, webhook).Scan(&r.delivered, &r.retried, &r.failed)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// While a dispatcher runs, its attempts reach the minutes table by outcome
// every MinutesEvery, and the backlog is sampled once per minute.
func TestMinutesCountAttemptsWhileRunning(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ok := newRecorder(t, nil)
	bad := newRecorder(t, status(422))
	var skew atomic.Int64 // the test moves the dispatcher's clock forward
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	cfg := testConfig(4, hookConfig("ok", ok.srv.URL), hookConfig("bad", bad.srv.URL, func(w *config.Webhook) { w.Retry.MaxAttempts = 2 }))
	// One change of ok waits an hour for its retry: the backlog.
	waiting := e.insertOne("ok", `{}`)
	e.exec(`UPDATE walhook.deliveries SET next_attempt_at = now() + interval '1 hour' WHERE id = $1`, waiting)
	e.start(e.pool, cfg, func(o *dispatch.Options) { o.MinutesEvery = 50 * time.Millisecond; o.Now = now })
	for i := range 5 {
		e.insertOne("ok", fmt.Sprintf(`{"n":%d}`, i))
	}
	e.insertOne("bad", `{"n":1}`)
	e.insertOne("bad", `{"n":2}`)
	waitFor(t, 10*time.Second, "the attempts in the minutes table", func() bool {
		return e.sumMinutes("ok") == minuteRow{delivered: 5} && e.sumMinutes("bad") == minuteRow{retried: 2, failed: 2}
	})
	// A new minute: the backlog is sampled again, after the sends.
	skew.Store(int64(time.Minute))
	later := now()
	waitFor(t, 10*time.Second, "the backlog sampled in the next minute", func() bool {
		okRow, found1 := e.minutes("ok", later)
		badRow, found2 := e.minutes("bad", later)
		return found1 && found2 && okRow.backlog != nil && *okRow.backlog == 1 && badRow.backlog != nil && *badRow.backlog == 0
	})
	if n := ok.len(); n != 5 {
		t.Fatalf("ok received %d requests, want 5", n)
	}
}

// Counts are written when Run returns, and several dispatchers add theirs
// to the same minute.
func TestMinutesWrittenOnStopAndSummed(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ int) { w.WriteHeader(http.StatusOK) })
	minute := time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC)
	cfg := testConfig(4, hookConfig("w", rec.srv.URL))
	// The counts are written at stop only: the interval never ends.
	opts := func(o *dispatch.Options) { o.MinutesEvery = time.Hour; o.Now = func() time.Time { return minute } }
	for i, want := range []int64{3, 7} {
		stop := e.start(e.pool, cfg, opts, func(o *dispatch.Options) { o.ID = fmt.Sprintf("d%d", i) })
		for range 3 + i {
			e.insertOne("w", `{}`)
		}
		waitFor(t, 10*time.Second, "the deliveries", func() bool { return e.count(`state = 'delivered'`) == int(want) })
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		if got, _ := e.minutes("w", minute); got.delivered != want || got.retried != 0 || got.failed != 0 {
			t.Fatalf("after dispatcher %d stopped: minute row %+v, want %d delivered", i, got, want)
		}
	}
}

// Counts whose write fails are kept and written with the next ones.
func TestMinutesKeptWhileTheTableCannotBeWritten(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, nil)
	e.exec(`ALTER TABLE walhook.minutes RENAME TO minutes_away`)
	e.start(e.pool, testConfig(2, hookConfig("w", rec.srv.URL)), func(o *dispatch.Options) { o.MinutesEvery = 20 * time.Millisecond })
	for range 3 {
		e.insertOne("w", `{}`)
	}
	waitFor(t, 10*time.Second, "the deliveries", func() bool { return e.count(`state = 'delivered'`) == 3 })
	time.Sleep(100 * time.Millisecond) // a few writes fail meanwhile
	e.exec(`ALTER TABLE walhook.minutes_away RENAME TO minutes`)
	waitFor(t, 10*time.Second, "the counts in the minutes table", func() bool { return e.sumMinutes("w") == minuteRow{delivered: 3} })
}
