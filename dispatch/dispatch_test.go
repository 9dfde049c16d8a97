package dispatch_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
)

// received is one request a test receiver got.
type received struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// recorder is an httptest receiver that records every request and answers
// with respond (default 204).
type recorder struct {
	mu      sync.Mutex
	reqs    []received
	respond func(w http.ResponseWriter, r *http.Request, n int)
	srv     *httptest.Server
}

func newRecorder(t testing.TB, respond func(w http.ResponseWriter, r *http.Request, n int)) *recorder {
	rec := &recorder{respond: respond}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, received{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Body: body})
		n := len(rec.reqs)
		rec.mu.Unlock()
		if rec.respond != nil {
			rec.respond(w, r, n)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (r *recorder) requests() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.reqs...)
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

func status(code int) func(http.ResponseWriter, *http.Request, int) {
	return func(w http.ResponseWriter, _ *http.Request, _ int) { w.WriteHeader(code) }
}

func TestNewRejectsBadOptions(t *testing.T) {
	e := setup(t)
	tests := []struct {
		name string
		opts dispatch.Options
	}{
		{"nil pool", dispatch.Options{Config: testConfig(1)}},
		{"nil config", dispatch.Options{Pool: e.pool}},
		{"relative url", dispatch.Options{Pool: e.pool, Config: testConfig(1, hookConfig("w", "/hook"))}},
		{"ftp url", dispatch.Options{Pool: e.pool, Config: testConfig(1, hookConfig("w", "ftp://x/"))}},
		{"signature header configured", dispatch.Options{Pool: e.pool, Config: testConfig(1, hookConfig("w", "http://x/",
			func(w *config.Webhook) { w.Headers = map[string]string{"x-hook-signature": "forged"} }))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := dispatch.New(tt.opts); err == nil {
				t.Fatal("New accepted bad options")
			}
		})
	}
}

func TestDeliverSignedRequest(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, nil)
	const secret = "It's a secret!"
	signed := hookConfig("signed", rec.srv.URL+"/hooks/signed", func(w *config.Webhook) {
		w.HTTPMethod = "PUT"
		w.ContentType = "application/vnd.api+json"
		w.Secret = secret
		w.Headers = map[string]string{"Authorization": "Bearer t0k3n", "x-custom": "yes"}
	})
	plain := hookConfig("plain", rec.srv.URL+"/hooks/plain")
	body := `{"event": "created", "signal_received_timestamp": 1508769597.123456, "model": "Site", "data": {"id": 7, "name": "Zürich"}}`
	idSigned := e.insertOne("signed", body)
	idPlain := e.insertOne("plain", body)
	e.start(e.pool, testConfig(4, signed, plain), func(o *dispatch.Options) { o.Version = "1.2.3" })

	r := e.waitState(idSigned, "delivered", 10*time.Second)
	if r.Attempts != 1 || deref(r.LastStatus) != 204 || r.LastError != nil || r.LockedBy != nil || r.LockedUntil != nil || r.DeliveredAt == nil {
		t.Errorf("delivered row = %+v", r)
	}
	e.waitState(idPlain, "delivered", 10*time.Second)

	byPath := map[string]received{}
	for _, req := range rec.requests() {
		byPath[req.Path] = req
	}
	got := byPath["/hooks/signed"]
	if got.Method != "PUT" || string(got.Body) != body {
		t.Errorf("signed request: %s %q", got.Method, got.Body)
	}
	m := hmac.New(sha512.New, []byte(secret))
	m.Write([]byte(body))
	wantHeaders := map[string]string{
		"X-Hook-Signature":   hex.EncodeToString(m.Sum(nil)),
		"X-Walhook-Delivery": strconv.FormatInt(idSigned, 10),
		"User-Agent":         "walhook/1.2.3",
		"Content-Type":       "application/vnd.api+json",
		"Authorization":      "Bearer t0k3n",
		"X-Custom":           "yes",
	}
	for k, v := range wantHeaders {
		if g := got.Header.Get(k); g != v {
			t.Errorf("header %s = %q, want %q", k, g, v)
		}
	}
	p := byPath["/hooks/plain"]
	if p.Method != "POST" || p.Header.Get("Content-Type") != "application/json" || string(p.Body) != body {
		t.Errorf("plain request: %s %s %q", p.Method, p.Header.Get("Content-Type"), p.Body)
	}
	if _, ok := p.Header["X-Hook-Signature"]; ok {
		t.Error("X-Hook-Signature sent without a secret")
	}
	if p.Header.Get("X-Walhook-Delivery") != strconv.FormatInt(idPlain, 10) {
		t.Errorf("plain X-Walhook-Delivery = %q", p.Header.Get("X-Walhook-Delivery"))
	}
}

func TestRetryUntilFailedThenRequeue(t *testing.T) {
	t.Parallel()
	e := setup(t)
	// 422 rather than 5xx: seven failures in a row would open the circuit
	// breaker, which pauses rather than spends attempts (TestBreaker).
	rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		w.WriteHeader(422)
		io.WriteString(w, "boom")
	})
	e.start(e.pool, testConfig(2, hookConfig("w", rec.srv.URL)))
	id := e.insertOne("w", `{"n":1}`)

	r := e.waitState(id, "failed", 10*time.Second)
	if r.Attempts != 3 || deref(r.LastStatus) != 422 || deref(r.LastError) != "HTTP 422: boom" || r.LockedBy != nil || r.LastAttemptAt == nil {
		t.Fatalf("failed row = %+v (error %v)", r, deref(r.LastError))
	}
	if n := rec.len(); n != 3 {
		t.Fatalf("receiver got %d requests, want 3", n)
	}

	// The documented SQL retry: one more attempt, attempts kept, no NOTIFY
	// (the poll picks it up).
	e.exec(`UPDATE walhook.deliveries SET state = 'pending', next_attempt_at = now() WHERE state = 'failed'`)
	waitFor(t, 10*time.Second, "4th request", func() bool { return rec.len() == 4 })
	r = e.waitState(id, "failed", 10*time.Second)
	if r.Attempts != 4 {
		t.Errorf("attempts after SQL retry = %d, want 4", r.Attempts)
	}
	time.Sleep(200 * time.Millisecond)
	if n := rec.len(); n != 4 {
		t.Fatalf("SQL retry gave %d attempts, want exactly 1", n-3)
	}

	// Requeue with ResetAttempts: the full schedule again.
	n, err := outbox.New(e.pool, "walhook").Requeue(context.Background(),
		outbox.RequeueFilter{IDs: []int64{id}, ResetAttempts: true}, time.Now())
	if err != nil || n != 1 {
		t.Fatalf("Requeue = %d, %v", n, err)
	}
	waitFor(t, 10*time.Second, "7 requests", func() bool { return rec.len() == 7 })
	r = e.waitState(id, "failed", 10*time.Second)
	if r.Attempts != 3 {
		t.Errorf("attempts after reset requeue = %d, want 3", r.Attempts)
	}
	time.Sleep(200 * time.Millisecond)
	reqs := rec.requests()
	if len(reqs) != 7 {
		t.Fatalf("got %d requests, want 7", len(reqs))
	}
	for _, req := range reqs {
		if req.Header.Get("X-Walhook-Delivery") != strconv.FormatInt(id, 10) {
			t.Fatalf("X-Walhook-Delivery changed across retries: %q", req.Header.Get("X-Walhook-Delivery"))
		}
	}
}

func TestRequeueFilters(t *testing.T) {
	t.Parallel()
	e := setup(t)
	type ids struct{ failedA1, failedB1Old, failedA2, delivered, pending, delivering int64 }
	// reset recreates the fixture: rows of webhooks w1/w2, models A/B.
	reset := func() ids {
		e.exec(`TRUNCATE walhook.deliveries RESTART IDENTITY`)
		got := e.insert(
			delivery{webhook: "w1", model: "A", key: "1", lsn: 1},
			delivery{webhook: "w1", model: "B", key: "2", lsn: 2},
			delivery{webhook: "w2", model: "A", key: "3", lsn: 3},
			delivery{webhook: "w1", model: "A", key: "4", lsn: 4},
			delivery{webhook: "w1", model: "A", key: "5", lsn: 5},
			delivery{webhook: "w1", model: "A", key: "6", lsn: 6},
		)
		x := ids{got[0], got[1], got[2], got[3], got[4], got[5]}
		e.exec(`UPDATE walhook.deliveries SET state = 'failed', attempts = 8, last_attempt_at = now() - interval '1 minute',
			last_status = 500, last_error = 'HTTP 500: x', next_attempt_at = now() + interval '1 day' WHERE id = ANY($1)`,
			[]int64{x.failedA1, x.failedB1Old, x.failedA2})
		e.exec(`UPDATE walhook.deliveries SET last_attempt_at = now() - interval '2 hours' WHERE id = $1`, x.failedB1Old)
		e.exec(`UPDATE walhook.deliveries SET state = 'delivered', attempts = 1, delivered_at = now(), last_attempt_at = now() WHERE id = $1`, x.delivered)
		e.exec(`UPDATE walhook.deliveries SET state = 'delivering', attempts = 1, locked_until = now() + interval '1 hour', locked_by = 'other' WHERE id = $1`, x.delivering)
		return x
	}
	x := reset()
	tests := []struct {
		name    string
		filter  outbox.RequeueFilter
		want    []int64
		wantErr error
	}{
		{name: "no filter", filter: outbox.RequeueFilter{ResetAttempts: true}, wantErr: outbox.ErrNoFilter},
		{name: "all failed", filter: outbox.RequeueFilter{AllFailed: true}, want: []int64{x.failedA1, x.failedB1Old, x.failedA2}},
		{name: "webhook", filter: outbox.RequeueFilter{Webhook: "w1"}, want: []int64{x.failedA1, x.failedB1Old}},
		{name: "model", filter: outbox.RequeueFilter{Model: "A"}, want: []int64{x.failedA1, x.failedA2}},
		{name: "webhook and model", filter: outbox.RequeueFilter{Webhook: "w1", Model: "A"}, want: []int64{x.failedA1}},
		{name: "since", filter: outbox.RequeueFilter{Since: time.Hour}, want: []int64{x.failedA1, x.failedA2}},
		{name: "ids: failed and delivered only", filter: outbox.RequeueFilter{
			IDs: []int64{x.failedB1Old, x.delivered, x.pending, x.delivering}}, want: []int64{x.failedB1Old, x.delivered}},
		{name: "ids and webhook", filter: outbox.RequeueFilter{IDs: []int64{x.failedA1, x.failedA2}, Webhook: "w2"}, want: []int64{x.failedA2}},
		{name: "unknown webhook", filter: outbox.RequeueFilter{Webhook: "nope"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reset()
			n, err := outbox.New(e.pool, "walhook").Requeue(context.Background(), tt.filter, time.Now())
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if n != int64(len(tt.want)) {
				t.Errorf("requeued %d, want %d", n, len(tt.want))
			}
			want := map[int64]bool{}
			for _, id := range tt.want {
				want[id] = true
			}
			for _, id := range []int64{x.failedA1, x.failedB1Old, x.failedA2, x.delivered, x.pending, x.delivering} {
				r := e.row(id)
				requeued := r.State == "pending" && id != x.pending
				if requeued != want[id] {
					t.Errorf("row %d: state %s, requeued=%v want %v", id, r.State, requeued, want[id])
				}
				if requeued && (r.DeliveredAt != nil || r.LockedBy != nil || r.NextAttemptAt.After(time.Now().Add(time.Minute))) {
					t.Errorf("requeued row %d not clean: %+v", id, r)
				}
				if requeued && r.Attempts == 0 {
					t.Errorf("row %d: attempts reset without ResetAttempts", id)
				}
			}
			if r := e.row(x.delivering); r.State != "delivering" || deref(r.LockedBy) != "other" {
				t.Errorf("delivering row touched: %+v", r)
			}
		})
	}

	t.Run("reset attempts", func(t *testing.T) {
		reset()
		n, err := outbox.New(e.pool, "walhook").Requeue(context.Background(),
			outbox.RequeueFilter{AllFailed: true, ResetAttempts: true}, time.Now())
		if err != nil || n != 3 {
			t.Fatalf("Requeue = %d, %v", n, err)
		}
		if c := e.count(`state = 'pending' AND attempts = 0 AND next_attempt_at <= now()`); c != 4 {
			t.Errorf("%d pending rows with attempts 0, want 4", c)
		}
	})
	t.Run("negative since", func(t *testing.T) {
		if _, err := outbox.New(e.pool, "walhook").Requeue(context.Background(),
			outbox.RequeueFilter{Since: -time.Hour}, time.Now()); err == nil {
			t.Error("negative Since accepted")
		}
	})
}

func TestFailedAttempts(t *testing.T) {
	t.Parallel()
	e := setup(t)

	// A receiver that never answers, until the request is abandoned.
	hang := newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	target := newRecorder(t, nil)
	redirect := func(code int) *recorder {
		return newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ int) {
			http.Redirect(w, r, target.srv.URL+"/moved/here", code)
		})
	}
	r301, r307 := redirect(301), redirect(307)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + l.Addr().String() + "/"
	l.Close()
	withPassword := strings.Replace(refused, "http://", "http://user:hunter2@", 1)

	once := func(w *config.Webhook) { w.Retry.MaxAttempts = 1 }
	cfg := testConfig(8,
		hookConfig("hang", hang.srv.URL, once, func(w *config.Webhook) { w.Timeout = config.Duration(300 * time.Millisecond) }),
		hookConfig("r301", r301.srv.URL, once),
		hookConfig("r307", r307.srv.URL, once),
		hookConfig("refused", withPassword, once, func(w *config.Webhook) { w.Secret = "topsecret" }),
	)
	ids := map[string]int64{}
	for _, h := range []string{"hang", "r301", "r307", "refused"} {
		ids[h] = e.insertOne(h, `{}`)
	}
	start := time.Now()
	e.start(e.pool, cfg)

	tests := []struct {
		hook       string
		wantStatus any
		wantError  []string
	}{
		{"hang", nil, []string{"timeout after 300ms"}},
		{"r301", 301, []string{"HTTP 301 redirect to " + target.srv.URL + "/moved/here", "not followed"}},
		{"r307", 307, []string{"HTTP 307 redirect to " + target.srv.URL + "/moved/here", "not followed"}},
		{"refused", nil, []string{"connection refused"}},
	}
	for _, tt := range tests {
		t.Run(tt.hook, func(t *testing.T) {
			r := e.waitState(ids[tt.hook], "failed", 10*time.Second)
			if deref(r.LastStatus) != tt.wantStatus {
				t.Errorf("last_status = %v, want %v", deref(r.LastStatus), tt.wantStatus)
			}
			msg := fmt.Sprint(deref(r.LastError))
			for _, w := range tt.wantError {
				if !strings.Contains(msg, w) {
					t.Errorf("last_error %q does not contain %q", msg, w)
				}
			}
			for _, secret := range []string{"hunter2", "topsecret"} {
				if strings.Contains(msg, secret) {
					t.Errorf("last_error %q leaks a secret", msg)
				}
			}
		})
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("timeouts took %s", took)
	}
	if n := target.len(); n != 0 {
		t.Errorf("redirect target received %d requests; redirects must not be followed", n)
	}
}

func TestLargeResponseBodyIsNotBuffered(t *testing.T) {
	// Not parallel: it measures the heap.
	e := setup(t)
	const size = 50 << 20
	var served atomic.Int64
	rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(500)
		chunk := []byte(strings.Repeat("x", 32<<10))
		for sent := 0; sent < size; sent += len(chunk) {
			n, err := w.Write(chunk)
			served.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	id := e.insertOne("big", `{}`)
	cfg := testConfig(2, hookConfig("big", rec.srv.URL, func(w *config.Webhook) {
		w.Retry.MaxAttempts = 1
		w.Timeout = config.Duration(20 * time.Second)
	}))

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	e.start(e.pool, cfg)
	r := e.waitState(id, "failed", 15*time.Second)
	took := time.Since(start)
	runtime.ReadMemStats(&after)

	if delta := int64(after.TotalAlloc - before.TotalAlloc); delta > 10<<20 {
		t.Errorf("allocated %d MB while a 50 MB response was handled", delta>>20)
	}
	if delta := int64(after.HeapAlloc) - int64(before.HeapAlloc); delta > 10<<20 {
		t.Errorf("heap grew by %d MB", delta>>20)
	}
	msg := fmt.Sprint(deref(r.LastError))
	if len(msg) > 4096 || !strings.HasPrefix(msg, "HTTP 500: xxxx") {
		t.Errorf("last_error has %d bytes, starts %.20q", len(msg), msg)
	}
	if took > 5*time.Second {
		t.Errorf("handling the response took %s: the body was held", took)
	}
	if s := served.Load(); s >= size {
		t.Errorf("the whole body (%d bytes) was read", s)
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var first sync.Map
	respond := func(retryAfter func() string, code int) func(http.ResponseWriter, *http.Request, int) {
		return func(w http.ResponseWriter, r *http.Request, _ int) {
			if _, seen := first.LoadOrStore(r.Header.Get("X-Walhook-Delivery"), true); !seen {
				w.Header().Set("Retry-After", retryAfter())
				w.WriteHeader(code)
				return
			}
			w.WriteHeader(204)
		}
	}
	fixed := func(v string) func() string { return func() string { return v } }
	slow := newRecorder(t, respond(fixed("1"), 429))
	capped := newRecorder(t, respond(fixed("3600"), 503))
	// The date is taken when the response is written: taken at setup, the
	// time until the request (and the date's whole seconds) could leave
	// less than a second.
	date := newRecorder(t, respond(func() string { return time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat) }, 503))
	cfg := testConfig(4,
		hookConfig("slow", slow.srv.URL, func(w *config.Webhook) { w.Retry.MaxInterval = config.Duration(time.Minute) }),
		hookConfig("capped", capped.srv.URL, func(w *config.Webhook) { w.Retry.MaxInterval = config.Duration(200 * time.Millisecond) }),
		hookConfig("date", date.srv.URL, func(w *config.Webhook) { w.Retry.MaxInterval = config.Duration(time.Minute) }),
	)
	idSlow, idCapped, idDate := e.insertOne("slow", `{}`), e.insertOne("capped", `{}`), e.insertOne("date", `{}`)
	e.start(e.pool, cfg)

	gap := func(id int64) time.Duration {
		var secs float64
		waitFor(t, 10*time.Second, "first attempt outcome", func() bool {
			err := e.pool.QueryRow(context.Background(), `SELECT extract(epoch FROM next_attempt_at - last_attempt_at)
				FROM walhook.deliveries WHERE id = $1 AND state IN ('pending', 'delivered') AND attempts >= 1`, id).Scan(&secs)
			return err == nil
		})
		return time.Duration(secs * float64(time.Second))
	}
	if g := gap(idSlow); g < 990*time.Millisecond {
		t.Errorf("Retry-After: 1 on 429 gave a retry %s later, want >= 1s", g)
	}
	if g := gap(idCapped); g > 400*time.Millisecond {
		t.Errorf("Retry-After: 3600 with max_interval 200ms gave %s", g)
	}
	if g := gap(idDate); g < time.Second {
		t.Errorf("HTTP-date Retry-After ~2s ahead gave %s", g)
	}
	for _, id := range []int64{idSlow, idCapped, idDate} {
		if r := e.waitState(id, "delivered", 10*time.Second); r.Attempts != 2 {
			t.Errorf("row %d: %d attempts, want 2", id, r.Attempts)
		}
	}
}

func TestTwoDispatchersSendEachRowOnce(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 2000
	var mu sync.Mutex
	seen := map[string]int{}
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		mu.Lock()
		seen[r.Header.Get("X-Walhook-Delivery")]++
		mu.Unlock()
		w.WriteHeader(204)
	})
	e.insertMany("w", n, 0)
	cfg := testConfig(16, hookConfig("w", rec.srv.URL, func(w *config.Webhook) { w.Secret = "s" }))
	e.start(e.newPool(), cfg, func(o *dispatch.Options) { o.ID = "one" })
	e.start(e.newPool(), cfg, func(o *dispatch.Options) { o.ID = "two" })
	waitFor(t, 40*time.Second, "all rows delivered", func() bool { return e.count(`state = 'delivered'`) == n })
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Errorf("%d distinct deliveries received, want %d", len(seen), n)
	}
	for id, c := range seen {
		if c != 1 {
			t.Errorf("delivery %s received %d times", id, c)
		}
	}
	if c := e.count(`attempts <> 1`); c != 0 {
		t.Errorf("%d rows with attempts <> 1", c)
	}
}

func TestPerObjectOrder(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const objects, changes = 50, 20
	type change struct {
		Obj string `json:"obj"`
		N   int    `json:"n"`
	}
	var mu sync.Mutex
	delivered := map[string][]int{} // per object, the changes answered 2xx, in arrival order
	othersDone := false             // all changes of the objects other than "bad" answered 2xx
	badRejected := 0
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		var c change
		_ = json.Unmarshal(mustRead(r), &c)
		mu.Lock()
		defer mu.Unlock()
		// The bad object's first change is refused until every other
		// object is through: it stays pending a retry all that time.
		if c.Obj == "bad" && !othersDone {
			if c.N != 1 {
				t.Errorf("bad object's change %d sent while its change 1 is pending a retry", c.N)
			}
			badRejected++
			w.WriteHeader(500)
			return
		}
		delivered[c.Obj] = append(delivered[c.Obj], c.N)
		total := 0
		for obj, l := range delivered {
			if obj != "bad" && obj != "dead" {
				total += len(l)
			}
		}
		othersDone = total == (objects-2)*changes
		w.WriteHeader(204)
	})
	cfg := testConfig(16, hookConfig("w", rec.srv.URL, func(w *config.Webhook) {
		w.Retry = config.Retry{MaxAttempts: 10000, InitialInterval: config.Duration(20 * time.Millisecond), MaxInterval: config.Duration(100 * time.Millisecond)}
	}))
	// Capture writes the bodies; here a body tells the receiver which change
	// it is. Change n of every object commits in transaction n (commit_lsn),
	// objects ordered by seq within it. Rows are inserted shuffled so that
	// ids do not follow commit order.
	var rows []delivery
	for n := 1; n <= changes; n++ {
		for o := 0; o < objects; o++ {
			obj := fmt.Sprintf("obj%02d", o)
			switch o {
			case 0:
				obj = "bad"
			case 1:
				obj = "dead" // its change 1 has already failed for good
			}
			body, _ := json.Marshal(change{Obj: obj, N: n})
			rows = append(rows, delivery{webhook: "w", key: obj, lsn: uint64(n) * 1000, seq: o, body: string(body)})
		}
	}
	rand.Shuffle(len(rows), func(i, j int) { rows[i], rows[j] = rows[j], rows[i] })
	e.insert(rows...)
	e.exec(`UPDATE walhook.deliveries SET state = 'failed', attempts = 8 WHERE object_key = 'dead' AND commit_lsn = '0/3E8'`)
	e.start(e.pool, cfg)

	waitFor(t, 40*time.Second, "every change delivered", func() bool {
		return e.count(`state = 'delivered'`) == objects*changes-1
	})
	mu.Lock()
	defer mu.Unlock()
	for obj, got := range delivered {
		want := changes
		if obj == "dead" {
			want = changes - 1
		}
		if len(got) != want {
			t.Errorf("%s: %d changes delivered, want %d: %v", obj, len(got), want, got)
		}
		for i := 1; i < len(got); i++ {
			if got[i] <= got[i-1] {
				t.Errorf("%s: out of order: %v", obj, got)
				break
			}
		}
	}
	if len(delivered) != objects {
		t.Errorf("%d objects delivered, want %d", len(delivered), objects)
	}
	if badRejected == 0 {
		t.Error("the bad object's first change was never refused")
	}
	if n := e.count(`state = 'failed'`); n != 1 {
		t.Errorf("%d failed rows, want 1", n)
	}
}

func mustRead(r *http.Request) []byte {
	b, _ := io.ReadAll(r.Body)
	return b
}

func TestLeaseRescue(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, nil)
	id := e.insertOne("w", `{}`)
	dead := e.insertOne("w", `{}`)
	live := e.insertOne("w", `{}`)
	e.exec(`UPDATE walhook.deliveries SET state = 'delivering', attempts = 1, locked_by = 'crashed',
		locked_until = now() - interval '1 second', last_attempt_at = now() - interval '1 minute' WHERE id = $1`, id)
	// A dispatcher silent for a minute: its rows are taken back although
	// their lease has an hour to run.
	e.exec(`INSERT INTO walhook.dispatchers (id, heartbeat_at) VALUES ('silent', now() - interval '1 minute'), ('alive', now() + interval '1 hour')`)
	e.exec(`UPDATE walhook.deliveries SET state = 'delivering', attempts = 1, locked_by = 'silent',
		locked_until = now() + interval '1 hour', last_attempt_at = now() - interval '1 minute' WHERE id = $1`, dead)
	// The claim of a live dispatcher is left alone.
	e.exec(`UPDATE walhook.deliveries SET state = 'delivering', attempts = 1, locked_by = 'alive',
		locked_until = now() + interval '1 hour' WHERE id = $1`, live)
	e.start(e.pool, testConfig(2, hookConfig("w", rec.srv.URL)))
	for _, id := range []int64{id, dead} {
		r := e.waitState(id, "delivered", 10*time.Second)
		if r.Attempts != 2 {
			t.Errorf("rescued row has %d attempts, want 2", r.Attempts)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if r := e.row(live); r.State != "delivering" || deref(r.LockedBy) != "alive" {
		t.Errorf("live lease taken: %+v", r)
	}
	if n := rec.len(); n != 2 {
		t.Errorf("receiver got %d requests, want 2", n)
	}
}

func TestShutdownReleasesClaimedRows(t *testing.T) {
	t.Parallel()
	e := setup(t)
	started := make(chan struct{}, 100)
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		started <- struct{}{}
		select {
		case <-time.After(500 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		w.WriteHeader(204)
	})
	e.insertMany("w", 20, 0)
	// Concurrency 2 claims up to 8: 2 in flight, 6 queued, 12 unclaimed.
	stop := e.start(e.pool, testConfig(2, hookConfig("w", rec.srv.URL)))
	for range 2 {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("requests did not start")
		}
	}
	waitFor(t, 5*time.Second, "claims", func() bool { return e.count(`state = 'delivering'`) >= 2 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if n := e.count(`state = 'delivering'`); n != 0 {
		t.Fatalf("%d rows left delivering after Run returned", n)
	}
	if n := e.count(`state = 'delivered' AND attempts = 1`); n != 2 {
		t.Errorf("%d in-flight rows delivered, want 2", n)
	}
	if n := e.count(`state = 'pending' AND attempts = 0 AND last_attempt_at IS NULL AND locked_by IS NULL`); n != 18 {
		t.Errorf("%d untouched pending rows, want 18", n)
	}
	if n := rec.len(); n != 2 {
		t.Errorf("receiver got %d requests, want 2", n)
	}
}

func TestRetention(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.insertMany("w", 2600, 0)
	e.exec(`UPDATE walhook.deliveries SET state = 'delivered', attempts = 1, delivered_at = now() - interval '200 hours'
		WHERE id <= (SELECT min(id) + 2499 FROM walhook.deliveries)`)
	e.exec(`UPDATE walhook.deliveries SET state = 'delivered', attempts = 1, delivered_at = now() - interval '100 hours'
		WHERE id IN (SELECT id FROM walhook.deliveries WHERE state = 'pending' ORDER BY id LIMIT 50)`)
	e.exec(`UPDATE walhook.deliveries SET state = 'failed', attempts = 8, last_attempt_at = now() - interval '300 hours',
		created_at = now() - interval '300 hours' WHERE state = 'pending'`)
	// No webhook is configured: nothing is sent, only the retention runs.
	e.start(e.pool, testConfig(1))
	waitFor(t, 10*time.Second, "old delivered rows deleted", func() bool { return e.count(`true`) == 100 })
	time.Sleep(100 * time.Millisecond)
	if n := e.count(`state = 'delivered'`); n != 50 {
		t.Errorf("%d recent delivered rows left, want 50", n)
	}
	if n := e.count(`state = 'failed'`); n != 50 {
		t.Errorf("%d failed rows left, want 50 (retention only deletes delivered rows)", n)
	}
}

func TestUnservedWebhooksAreNotClaimed(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, nil)
	ghost := e.insertOne("ghost", `{}`)
	off := e.insertOne("off", `{}`)
	disabled := false
	cfg := testConfig(2, hookConfig("w", rec.srv.URL), hookConfig("off", rec.srv.URL, func(w *config.Webhook) { w.Enabled = &disabled }))
	e.start(e.pool, cfg)
	e.waitState(e.insertOne("w", `{}`), "delivered", 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	for _, id := range []int64{ghost, off} {
		if r := e.row(id); r.State != "pending" || r.Attempts != 0 {
			t.Errorf("row %d of an unserved webhook: %+v", id, r)
		}
	}
	if n := rec.len(); n != 1 {
		t.Errorf("receiver got %d requests, want 1", n)
	}
}

func TestNotifyWakesDispatcher(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, nil)
	cfg := testConfig(2, hookConfig("w", rec.srv.URL))
	cfg.Dispatch.PollInterval = config.Duration(time.Hour)
	e.start(e.pool, cfg)
	time.Sleep(300 * time.Millisecond) // let the first poll and LISTEN happen
	id := e.insertOne("w", `{}`)
	e.exec(`SELECT pg_notify('walhook_deliveries', '')`)
	e.waitState(id, "delivered", 3*time.Second)
}

func TestRunTwiceConcurrently(t *testing.T) {
	t.Parallel()
	e := setup(t)
	d, err := dispatch.New(dispatch.Options{Pool: e.pool, Config: testConfig(1), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	time.Sleep(50 * time.Millisecond)
	if err := d.Run(ctx); err == nil {
		t.Error("second concurrent Run returned nil")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

func TestDatabaseConnectionsKilled(t *testing.T) {
	t.Parallel()
	e := setup(t)
	const n = 400
	var mu sync.Mutex
	seen := map[string]int{}
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		mu.Lock()
		seen[r.Header.Get("X-Walhook-Delivery")]++
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		w.WriteHeader(204)
	})
	e.insertMany("w", n, 0)
	admin := e.newPool()
	stop := e.start(e.newPool(), testConfig(8, hookConfig("w", rec.srv.URL)))
	// Kill every other connection to the database, again and again, while
	// the dispatcher works: claims, outcome writes and LISTEN all fail.
	deadline := time.Now().Add(1500 * time.Millisecond)
	killed := 0
	for time.Now().Before(deadline) {
		var k int
		if err := admin.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`).Scan(&k); err != nil {
			t.Fatal(err)
		}
		killed += k
		time.Sleep(30 * time.Millisecond)
	}
	if killed == 0 {
		t.Fatal("no connection was killed")
	}
	// A claim whose connection died after its commit is put back before
	// the next claim: every row gets through.
	waitFor(t, 20*time.Second, "every row delivered", func() bool {
		return e.count(`state = 'delivered'`) == n && len(seenSnapshot(&mu, seen)) == n
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, c := range seen {
		if c != 1 {
			t.Errorf("delivery %s received %d times", id, c)
		}
	}
	t.Logf("killed %d connections", killed)
}

func seenSnapshot(mu *sync.Mutex, m map[string]int) map[string]int {
	mu.Lock()
	defer mu.Unlock()
	c := make(map[string]int, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// A dispatcher that cannot record its heartbeat cancels its requests in
// flight before any other dispatcher may take its rows back:
// the rescue horizon is 5 s after the last heartbeat_at, and requests used
// to run on until their timeout, so a stale copy could reach the receiver
// after the object's next change.
func TestLapsedHeartbeatCancelsRequestsInFlight(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var first atomic.Bool
	gone := make(chan time.Time, 1)
	release := make(chan struct{})
	rec := newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		if first.CompareAndSwap(false, true) {
			select { // hang until walhook gives up
			case <-r.Context().Done():
				gone <- time.Now()
			case <-release:
			}
			return
		}
		w.WriteHeader(204)
	})
	id := e.insertOne("w", `{}`)
	e.start(e.pool, testConfig(2, hookConfig("w", rec.srv.URL, func(w *config.Webhook) {
		w.Timeout = config.Duration(time.Minute)
	})), func(o *dispatch.Options) { o.ID = "lapsing" })
	waitFor(t, 10*time.Second, "the request", func() bool { return rec.len() == 1 })
	// Hold the dispatcher's heartbeat row: its heartbeat statements wait
	// and time out, as on a database it cannot reach.
	tx, err := e.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(release) })
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	var lastBeat time.Time
	if err := tx.QueryRow(t.Context(), `SELECT heartbeat_at FROM walhook.dispatchers WHERE id = 'lapsing' FOR UPDATE`).Scan(&lastBeat); err != nil {
		t.Fatal(err)
	}
	rescuable := lastBeat.Add(5 * time.Second) // outbox.DeadAfter: others may take the row back from here
	select {
	case at := <-gone:
		if !at.Before(rescuable) {
			t.Errorf("request cancelled at %s, %s after the row could be taken back", at.Format(time.StampMilli), at.Sub(rescuable))
		}
		t.Logf("request cancelled %s after the last heartbeat, %s before the rescue horizon", at.Sub(lastBeat), rescuable.Sub(at))
	case <-time.After(15 * time.Second):
		t.Fatal("the request in flight was not cancelled while the heartbeat could not be recorded")
	}
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Once it beats again the row goes out (rescued or released).
	e.waitState(id, "delivered", 20*time.Second)
}
