package web_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/tracecontext"
	"github.com/walhook/walhook/internal/web"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/test/netproxy"
	"github.com/walhook/walhook/test/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

// testEnv is a migrated outbox and a Server on it behind httptest.
type testEnv struct {
	t       *testing.T
	pool    *pgxpool.Pool
	cfg     *config.Config
	metrics *web.Metrics
	srv     *httptest.Server
	lsn     atomic.Int64
}

type envOption func(*config.Config, *web.Options)

func withToken(tok string) envOption {
	return func(c *config.Config, _ *web.Options) { c.HTTP.Token = tok }
}

func withCapture(c web.CaptureStatus) envOption {
	return func(_ *config.Config, o *web.Options) { o.Capture = c }
}

func testConfig() *config.Config {
	return &config.Config{
		Database: config.Database{Schema: "walhook", Slot: "walhook_web_test"},
		Models:   []config.Model{{Model: "Site"}, {Model: "Device"}},
		Webhooks: []config.Webhook{
			{Name: "inventory", URL: "https://hooks.example.com/netbox/secret-path?token=abc", HTTPMethod: "POST",
				ContentType: "application/json", Secret: "the-secret-value",
				Headers: map[string]string{"Authorization": "Bearer header-secret-value", "X-Team": "infra"},
				Retry:   config.Retry{MaxAttempts: 3}},
			{Name: "audit", URL: "http://127.0.0.1:1/", Retry: config.Retry{MaxAttempts: 5}},
		},
	}
}

func newEnv(t *testing.T, opts ...envOption) *testEnv {
	t.Helper()
	return newEnvOn(t, pg.NewDB(t), opts...)
}

func newEnvOn(t *testing.T, dsn string, opts ...envOption) *testEnv {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if _, err := migrations.Apply(context.Background(), pool, "walhook"); err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, pool: pool, cfg: testConfig()}
	e.lsn.Store(1 << 20)
	o := web.Options{Outbox: pool, SlotDB: pool, Dispatching: true, Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel), Version: "test"}
	for _, f := range opts {
		f(e.cfg, &o)
	}
	o.Config = e.cfg
	e.metrics = web.NewMetrics(e.cfg, "test")
	o.Metrics = e.metrics
	s, err := web.New(o)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(s.Handler())
	t.Cleanup(e.srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		s.Watch(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-watched
	})
	// Until Watch's first check, /readyz says the outbox is not checked.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get(e.srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(b), "not checked yet") {
			break
		}
	}
	return e
}

// row is a delivery to insert; zero fields get defaults.
type row struct {
	webhook, model, event, key, state, body, lastError string
	attempts, lastStatus                               int
	committedAgo                                       time.Duration
}

func (e *testEnv) insert(r row) int64 {
	e.t.Helper()
	if r.webhook == "" {
		r.webhook = "inventory"
	}
	if r.model == "" {
		r.model = "Site"
	}
	if r.event == "" {
		r.event = "created"
	}
	if r.state == "" {
		r.state = "pending"
	}
	if r.body == "" {
		r.body = `{"event":"created","model":"Site","data":{"id":1}}`
	}
	if r.key == "" {
		r.key = fmt.Sprint(e.lsn.Load())
	}
	lsn := pglogrepl.LSN(e.lsn.Add(1000))
	var id int64
	err := e.pool.QueryRow(context.Background(), `INSERT INTO walhook.deliveries
	(webhook, event, model, object_key, commit_lsn, seq, committed_at, body, state, attempts, last_status, last_error,
	 last_attempt_at, delivered_at, locked_until, locked_by)
	VALUES ($1, $2, $3, $4, $5::text::pg_lsn, 0, now() - $6::bigint * interval '1 microsecond', $7, $8, $9,
	 nullif($10, 0), nullif($11, ''),
	 CASE WHEN $9 > 0 THEN now() END,
	 CASE WHEN $8 = 'delivered' THEN now() END,
	 CASE WHEN $8 = 'delivering' THEN now() + interval '1 minute' END,
	 CASE WHEN $8 = 'delivering' THEN 'test' END)
	RETURNING id`, r.webhook, r.event, r.model, r.key, lsn.String(), r.committedAgo.Microseconds(), r.body, r.state,
		r.attempts, r.lastStatus, r.lastError).Scan(&id)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

func (e *testEnv) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func (e *testEnv) state(id int64) string {
	e.t.Helper()
	var s string
	if err := e.pool.QueryRow(context.Background(), `SELECT state FROM walhook.deliveries WHERE id = $1`, id).Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// client is an HTTP client with a cookie jar that does not follow redirects.
func client(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// do sends a request and returns the response with its body read.
func do(t *testing.T, c *http.Client, method, u string, form url.Values, header ...string) (*http.Response, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
			continue
		}
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// csrf reads the CSRF token from a page.
func csrf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", page)
	}
	return m[1]
}

// scrape parses /metrics.
func scrape(t *testing.T, c *http.Client, base string, header ...string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, body := do(t, c, "GET", base+"/metrics", nil, header...)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %s\n%s", resp.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v\n%s", err, body)
	}
	return fams
}

// metric finds the series of family name with the given labels (name,
// value pairs); ok is false when there is none.
func metric(fams map[string]*dto.MetricFamily, name string, labels ...string) (*dto.Metric, bool) {
	f, ok := fams[name]
	if !ok {
		return nil, false
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m, true
	}
	return nil, false
}

// value is a counter's or gauge's value; it fails the test when absent.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	m, ok := metric(fams, name, labels...)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("%s%v is neither a counter nor a gauge", name, labels)
	return 0
}

type fakeCapture struct {
	streaming atomic.Bool
	lsn       atomic.Uint64
	stall     atomic.Pointer[string]
}

func (c *fakeCapture) Streaming() bool             { return c.streaming.Load() }
func (c *fakeCapture) ConfirmedLSN() pglogrepl.LSN { return pglogrepl.LSN(c.lsn.Load()) }
func (c *fakeCapture) Stall() string {
	if p := c.stall.Load(); p != nil {
		return *p
	}
	return ""
}
func (c *fakeCapture) LookupErrors() int64 { return 3 }
func (c *fakeCapture) Collisions() int64   { return 0 }

func TestMetricsExposeOutboxCaptureAndAttempts(t *testing.T) {
	capture := &fakeCapture{}
	capture.streaming.Store(true)
	capture.lsn.Store(0x1_0000_0100)
	e := newEnv(t, withCapture(capture))
	c := client(t)

	fams := scrape(t, c, e.srv.URL)
	// Every configured webhook, model and event has its series from the start.
	for _, hook := range []string{"inventory", "audit"} {
		for _, outcome := range []string{"delivered", "retry", "failed"} {
			if v := value(t, fams, "walhook_delivery_attempts_total", "webhook", hook, "outcome", outcome); v != 0 {
				t.Errorf("attempts %s/%s = %v at start", hook, outcome, v)
			}
		}
		for _, state := range []string{"pending", "delivering", "failed"} {
			if v := value(t, fams, "walhook_outbox_deliveries", "webhook", hook, "state", state); v != 0 {
				t.Errorf("outbox %s/%s = %v at start", hook, state, v)
			}
		}
	}
	if v := value(t, fams, "walhook_enqueued_deliveries_total", "model", "Device", "event", "deleted"); v != 0 {
		t.Errorf("enqueued = %v at start", v)
	}
	if v := value(t, fams, "walhook_replication_connected"); v != 1 {
		t.Errorf("replication_connected = %v", v)
	}
	if v := value(t, fams, "walhook_replication_confirmed_lsn"); v != 0x1_0000_0100 {
		t.Errorf("replication_confirmed_lsn = %v", v)
	}
	if v := value(t, fams, "walhook_lookup_errors_total"); v != 3 {
		t.Errorf("lookup_errors_total = %v", v)
	}
	if v := value(t, fams, "walhook_capture_stalled"); v != 0 {
		t.Errorf("capture_stalled = %v", v)
	}
	// Capture's loss signals (cdc.LossObserver, cdc.GapObserver).
	e.metrics.Unmapped("public.extra")
	e.metrics.Truncated("public.site")
	e.metrics.Gap("walhook_web_test")
	e.metrics.BreakerChanged("inventory", outbox.BreakerOpen)
	fams2 := scrape(t, c, e.srv.URL)
	for _, m := range []struct {
		name   string
		labels []string
	}{
		{"walhook_changes_unmapped_total", []string{"table", "public.extra"}},
		{"walhook_truncates_total", []string{"table", "public.site"}},
		{"walhook_capture_gaps_total", []string{"slot", "walhook_web_test"}},
		{"walhook_webhook_circuit_open", []string{"webhook", "inventory"}},
	} {
		if v := value(t, fams2, m.name, m.labels...); v != 1 {
			t.Errorf("%s%v = %v, want 1", m.name, m.labels, v)
		}
	}
	if v := value(t, fams, "walhook_outbox_up"); v != 1 {
		t.Errorf("outbox_up = %v", v)
	}
	if v := value(t, fams, "walhook_build_info", "version", "test"); v != 1 {
		t.Errorf("build_info = %v", v)
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}

	// Known rows and observations move them.
	for range 3 {
		e.insert(row{state: "pending", committedAgo: time.Minute})
	}
	e.insert(row{state: "pending", committedAgo: 2 * time.Hour, webhook: "audit"})
	e.insert(row{state: "delivering"})
	e.insert(row{state: "failed", attempts: 3, lastStatus: 500, lastError: "HTTP 500"})
	e.insert(row{state: "failed", webhook: "audit", attempts: 5, lastStatus: 404})
	e.insert(row{state: "delivered", attempts: 1, lastStatus: 204})
	e.insert(row{state: "pending", webhook: "removed"}) // no longer configured
	e.metrics.Enqueued("Site", "created", 7)
	e.metrics.Enqueued("Site", "created", 2)
	now := time.Now()
	e.metrics.Attempted(outbox.Attempt{Webhook: "inventory", Outcome: outbox.OutcomeDelivered, Status: 204,
		Duration: 30 * time.Millisecond, CommittedAt: now.Add(-3 * time.Second)})
	e.metrics.Attempted(outbox.Attempt{Webhook: "inventory", Outcome: outbox.OutcomeDelivered, Status: 200,
		Duration: 70 * time.Millisecond, CommittedAt: now.Add(-20 * time.Second)})
	e.metrics.Attempted(outbox.Attempt{Webhook: "inventory", Outcome: outbox.OutcomeRetry, Status: 503,
		Duration: 2 * time.Second, CommittedAt: now})
	e.metrics.Attempted(outbox.Attempt{Webhook: "audit", Outcome: outbox.OutcomeFailed, Status: 0,
		Duration: 10 * time.Second, CommittedAt: now})
	capture.streaming.Store(false)
	capture.lsn.Store(0x1_0000_0200)
	time.Sleep(1100 * time.Millisecond) // the outbox reading is reused for a second

	fams = scrape(t, c, e.srv.URL)
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"walhook_outbox_deliveries", []string{"webhook", "inventory", "state", "pending"}, 3},
		{"walhook_outbox_deliveries", []string{"webhook", "inventory", "state", "delivering"}, 1},
		{"walhook_outbox_deliveries", []string{"webhook", "inventory", "state", "failed"}, 1},
		{"walhook_outbox_deliveries", []string{"webhook", "audit", "state", "pending"}, 1},
		{"walhook_outbox_deliveries", []string{"webhook", "audit", "state", "failed"}, 1},
		{"walhook_outbox_deliveries", []string{"webhook", "removed", "state", "pending"}, 1},
		{"walhook_enqueued_deliveries_total", []string{"model", "Site", "event", "created"}, 9},
		{"walhook_delivery_attempts_total", []string{"webhook", "inventory", "outcome", "delivered"}, 2},
		{"walhook_delivery_attempts_total", []string{"webhook", "inventory", "outcome", "retry"}, 1},
		{"walhook_delivery_attempts_total", []string{"webhook", "audit", "outcome", "failed"}, 1},
		{"walhook_delivery_attempts_total", []string{"webhook", "audit", "outcome", "delivered"}, 0},
		{"walhook_replication_connected", nil, 0},
		{"walhook_replication_confirmed_lsn", nil, 0x1_0000_0200},
	} {
		if got := value(t, fams, tc.name, tc.labels...); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	// The oldest open change of inventory is the delivering or a pending
	// row, committed a minute ago at most; audit's is two hours old.
	if got := value(t, fams, "walhook_outbox_oldest_pending_seconds", "webhook", "inventory"); got < 59 || got > 120 {
		t.Errorf("oldest pending of inventory = %vs, want about 60", got)
	}
	if got := value(t, fams, "walhook_outbox_oldest_pending_seconds", "webhook", "audit"); got < 7199 || got > 7300 {
		t.Errorf("oldest pending of audit = %vs, want about 7200", got)
	}
	m, _ := metric(fams, "walhook_delivery_attempt_duration_seconds", "webhook", "inventory")
	if h := m.GetHistogram(); h.GetSampleCount() != 3 || h.GetSampleSum() < 2.09 || h.GetSampleSum() > 2.11 {
		t.Errorf("attempt duration of inventory: count %d sum %v, want 3 and 2.1", h.GetSampleCount(), h.GetSampleSum())
	}
	m, _ = metric(fams, "walhook_delivery_latency_seconds", "webhook", "inventory")
	if h := m.GetHistogram(); h.GetSampleCount() != 2 || h.GetSampleSum() < 23 || h.GetSampleSum() > 30 {
		t.Errorf("latency of inventory: count %d sum %v, want 2 and about 23", h.GetSampleCount(), h.GetSampleSum())
	}
	m, _ = metric(fams, "walhook_delivery_latency_seconds", "webhook", "audit")
	if h := m.GetHistogram(); h.GetSampleCount() != 0 {
		t.Errorf("latency of audit counts %d failed deliveries", h.GetSampleCount())
	}
	// No slot named walhook_web_test exists: no slot series.
	if _, ok := fams["walhook_slot_lag_bytes"]; ok {
		t.Error("slot lag reported for a slot that does not exist")
	}
}

func TestSlotLagIsReported(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.pool.Exec(ctx, `SELECT pg_create_logical_replication_slot('walhook_web_test', 'pgoutput')`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = e.pool.Exec(ctx, `SELECT pg_drop_replication_slot('walhook_web_test')`) })
	if _, err := e.pool.Exec(ctx, `CREATE TABLE filler AS SELECT g, repeat('x', 100) AS v FROM generate_series(1, 2000) g`); err != nil {
		t.Fatal(err)
	}
	fams := scrape(t, client(t), e.srv.URL)
	if got := value(t, fams, "walhook_slot_lag_bytes", "slot", "walhook_web_test"); got < 200_000 {
		t.Errorf("slot lag = %v bytes after writing ~300 kB", got)
	}
	if got := value(t, fams, "walhook_slot_retained_wal_bytes", "slot", "walhook_web_test"); got < 200_000 {
		t.Errorf("slot retained WAL = %v bytes", got)
	}
	if got := value(t, fams, "walhook_slot_active", "slot", "walhook_web_test"); got != 0 {
		t.Errorf("slot_active = %v for a slot nobody reads", got)
	}
}

func TestReadyzFollowsTheDatabaseAndCapture(t *testing.T) {
	// A cluster of its own, to stop it.
	cl, err := pgtest.Start(context.Background(), pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	capture := &fakeCapture{}
	capture.streaming.Store(true)
	e := newEnvOn(t, cl.DSN("postgres"), withCapture(capture))
	c := client(t)
	// readyz answers from what the background check last found: each
	// answer is immediate, the state follows within a few seconds.
	readyz := func(want int, within time.Duration) (*http.Response, string) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			start := time.Now()
			resp, body := do(t, c, "GET", e.srv.URL+"/readyz", nil)
			if d := time.Since(start); d > time.Second {
				t.Errorf("/readyz took %s", d)
			}
			if resp.StatusCode == want || time.Now().After(deadline) {
				return resp, body
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if resp, body := readyz(200, 10*time.Second); resp.StatusCode != 200 {
		t.Fatalf("/readyz with the database up: %s %s", resp.Status, body)
	}
	capture.streaming.Store(false)
	if resp, body := do(t, c, "GET", e.srv.URL+"/readyz", nil); resp.StatusCode != 503 || !strings.Contains(body, "capture is not streaming") {
		t.Errorf("/readyz while capture is not streaming: %s %s", resp.Status, body)
	}
	capture.streaming.Store(true)
	why := "lookup of model Site failed: dial tcp 10.1.2.3:5432: connection refused"
	capture.stall.Store(&why)
	if resp, body := do(t, c, "GET", e.srv.URL+"/readyz", nil); resp.StatusCode != 503 || !strings.Contains(body, "holding changes back") || strings.Contains(body, "10.1.2.3") {
		t.Errorf("/readyz while capture is stalled: %s %s", resp.Status, body)
	}
	capture.stall.Store(nil)

	if err := cl.Stop(false); err != nil {
		t.Fatal(err)
	}
	resp, body := readyz(503, 10*time.Second)
	if resp.StatusCode != 503 || !strings.Contains(body, "outbox database unreachable") {
		t.Errorf("/readyz with the database down: %s %s", resp.Status, body)
	}
	if strings.Contains(body, "127.0.0.1") || strings.Contains(body, "postgres") {
		t.Errorf("/readyz names the server or the user: %s", body)
	}
	if resp, _ := do(t, c, "GET", e.srv.URL+"/healthz", nil); resp.StatusCode != 200 {
		t.Errorf("/healthz with the database down: %s", resp.Status)
	}
	fams := scrape(t, c, e.srv.URL)
	if v := value(t, fams, "walhook_outbox_up"); v != 0 {
		t.Errorf("outbox_up = %v with the database down", v)
	}
	if resp, _ := do(t, c, "GET", e.srv.URL+"/", nil); resp.StatusCode != 200 {
		t.Errorf("status page with the database down: %s (want the page with an error on it)", resp.Status)
	}

	if err := cl.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if resp, body := readyz(200, 10*time.Second); resp.StatusCode != 200 {
		t.Fatalf("/readyz after the database came back: %s %s", resp.Status, body)
	}
}

func TestPagesEscapeUntrustedData(t *testing.T) {
	e := newEnv(t)
	evil := `<script>alert("x")</script>`
	id := e.insert(row{state: "failed", attempts: 3, lastStatus: 400, model: "Site",
		key:       `"><img src=x onerror=alert(1)>`,
		body:      `{"event":"created","model":"Site","data":{"name":"` + strings.ReplaceAll(evil, `"`, `\"`) + `"}}`,
		lastError: "HTTP 400: " + evil})
	e.exec(`INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration, status, error, response) VALUES
		($1, 1, now(), '1 ms', NULL, $2, NULL), ($1, 2, now(), '1 ms', 400, NULL, $2), ($1, 3, now(), '1 ms', 400, NULL, $3)`,
		id, evil, strings.Repeat(evil+"\n", 50))
	c := client(t)
	for _, path := range []string{"/", "/?state=failed", fmt.Sprintf("/deliveries/%d", id)} {
		resp, body := do(t, c, "GET", e.srv.URL+path, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s", path, resp.Status)
		}
		if strings.Contains(body, "<script") || strings.Contains(body, "<img") {
			t.Errorf("%s contains unescaped markup:\n%s", path, body)
		}
		if !strings.Contains(body, "&lt;script&gt;") {
			t.Errorf("%s does not show the escaped payload", path)
		}
		for k, want := range map[string]string{
			"Content-Security-Policy": "default-src 'self'",
			"X-Frame-Options":         "DENY",
			"X-Content-Type-Options":  "nosniff",
			"Cache-Control":           "no-store",
			"Content-Type":            "text/html; charset=utf-8",
		} {
			if got := resp.Header.Get(k); !strings.Contains(got, want) {
				t.Errorf("%s: %s = %q, want %q", path, k, got, want)
			}
		}
	}
}

func TestDeliveryPageShowsHeadersButNoSecrets(t *testing.T) {
	e := newEnv(t)
	id := e.insert(row{state: "failed", attempts: 3, lastStatus: 502, lastError: "HTTP 502: upstream down",
		body: `{"event":"created","model":"Site","data":{"id":7,"name":"ams1"}}`})
	// Its attempt history: a refused connection, a probe with a long
	// response (folded), and a 502 with a short one, newest first.
	e.exec(`INSERT INTO walhook.attempts (delivery_id, attempt, started_at, duration, status, error, response, probe) VALUES
		($1, 1, now() - interval '3 minutes', '2.5 ms', NULL, 'dial tcp 10.0.0.1:443: connect: connection refused', NULL, false),
		($1, 2, now() - interval '2 minutes', '1.5 s', 503, NULL, $2, true),
		($1, 3, now() - interval '1 minute', '40 ms', 502, NULL, 'upstream down', false)`,
		id, "first line of a long page\n"+strings.Repeat("more ", 200))
	_, body := do(t, client(t), "GET", fmt.Sprintf("%s/deliveries/%d", e.srv.URL, id), nil)
	attempts := regexp.MustCompile(`(?s)<tr id="attempt-3">.*40ms.*HTTP 502.*<code>upstream down</code>.*` +
		`<tr id="attempt-2">.*probe.*1\.5s.*HTTP 503.*<details><summary>first line of a long page</summary><pre>first line of a long page\nmore more.*` +
		`<tr id="attempt-1">.*2\.5ms.*no response.*dial tcp 10\.0\.0\.1:443: connect: connection refused`)
	if !attempts.MatchString(body) {
		t.Errorf("delivery page lacks the attempt history:\n%s", body)
	}
	for _, want := range []string{
		"Content-Type", "application/json", "User-Agent", "walhook/test", "X-Walhook-Delivery",
		fmt.Sprintf("<code>%d</code>", id), "X-Hook-Signature", "Authorization", "X-Team", "value redacted",
		"POST https://hooks.example.com/…", "HTTP 502: upstream down", `<span id="attempts">3</span>`, "retry.max_attempts: 3",
		// pretty-printed body
		"{\n  &#34;event&#34;: &#34;created&#34;",
		`id="state">failed<`, ">Retry</button>",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("delivery page lacks %q", want)
		}
	}
	for _, secret := range []string{"the-secret-value", "header-secret-value", "infra", "secret-path", "token=abc"} {
		if strings.Contains(body, secret) {
			t.Errorf("delivery page shows %q", secret)
		}
	}
	// A webhook without a secret sends no signature.
	id = e.insert(row{webhook: "audit", state: "delivered"})
	_, body = do(t, client(t), "GET", fmt.Sprintf("%s/deliveries/%d", e.srv.URL, id), nil)
	if strings.Contains(body, "<code>X-Hook-Signature</code></td>") || !strings.Contains(body, "Unsigned: the webhook has no secret") {
		t.Errorf("unsigned webhook's page:\n%s", body)
	}
	if !strings.Contains(body, ">Send again</button>") {
		t.Error("a delivered delivery has no Send again button")
	}
	if resp, _ := do(t, client(t), "GET", e.srv.URL+"/deliveries/999999", nil); resp.StatusCode != 404 {
		t.Errorf("missing delivery: %s", resp.Status)
	}
}

func TestRetryNeedsTheCSRFToken(t *testing.T) {
	e := newEnv(t)
	id := e.insert(row{state: "failed", attempts: 3, lastStatus: 500})
	c := client(t)
	retry := fmt.Sprintf("%s/deliveries/%d/retry", e.srv.URL, id)

	// No session, no token.
	if resp, _ := do(t, client(t), "POST", retry, url.Values{}); resp.StatusCode != 403 {
		t.Errorf("retry without session or CSRF token: %s", resp.Status)
	}
	_, page := do(t, c, "GET", e.srv.URL+"/?state=failed", nil)
	tok := csrf(t, page)
	// A session but no token, or a wrong one.
	if resp, _ := do(t, c, "POST", retry, url.Values{}); resp.StatusCode != 403 {
		t.Errorf("retry without CSRF token: %s", resp.Status)
	}
	if resp, _ := do(t, c, "POST", retry, url.Values{"csrf": {strings.Repeat("0", len(tok))}}); resp.StatusCode != 403 {
		t.Errorf("retry with a wrong CSRF token: %s", resp.Status)
	}
	// The token of another session.
	other := client(t)
	_, otherPage := do(t, other, "GET", e.srv.URL+"/", nil)
	if resp, _ := do(t, c, "POST", retry, url.Values{"csrf": {csrf(t, otherPage)}}); resp.StatusCode != 403 {
		t.Errorf("retry with another session's CSRF token: %s", resp.Status)
	}
	// A cross-site form post, even with the token.
	if resp, _ := do(t, c, "POST", retry, url.Values{"csrf": {tok}}, "Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"); resp.StatusCode != 403 {
		t.Errorf("cross-site retry: %s", resp.Status)
	}
	if got := e.state(id); got != "failed" {
		t.Fatalf("refused retries changed the row to %s", got)
	}

	resp, _ := do(t, c, "POST", retry, url.Values{"csrf": {tok}, "return": {"/?state=failed"}})
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/?done=retried&n=1&state=failed" {
		t.Fatalf("retry: %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	if got := e.state(id); got != "pending" {
		t.Errorf("retried row is %s", got)
	}
	_, page = do(t, c, "GET", e.srv.URL+resp.Header.Get("Location"), nil)
	if !strings.Contains(page, "Re-queued 1 delivery") {
		t.Error("no confirmation after the retry")
	}
	// An open redirect through "return" is not possible.
	resp, _ = do(t, c, "POST", retry, url.Values{"csrf": {tok}, "return": {"//evil.example/"}})
	if loc := resp.Header.Get("Location"); !strings.HasPrefix(loc, "/?") {
		t.Errorf("return=//evil.example/ redirected to %q", loc)
	}

	// Retry all failed of one webhook.
	a := e.insert(row{state: "failed", attempts: 3})
	b := e.insert(row{state: "failed", attempts: 3})
	other2 := e.insert(row{state: "failed", webhook: "audit", attempts: 5})
	all := e.srv.URL + "/webhooks/inventory/retry-failed"
	if resp, _ := do(t, c, "POST", all, url.Values{}); resp.StatusCode != 403 {
		t.Errorf("retry all without CSRF token: %s", resp.Status)
	}
	resp, _ = do(t, c, "POST", all, url.Values{"csrf": {tok}})
	if resp.StatusCode != 303 || !strings.Contains(resp.Header.Get("Location"), "n=2") {
		t.Errorf("retry all: %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	if e.state(a) != "pending" || e.state(b) != "pending" || e.state(other2) != "failed" {
		t.Errorf("after retry all of inventory: %s %s %s", e.state(a), e.state(b), e.state(other2))
	}
}

func TestTokenProtectsEverythingButTheProbes(t *testing.T) {
	const token = "correct-horse-battery-staple"
	e := newEnv(t, withToken(token))
	id := e.insert(row{state: "failed", attempts: 3})
	c := client(t)
	u := e.srv.URL

	// The probes answer without the token (a Kubernetes probe or a load
	// balancer has no secret), and name no host, user or database.
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, body := do(t, c, "GET", u+path, nil)
		if resp.StatusCode != 200 {
			t.Errorf("%s without token: %s %s", path, resp.Status, body)
		}
		for _, secret := range []string{"127.0.0.1", "postgres", e.pool.Config().ConnConfig.Database} {
			if strings.Contains(body, secret) {
				t.Errorf("%s body names %q: %s", path, secret, body)
			}
		}
	}
	for _, path := range []string{"/metrics", "/", fmt.Sprintf("/deliveries/%d", id)} {
		resp, _ := do(t, c, "GET", u+path, nil)
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s without token: %s", path, resp.Status)
		}
		if resp, _ := do(t, c, "GET", u+path, nil, "Authorization", "Bearer wrong"); resp.StatusCode != 401 {
			t.Errorf("%s with a wrong token: %s", path, resp.Status)
		}
		if resp, _ := do(t, c, "GET", u+path, nil, "Authorization", "Bearer "+token); resp.StatusCode != 200 {
			t.Errorf("%s with the bearer token: %s", path, resp.Status)
		}
	}
	// A browser is sent to the login form.
	resp, _ := do(t, c, "GET", u+"/?state=failed", nil, "Accept", "text/html")
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/login?next=%2F%3Fstate%3Dfailed" {
		t.Errorf("page without login: %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	// Without the token nothing is re-queued, CSRF token or not.
	retry := fmt.Sprintf("%s/deliveries/%d/retry", u, id)
	if resp, _ := do(t, c, "POST", retry, url.Values{"csrf": {"00"}}); resp.StatusCode != 401 {
		t.Errorf("retry without token: %s", resp.Status)
	}
	// A forged session cookie does not work.
	forged := client(t)
	su, _ := url.Parse(u)
	forged.Jar.SetCookies(su, []*http.Cookie{{Name: "walhook_session", Value: "abc.99999999999.00"}})
	if resp, _ := do(t, forged, "GET", u+"/", nil); resp.StatusCode != 401 {
		t.Errorf("forged cookie: %s", resp.Status)
	}

	if resp, body := do(t, c, "POST", u+"/login", url.Values{"token": {"wrong"}, "next": {"/?state=failed"}}); resp.StatusCode != 401 || !strings.Contains(body, "not the token") {
		t.Errorf("login with a wrong token: %s", resp.Status)
	}
	resp, _ = do(t, c, "POST", u+"/login", url.Values{"token": {token}, "next": {"/?state=failed"}})
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/?state=failed" {
		t.Fatalf("login: %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	var session *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "walhook_session" {
			session = ck
		}
	}
	if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || strings.Contains(session.Value, token) {
		t.Fatalf("session cookie: %+v", session)
	}
	resp, page := do(t, c, "GET", u+"/?state=failed", nil)
	if resp.StatusCode != 200 || !strings.Contains(page, "Log out") {
		t.Fatalf("page after login: %s", resp.Status)
	}
	// Logged in by cookie, a retry still needs the CSRF token.
	if resp, _ := do(t, c, "POST", retry, url.Values{}); resp.StatusCode != 403 {
		t.Errorf("retry by cookie without CSRF token: %s", resp.Status)
	}
	if resp, _ := do(t, c, "POST", retry, url.Values{"csrf": {csrf(t, page)}}); resp.StatusCode != 303 || e.state(id) != "pending" {
		t.Errorf("retry by cookie with CSRF token: %s, row %s", resp.Status, e.state(id))
	}
	// A bearer client (a script, not a browser) needs no CSRF token.
	id2 := e.insert(row{state: "failed", attempts: 3})
	if resp, _ := do(t, client(t), "POST", fmt.Sprintf("%s/deliveries/%d/retry", u, id2), url.Values{}, "Authorization", "Bearer "+token); resp.StatusCode != 303 || e.state(id2) != "pending" {
		t.Errorf("retry by bearer: %s, row %s", resp.Status, e.state(id2))
	}
	// Log out ends the session.
	if resp, _ := do(t, c, "POST", u+"/logout", url.Values{"csrf": {csrf(t, page)}}); resp.StatusCode != 303 {
		t.Errorf("logout: %s", resp.Status)
	}
	if resp, _ := do(t, c, "GET", u+"/", nil); resp.StatusCode != 401 {
		t.Errorf("page after logout: %s", resp.Status)
	}
}

func TestWithoutTokenOnlyLoopbackHostsAreServed(t *testing.T) {
	e := newEnv(t)
	c := client(t)
	// DNS rebinding: a page on evil.example whose name now points to
	// 127.0.0.1 sends Host: evil.example.
	for _, path := range []string{"/", "/metrics"} { // the probes name nothing and answer anyone
		if resp, _ := do(t, c, "GET", e.srv.URL+path, nil, "Host", "evil.example:9187"); resp.StatusCode != http.StatusMisdirectedRequest {
			t.Errorf("%s with Host evil.example: %s", path, resp.Status)
		}
	}
	for _, host := range []string{"localhost:9187", "127.0.0.1", "[::1]:9187"} {
		req, _ := http.NewRequest("GET", e.srv.URL+"/", nil)
		req.Host = host
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("Host %s: %s", host, resp.Status)
		}
	}
}

func TestListFiltersAndPages(t *testing.T) {
	e := newEnv(t)
	var ids []int64
	for i := range 120 {
		ids = append(ids, e.insert(row{state: "delivered", model: []string{"Site", "Device"}[i%2]}))
	}
	failed := e.insert(row{state: "failed", model: "Device", webhook: "audit", attempts: 5})
	c := client(t)
	idRE := regexp.MustCompile(`<tr id="delivery-(\d+)"`)
	listed := func(path string) (got []string, page string) {
		t.Helper()
		resp, page := do(t, c, "GET", e.srv.URL+path, nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s", path, resp.Status)
		}
		for _, m := range idRE.FindAllStringSubmatch(page, -1) {
			got = append(got, m[1])
		}
		return got, page
	}
	got, page := listed("/")
	if len(got) != 50 || got[0] != fmt.Sprint(failed) || got[1] != fmt.Sprint(ids[119]) {
		t.Fatalf("first page: %d rows starting %v", len(got), got[:min(3, len(got))])
	}
	older := regexp.MustCompile(`href="([^"]+)" rel="next"`).FindStringSubmatch(page)
	if older == nil {
		t.Fatal("no link to older deliveries")
	}
	got, page = listed(strings.ReplaceAll(older[1], "&amp;", "&"))
	if len(got) != 50 || got[0] != fmt.Sprint(ids[70]) {
		t.Errorf("second page starts at %v, want %d", got[:1], ids[70])
	}
	newer := regexp.MustCompile(`href="([^"]+)" rel="prev"`).FindStringSubmatch(page)
	if newer == nil {
		t.Fatal("no link to newer deliveries")
	}
	if got, _ := listed(strings.ReplaceAll(newer[1], "&amp;", "&")); len(got) != 50 || got[0] != fmt.Sprint(failed) {
		t.Errorf("back to newer: %d rows starting %v", len(got), got[:1])
	}

	if got, _ := listed("/?state=failed"); len(got) != 1 || got[0] != fmt.Sprint(failed) {
		t.Errorf("state=failed lists %v", got)
	}
	if got, _ := listed("/?model=Site&webhook=inventory"); len(got) != 50 || got[0] != fmt.Sprint(ids[118]) {
		t.Errorf("model=Site lists %d starting %v", len(got), got[:1])
	}
	if got, _ := listed("/?webhook=audit&state=failed"); len(got) != 1 {
		t.Errorf("webhook=audit&state=failed lists %v", got)
	}
	if got, _ := listed("/?state=bogus'--"); len(got) != 50 {
		t.Errorf("an unknown state is ignored, got %d rows", len(got))
	}
	if got, _ := listed("/?webhook=nobody"); len(got) != 0 {
		t.Errorf("webhook=nobody lists %v", got)
	}
	// The summary shows the failed count and its retry button.
	_, page = listed("/")
	if !strings.Contains(page, `action="/webhooks/audit/retry-failed"`) || !strings.Contains(page, "Retry all 1 failed") {
		t.Error("no retry-all button for audit's failed delivery")
	}
}

// A failed delivery older than a delivered change of the same object: its
// page says so before the click, and "retry all failed" leaves it failed.
func TestRetrySaysSoForSupersededDeliveries(t *testing.T) {
	e := newEnv(t)
	old := e.insert(row{state: "failed", key: "42", attempts: 3})
	e.insert(row{state: "delivered", key: "42", attempts: 1})
	other := e.insert(row{state: "failed", key: "43", attempts: 3})
	c := client(t)
	_, page := do(t, c, "GET", fmt.Sprintf("%s/deliveries/%d", e.srv.URL, old), nil)
	if !strings.Contains(page, `id="superseded"`) {
		t.Errorf("the page of a superseded delivery does not warn:\n%s", page)
	}
	if _, p2 := do(t, c, "GET", fmt.Sprintf("%s/deliveries/%d", e.srv.URL, other), nil); strings.Contains(p2, `id="superseded"`) {
		t.Error("the page of a delivery nothing superseded warns")
	}
	_, index := do(t, c, "GET", e.srv.URL+"/", nil)
	resp, _ := do(t, c, "POST", e.srv.URL+"/webhooks/inventory/retry-failed", url.Values{"csrf": {csrf(t, index)}})
	if resp.StatusCode != 303 {
		t.Fatalf("retry all: %s", resp.Status)
	}
	if e.state(old) != "failed" || e.state(other) != "pending" {
		t.Errorf("after retry all: superseded %s (want failed), other %s (want pending)", e.state(old), e.state(other))
	}
}

// A delivery whose body_template failed at capture: its stored body is the
// default body, so its page offers no retry and says why, and a retry
// posted anyway leaves it failed.
func TestDeliveryFailedAtCaptureIsNotRetried(t *testing.T) {
	e := newEnv(t)
	id := e.insert(row{state: "failed", lastError: "body_template: template: x:1: nil pointer evaluating"})
	c := client(t)
	_, page := do(t, c, "GET", fmt.Sprintf("%s/deliveries/%d", e.srv.URL, id), nil)
	if !strings.Contains(page, `id="failed-at-capture"`) || strings.Contains(page, `class="retry"`) {
		t.Errorf("the page of a delivery failed at capture offers a retry or does not say why:\n%s", page)
	}
	_, index := do(t, c, "GET", e.srv.URL+"/", nil)
	resp, _ := do(t, c, "POST", fmt.Sprintf("%s/deliveries/%d/retry", e.srv.URL, id), url.Values{"csrf": {csrf(t, index)}})
	if resp.StatusCode != 303 {
		t.Fatalf("retry: %s", resp.Status)
	}
	if st := e.state(id); st != "failed" {
		t.Errorf("a delivery failed at capture is %s after a retry from the page, want failed", st)
	}
}

// TestPagesShowTraceAndInsecureTLS checks that the delivery page prints the
// delivery's trace id (the one its traceparent carries) and that the
// summary flags a webhook whose receiver certificate is not checked.
func TestPagesShowTraceAndInsecureTLS(t *testing.T) {
	e := newEnv(t, func(c *config.Config, _ *web.Options) { c.Webhooks[0].TLS.InsecureSkipVerify = true })
	id := e.insert(row{state: "delivered"})
	_, body := do(t, client(t), "GET", fmt.Sprintf("%s/deliveries/%d", e.srv.URL, id), nil)
	trace := tracecontext.ForDelivery("inventory", id).String()
	if !strings.Contains(body, `<code id="trace-id">`+trace+`</code>`) {
		t.Errorf("delivery page lacks trace id %s", trace)
	}
	if !strings.Contains(body, "00-"+trace+"-") {
		t.Errorf("delivery page lacks the traceparent header")
	}
	_, body = do(t, client(t), "GET", e.srv.URL+"/", nil)
	if !strings.Contains(body, `id="insecure-inventory"`) || strings.Contains(body, `id="insecure-audit"`) {
		t.Errorf("summary does not flag exactly the insecure webhook:\n%s", body)
	}
}

// stalledDispatch is a DispatchStatus whose stall the test sets.
type stalledDispatch struct{ why atomic.Pointer[string] }

func (d *stalledDispatch) Stall() string {
	if p := d.why.Load(); p != nil {
		return *p
	}
	return ""
}

// /readyz reports a dispatcher whose delivery outcomes cannot be written
// (it has stopped claiming, so it is not ready), and the metrics count the
// failed writes and the dropped outcomes.
func TestReadyzReportsAStalledDispatcher(t *testing.T) {
	disp := &stalledDispatch{}
	e := newEnv(t, func(_ *config.Config, o *web.Options) { o.Dispatch = disp })
	metrics := e.metrics
	c := client(t)
	if resp, body := do(t, c, "GET", e.srv.URL+"/readyz", nil); resp.StatusCode != 200 {
		t.Fatalf("/readyz: %s %s", resp.Status, body)
	}
	why := "writing delivery outcomes keeps failing: ERROR at 10.1.2.3"
	disp.why.Store(&why)
	metrics.OutcomeWriteFailed()
	metrics.OutcomesDropped(2)
	resp, body := do(t, c, "GET", e.srv.URL+"/readyz", nil)
	if resp.StatusCode != 503 || !strings.Contains(body, "cannot write delivery outcomes") || strings.Contains(body, "10.1.2.3") {
		t.Errorf("/readyz while outcomes cannot be written: %s %s", resp.Status, body)
	}
	fams := scrape(t, c, e.srv.URL)
	if v := value(t, fams, "walhook_outcome_write_errors_total"); v != 1 {
		t.Errorf("outcome_write_errors_total = %v", v)
	}
	if v := value(t, fams, "walhook_outcomes_dropped_total"); v != 2 {
		t.Errorf("outcomes_dropped_total = %v", v)
	}
	disp.why.Store(nil)
	if resp, body := do(t, c, "GET", e.srv.URL+"/readyz", nil); resp.StatusCode != 200 {
		t.Errorf("/readyz once outcomes are written again: %s %s", resp.Status, body)
	}
}

// The summary's "Last failure" names the status once: not again when the
// error text starts with it.
func TestLastFailureNamesTheStatusOnce(t *testing.T) {
	e := newEnv(t)
	e.insert(row{state: "failed", attempts: 1, lastStatus: 401, lastError: "HTTP 401: bad signature"})
	e.insert(row{state: "failed", webhook: "audit", attempts: 1, lastStatus: 502, lastError: "upstream says no"})
	_, body := do(t, client(t), "GET", e.srv.URL+"/", nil)
	hookRow := func(name string) string {
		_, rest, _ := strings.Cut(body, `<tr id="hook-`+name+`">`)
		row, _, _ := strings.Cut(rest, "</tr>")
		return row
	}
	if row := hookRow("inventory"); strings.Count(row, "HTTP 401") != 1 || !strings.Contains(row, "HTTP 401: bad signature") {
		t.Errorf("inventory's last failure:\n%s", row)
	}
	if row := hookRow("audit"); !strings.Contains(row, "· HTTP 502") || !strings.Contains(row, "upstream says no") {
		t.Errorf("audit's last failure:\n%s", row)
	}
}

func TestReadyzAnswersAtOnceOnADeadPath(t *testing.T) {
	dsn := pg.NewDB(t)
	px, proxied := netproxy.ForDSN(t, dsn)
	capture := &fakeCapture{}
	capture.streaming.Store(true)
	e := newEnvOn(t, proxied, withCapture(capture))
	c := client(t)
	// readyz waits until /readyz answers want, for at most within; every
	// answer must come within a second.
	readyz := func(want int, within time.Duration) string {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			start := time.Now()
			resp, body := do(t, c, "GET", e.srv.URL+"/readyz", nil)
			if d := time.Since(start); d > time.Second {
				t.Fatalf("/readyz took %s to answer", d)
			}
			if resp.StatusCode == want {
				return body
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz still answers %s %s after %s", resp.Status, body, within)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	readyz(200, 10*time.Second)
	px.Freeze() // the outbox stops answering, nothing is closed
	if body := readyz(503, 15*time.Second); !strings.Contains(body, "outbox database unreachable") {
		t.Errorf("/readyz on a dead path: %s", body)
	}
	px.Heal() // new connections work, the frozen ones stay frozen
	readyz(200, 30*time.Second)
}
