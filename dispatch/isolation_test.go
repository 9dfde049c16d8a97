package dispatch_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
)

// breakerLog records breaker transitions (the Observer side).
type breakerLog struct {
	mu     sync.Mutex
	states []string
}

func (b *breakerLog) Attempted(outbox.Attempt) {}
func (b *breakerLog) BreakerChanged(webhook string, s outbox.BreakerState) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.states = append(b.states, webhook+":"+string(s))
}
func (b *breakerLog) list() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.states...)
}

// A receiver that hangs takes only its own webhook's request slots and is
// paused by its breaker: the healthy webhook's rows, queued after the hung
// webhook's backlog, go out at once.
func TestHungWebhookDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	e := setup(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hung := newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	ok := newRecorder(t, nil)
	// The hung webhook's backlog comes first in the outbox.
	e.insertMany("hung", 400, 0)
	e.insertMany("ok", 50, 1000)
	obs := &breakerLog{}
	e.start(e.pool, testConfig(4,
		hookConfig("hung", hung.srv.URL, func(w *config.Webhook) { w.Timeout = config.Duration(time.Second) }),
		hookConfig("ok", ok.srv.URL)), func(o *dispatch.Options) { o.Observer = obs })
	// Old behaviour: 4 shared slots, all taken by the hung receiver for
	// 100 rounds of 1 s timeouts.
	waitFor(t, 8*time.Second, "the healthy webhook's 50 deliveries", func() bool { return ok.len() == 50 })
	if n := e.count(`webhook = 'ok' AND state = 'delivered'`); n != 50 {
		waitFor(t, 5*time.Second, "50 delivered rows", func() bool { return e.count(`webhook = 'ok' AND state = 'delivered'`) == 50 })
	}
	// The hung webhook is paused by its breaker after 5 timeouts: a
	// handful of attempts, no row failed.
	waitFor(t, 10*time.Second, "the breaker to open", func() bool {
		for _, s := range obs.list() {
			if s == "hung:open" {
				return true
			}
		}
		return false
	})
	time.Sleep(1500 * time.Millisecond)
	if n := hung.len(); n > 12 {
		t.Errorf("hung receiver got %d requests; the breaker should have paused it after 5 (2 in flight, then probes)", n)
	}
	if n := e.count(`state = 'failed'`); n != 0 {
		t.Errorf("%d rows failed while the breaker was open", n)
	}
}

// The breaker opens after consecutive 5xx, probes with one request at a
// time, and closes at the first success; then every row goes out, none
// failed (pausing spends no attempts), each object in order.
func TestBreakerOpensProbesAndCloses(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var healthy atomic.Bool
	var inFlight, maxWhileOpen atomic.Int32
	var opened atomic.Bool
	rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		if opened.Load() && n > maxWhileOpen.Load() {
			maxWhileOpen.Store(n)
		}
		if healthy.Load() {
			w.WriteHeader(204)
			return
		}
		w.WriteHeader(503)
	})
	var rows []delivery
	for i := range 60 {
		rows = append(rows, delivery{webhook: "w", key: string(rune('a' + i%20)), lsn: uint64(100 + i),
			body: `{"n":` + string(rune('0'+i%10)) + `}`})
	}
	ids := e.insert(rows...)
	obs := &breakerLog{}
	e.start(e.pool, testConfig(4, hookConfig("w", rec.srv.URL, func(w *config.Webhook) {
		w.Retry.MaxAttempts = 2 // fewer than the breaker's threshold
	})), func(o *dispatch.Options) { o.Observer = obs })
	waitFor(t, 10*time.Second, "the breaker to open", func() bool { return len(obs.list()) > 0 })
	opened.Store(true)
	// While open: the heartbeat row shows it, probes come one at a time.
	waitFor(t, 5*time.Second, "the open breaker in the dispatchers table", func() bool {
		var js string
		_ = e.pool.QueryRow(t.Context(), `SELECT webhooks::text FROM walhook.dispatchers`).Scan(&js)
		var m map[string]outbox.BreakerStatus
		_ = json.Unmarshal([]byte(js), &m)
		return m["w"].State == outbox.BreakerOpen || m["w"].State == outbox.BreakerProbing
	})
	before := rec.len()
	time.Sleep(2500 * time.Millisecond)
	probes := rec.len() - before
	if probes < 1 || probes > 3 {
		t.Errorf("%d probes in 2.5 s while open, want 1 to 3 (1 s, then 2 s)", probes)
	}
	if n := maxWhileOpen.Load(); n > 1 {
		t.Errorf("%d requests in flight while the breaker was open, want 1", n)
	}
	if n := e.count(`state = 'failed'`); n != 0 {
		t.Fatalf("%d rows failed: pausing must not spend attempts", n)
	}
	healthy.Store(true)
	waitFor(t, 15*time.Second, "every row delivered", func() bool { return e.count(`state = 'delivered'`) == len(ids) })
	got := obs.list()
	if len(got) != 2 || got[0] != "w:open" || got[1] != "w:closed" {
		t.Errorf("breaker transitions = %v, want [w:open w:closed]", got)
	}
	// Per-object order: each object's rows were delivered in commit order.
	var bad int
	_ = e.pool.QueryRow(t.Context(), `SELECT count(*) FROM (
		SELECT object_key, delivered_at, lag(delivered_at) OVER (PARTITION BY object_key ORDER BY commit_lsn) AS prev
		FROM walhook.deliveries) x WHERE delivered_at < prev`).Scan(&bad)
	if bad != 0 {
		t.Errorf("%d rows delivered before an earlier change of their object", bad)
	}
	// Every request is in the attempt history, the probes marked, the rows
	// released unsent while the breaker was open not at all.
	var recorded, probed, probedOK int
	if err := e.pool.QueryRow(t.Context(), `SELECT count(*), count(*) FILTER (WHERE probe),
		count(*) FILTER (WHERE probe AND status = 204) FROM walhook.attempts`).Scan(&recorded, &probed, &probedOK); err != nil {
		t.Fatal(err)
	}
	if recorded != rec.len() || probed < 2 || probedOK != 1 {
		t.Errorf("%d attempts recorded for %d requests, %d probes (%d succeeded); want one per request, the failed probes and the one that closed the breaker",
			recorded, rec.len(), probed, probedOK)
	}
}

// rate_limit spaces a webhook's requests.
func TestRateLimit(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var mu sync.Mutex
	var at []time.Time
	rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		mu.Lock()
		at = append(at, time.Now())
		mu.Unlock()
		w.WriteHeader(204)
	})
	e.insertMany("w", 45, 0)
	e.start(e.pool, testConfig(8, hookConfig("w", rec.srv.URL, func(w *config.Webhook) {
		w.Rate = 20 // rate_limit: 20/s
	})))
	waitFor(t, 15*time.Second, "45 deliveries", func() bool { return rec.len() == 45 })
	mu.Lock()
	defer mu.Unlock()
	// Any one-second window holds at most the rate plus the burst (2).
	for i := range at {
		n := 0
		for j := i; j < len(at) && at[j].Sub(at[i]) < time.Second; j++ {
			n++
		}
		if n > 22 {
			t.Fatalf("%d requests within one second, rate limit 20/s", n)
		}
	}
	if d := at[len(at)-1].Sub(at[0]); d < 1500*time.Millisecond {
		t.Errorf("45 requests at 20/s took %s", d)
	}
}

// A low rate_limit keeps delivering: with 16 request slots at
// 30/m, each slot used to book a token up to 32 s ahead, past the claim's
// deadline (7 s with a 1 s timeout), so the row was released, its token
// wasted, and the next claim booked further still: 4 deliveries, then
// none. Now a webhook holds only the rows its tokens can send in time.
func TestLowRateLimitKeepsDelivering(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		rate float64 // per second
		want int     // deliveries to wait for: past where the old code stalled
	}{
		{"30/m", 30.0 / 60, 10},
		{"1000/h", 1000.0 / 3600, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t)
			var mu sync.Mutex
			var at []time.Time
			rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
				mu.Lock()
				at = append(at, time.Now())
				mu.Unlock()
				w.WriteHeader(204)
			})
			e.insertMany("w", 40, 0)
			e.start(e.pool, testConfig(16, hookConfig("w", rec.srv.URL, func(w *config.Webhook) {
				w.Rate = tc.rate
				w.Timeout = config.Duration(time.Second)
			})))
			// Bounded by twice the time the rate needs.
			bound := 2 * time.Duration(float64(tc.want)/tc.rate*float64(time.Second))
			waitFor(t, bound, fmt.Sprintf("%d deliveries at %s", tc.want, tc.name), func() bool { return rec.len() >= tc.want })
			mu.Lock()
			defer mu.Unlock()
			// The limit holds: n requests span at least (n-1-burst)/rate.
			n := len(at)
			if span, least := at[n-1].Sub(at[0]), time.Duration(float64(n-2)/tc.rate*float64(time.Second)); span < least*9/10 {
				t.Errorf("%d requests within %s at %s", n, span, tc.name)
			}
			if r := e.count(`state = 'failed'`); r != 0 {
				t.Errorf("%d rows failed", r)
			}
		})
	}
}

// Failed rows are deleted after dispatch.failed_retention, delivered rows
// after dispatch.retention; nothing younger is touched.
func TestFailedRetention(t *testing.T) {
	t.Parallel()
	e := setup(t)
	oldFailed := e.insertOne("w", `{}`)
	newFailed := e.insertOne("w", `{}`)
	oldDelivered := e.insertOne("w", `{}`)
	e.exec(`UPDATE walhook.deliveries SET state = 'failed', attempts = 8, last_attempt_at = now() - interval '31 days' WHERE id = $1`, oldFailed)
	e.exec(`UPDATE walhook.deliveries SET state = 'failed', attempts = 8, last_attempt_at = now() - interval '29 days' WHERE id = $1`, newFailed)
	e.exec(`UPDATE walhook.deliveries SET state = 'delivered', attempts = 1, last_attempt_at = now() - interval '8 days',
		delivered_at = now() - interval '8 days' WHERE id = $1`, oldDelivered)
	e.exec(`INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration)
		SELECT id, 1, now(), interval '1 ms' FROM walhook.deliveries`)
	rec := newRecorder(t, nil)
	cfg := testConfig(2, hookConfig("w", rec.srv.URL))
	cfg.Dispatch.FailedRetention = config.Duration(30 * 24 * time.Hour)
	e.start(e.pool, cfg)
	waitFor(t, 10*time.Second, "old rows purged", func() bool { return e.count(`id IN ($1, $2)`, oldFailed, oldDelivered) == 0 })
	if e.count(`id = $1 AND state = 'failed'`, newFailed) != 1 {
		t.Error("a failed row younger than failed_retention was deleted")
	}
	rows, _ := e.pool.Query(t.Context(), `SELECT delivery_id FROM walhook.attempts ORDER BY 1`)
	if left, err := pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil || len(left) != 1 || left[0] != newFailed {
		t.Errorf("attempts left after the purge: %v (%v), want those of %d", left, err, newFailed)
	}
}

// Logs name a webhook's receiver by scheme and host only: a Slack-style
// URL carries its secret in the path.
func TestLogsNeverShowTheURLPath(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ int) { w.WriteHeader(500) })
	var logs syncBuffer
	id := e.insertOne("w", `{}`)
	e.start(e.pool, testConfig(2, hookConfig("w", rec.srv.URL+"/services/T000/B000/XXXXsecretXXXX?token=abc")),
		func(o *dispatch.Options) { o.Logger = zerolog.New(&logs) })
	e.waitState(id, "failed", 10*time.Second)
	out := logs.String()
	if !strings.Contains(out, "delivery attempt failed") {
		t.Fatalf("no failed attempt logged:\n%s", out)
	}
	for _, secret := range []string{"XXXXsecretXXXX", "token=abc", "/services/"} {
		if strings.Contains(out, secret) {
			t.Errorf("log shows %q:\n%s", secret, out)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The receiver's response body is never logged (docs/queue.md), whatever
// the line: a failed attempt, a failed delivery, the breaker opening. It
// can echo the request. The row's last_error keeps its start (it was
// logged at warn level).
func TestLogsNeverShowTheResponseBody(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const echo = "ECHOED-PAYLOAD-c29tZSBzZWNyZXQ"
	rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		w.WriteHeader(503)
		_, _ = w.Write([]byte(`{"error": "unavailable", "request": "` + echo + `"}`))
	})
	// "once" fails each row at its first attempt and opens its breaker;
	// "again" retries.
	for range 6 {
		e.insertOne("once", `{}`)
	}
	e.insertOne("again", `{}`)
	var logs syncBuffer
	obs := &breakerLog{}
	e.start(e.pool, testConfig(4,
		hookConfig("once", rec.srv.URL, func(w *config.Webhook) { w.Retry.MaxAttempts = 1 }),
		hookConfig("again", rec.srv.URL)),
		func(o *dispatch.Options) {
			o.Logger = zerolog.New(&logs).Level(zerolog.DebugLevel)
			o.Observer = obs
		})
	waitFor(t, 15*time.Second, "failed deliveries, a retry and the breaker open", func() bool {
		return e.count(`state = 'failed'`) > 0 && len(obs.list()) > 0 && strings.Contains(logs.String(), "delivery attempt failed")
	})
	out := logs.String()
	for _, msg := range []string{"delivery attempt failed", "delivery failed after its last attempt", "circuit opened"} {
		if !strings.Contains(out, msg) {
			t.Errorf("no %q line in the log:\n%s", msg, out)
		}
	}
	if strings.Contains(out, echo) {
		t.Errorf("the log shows the response body:\n%s", out)
	}
	if n := e.count(`last_error LIKE '%' || $1 || '%'`, echo); n == 0 {
		t.Error("no row keeps the start of the response body in last_error")
	}
}
