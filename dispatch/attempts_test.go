package dispatch_test

import (
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
)

// Every attempt is recorded with when it started, how long it took, the
// status, and the error or the first 4 KB of the response body (valid
// UTF-8 without NUL bytes, never a cut rune).
func TestAttemptHistory(t *testing.T) {
	t.Parallel()
	e := setup(t)
	respond := func(status int, body string) *recorder {
		return newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ int) {
			w.WriteHeader(status)
			_, _ = w.Write([]byte(body))
		})
	}
	big := "E" + strings.Repeat("x", 10<<10)
	e500 := respond(500, big)
	binary := respond(200, "ok\x00\xff\xfe|")
	// The limit cuts a 4-byte rune after its third byte.
	cut := respond(502, strings.Repeat("x", outbox.MaxResponse-3)+"😀 and more")
	empty := respond(204, "")
	hang := newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ int) {
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + l.Addr().String() + "/"
	l.Close()

	once := func(w *config.Webhook) { w.Retry.MaxAttempts = 1 }
	cfg := testConfig(8,
		hookConfig("e500", e500.srv.URL, func(w *config.Webhook) { w.Retry.MaxAttempts = 2 }),
		hookConfig("binary", binary.srv.URL, once),
		hookConfig("cut", cut.srv.URL, once),
		hookConfig("empty", empty.srv.URL, once),
		hookConfig("hang", hang.srv.URL, once, func(w *config.Webhook) { w.Timeout = config.Duration(300 * time.Millisecond) }),
		hookConfig("refused", refused, once),
	)
	ids := map[string]int64{}
	for _, h := range []string{"e500", "binary", "cut", "empty", "hang", "refused"} {
		ids[h] = e.insertOne(h, `{}`)
	}
	start := time.Now()
	e.start(e.pool, cfg)

	str := func(p *string) any { return deref(p) }
	tests := []struct {
		hook     string
		state    string
		attempts int
		status   any
		err      string // a part of the error; "" for none
		response any
		minTook  time.Duration
	}{
		{"e500", "failed", 2, int32(500), "", big[:outbox.MaxResponse], 0},
		{"binary", "delivered", 1, int32(200), "", "ok\uFFFD|", 0},
		{"cut", "failed", 1, int32(502), "", strings.Repeat("x", outbox.MaxResponse-3), 0},
		{"empty", "delivered", 1, int32(204), "", nil, 0},
		{"hang", "failed", 1, nil, "timeout after 300ms", nil, 300 * time.Millisecond},
		{"refused", "failed", 1, nil, "connection refused", nil, 0},
	}
	store := outbox.New(e.pool, "walhook")
	for _, tt := range tests {
		t.Run(tt.hook, func(t *testing.T) {
			e.waitState(ids[tt.hook], tt.state, 10*time.Second)
			got, err := store.Attempts(t.Context(), ids[tt.hook])
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tt.attempts {
				t.Fatalf("%d attempts recorded, want %d: %+v", len(got), tt.attempts, got)
			}
			for i, a := range got {
				if int(a.Attempt) != i+1 {
					t.Errorf("attempt %d numbered %d", i+1, a.Attempt)
				}
				if a.StartedAt.Before(start.Add(-time.Second)) || a.StartedAt.After(time.Now()) ||
					a.Duration <= 0 || a.Duration < tt.minTook || a.Duration > 5*time.Second {
					t.Errorf("attempt %d started %s and took %s (test started %s)", a.Attempt, a.StartedAt, a.Duration, start)
				}
				if deref(a.Status) != tt.status {
					t.Errorf("attempt %d status %v, want %v", a.Attempt, deref(a.Status), tt.status)
				}
				if msg := str(a.Error); (tt.err == "") != (a.Error == nil) || (tt.err != "" && !strings.Contains(*a.Error, tt.err)) {
					t.Errorf("attempt %d error %q, want one with %q", a.Attempt, msg, tt.err)
				}
				if r := str(a.Response); r != tt.response {
					t.Errorf("attempt %d response %.60q (%d bytes), want %.60q", a.Attempt, r, len(fmt.Sprint(r)), tt.response)
				}
				if a.Probe {
					t.Errorf("attempt %d recorded as a probe", a.Attempt)
				}
			}
		})
	}
	// The span id recorded is the parent id of the traceparent sent.
	reqs := e500.requests()
	got, _ := store.Attempts(t.Context(), ids["e500"])
	for i, r := range reqs {
		parts := strings.Split(r.Header.Get("Traceparent"), "-")
		if len(parts) != 4 || i >= len(got) || got[i].SpanID == nil || *got[i].SpanID != parts[2] {
			t.Errorf("request %d sent traceparent %q; attempt recorded %+v", i, r.Header.Get("Traceparent"), got)
		}
	}
}
