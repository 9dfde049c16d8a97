package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// writeWebConfig writes a config like writeConfig's, but with the status
// server on a free loopback port (read back with httpAddr) and token.
func (e *env) writeWebConfig(body, token string) {
	e.t.Helper()
	e.cfg = filepath.Join(e.t.TempDir(), "walhook.yaml")
	text := fmt.Sprintf("database:\n  dsn: %s\n  slot: %s\n%s\nhttp:\n  listen: 127.0.0.1:0\n  token: %q\nlog:\n  level: info\n",
		e.dsn, e.slot, body, token)
	if err := os.WriteFile(e.cfg, []byte(text), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// httpAddr waits for the process's "http server listening" log line and
// returns its base URL.
func (e *env) httpAddr(p *proc) string {
	e.t.Helper()
	var addr string
	e.waitFor("the http server to listen", 20*time.Second, func() bool {
		sc := bufio.NewScanner(strings.NewReader(p.output()))
		for sc.Scan() {
			var line struct {
				Message, Addr string
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Message == "http server listening" {
				addr = line.Addr
				return true
			}
		}
		return false
	})
	return "http://" + addr
}

// get fetches url with an optional bearer token.
func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrapeMetrics reads /metrics into name -> series.
func scrapeMetrics(t *testing.T, base, token string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, base+"/metrics", token)
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// sample returns the value of a counter or gauge series, or a histogram's
// count; -1 when the series does not exist.
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			ok := false
			for _, l := range m.GetLabel() {
				ok = ok || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
			}
			if !ok {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		}
	}
	return -1
}

func TestMetricsHealthAndPageThroughTheBinary(t *testing.T) {
	e := newEnv(t, `CREATE TABLE site (id int PRIMARY KEY, name text)`)
	rcv := newReceiver(t, "s3cret")
	const token = "metrics-test-token"
	e.writeWebConfig(fmt.Sprintf(`models:
  - table: site
    model: Site
webhooks:
  - name: r
    url: %s/hook
    secret: s3cret`, rcv.URL), token)
	p := e.start("run")
	base := e.httpAddr(p)
	if code, _ := get(t, base+"/healthz", ""); code != 200 {
		t.Fatalf("/healthz: %d", code)
	}
	if code, _ := get(t, base+"/metrics", ""); code != 401 {
		t.Errorf("/metrics without the token: %d", code)
	}
	e.waitStreaming()
	e.waitFor("/readyz", 10*time.Second, func() bool { code, _ := get(t, base+"/readyz", token); return code == 200 })

	before := scrapeMetrics(t, base, token)
	if v := sample(before, "walhook_delivery_attempts_total", "webhook", "r", "outcome", "delivered"); v != 0 {
		t.Fatalf("delivered before any change: %v", v)
	}
	e.exec(`INSERT INTO site VALUES (1, 'a'), (2, '<script>alert(1)</script>')`)
	e.exec(`UPDATE site SET name = 'c' WHERE id = 1`)
	e.waitFor("3 webhooks", 20*time.Second, func() bool { return rcv.distinct() == 3 })

	var fams map[string]*dto.MetricFamily
	e.waitFor("the metrics to count 3 deliveries", 10*time.Second, func() bool {
		fams = scrapeMetrics(t, base, token)
		return sample(fams, "walhook_delivery_attempts_total", "webhook", "r", "outcome", "delivered") == 3
	})
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"walhook_enqueued_deliveries_total", []string{"model", "Site", "event", "created"}, 2},
		{"walhook_enqueued_deliveries_total", []string{"model", "Site", "event", "updated"}, 1},
		{"walhook_enqueued_deliveries_total", []string{"model", "Site", "event", "deleted"}, 0},
		{"walhook_delivery_attempts_total", []string{"webhook", "r", "outcome", "retry"}, 0},
		{"walhook_delivery_attempt_duration_seconds", []string{"webhook", "r"}, 3},
		{"walhook_delivery_latency_seconds", []string{"webhook", "r"}, 3},
		{"walhook_replication_connected", nil, 1},
		{"walhook_slot_active", []string{"slot", e.slot}, 1},
		{"walhook_outbox_up", nil, 1},
	} {
		if got := sample(fams, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	e.waitFor("the outbox gauges to show nothing pending", 10*time.Second, func() bool {
		fams = scrapeMetrics(t, base, token)
		return sample(fams, "walhook_outbox_deliveries", "webhook", "r", "state", "pending") == 0 &&
			sample(fams, "walhook_outbox_deliveries", "webhook", "r", "state", "delivering") == 0 &&
			sample(fams, "walhook_outbox_oldest_pending_seconds", "webhook", "r") == 0
	})
	if v := sample(fams, "walhook_replication_confirmed_lsn"); v <= 0 {
		t.Errorf("confirmed LSN = %v", v)
	}
	if v := sample(fams, "walhook_slot_lag_bytes", "slot", e.slot); v < 0 {
		t.Errorf("slot lag = %v", v)
	}

	// The page shows the payload escaped.
	var id int
	e.waitFor("the delivery row", 5*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE body LIKE '%<script>%'`) == 1
	})
	id = e.count(`SELECT id FROM walhook.deliveries WHERE body LIKE '%<script>%'`)
	code, page := get(t, fmt.Sprintf("%s/deliveries/%d", base, id), token)
	if code != 200 || strings.Contains(page, "<script>") || !strings.Contains(page, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Errorf("delivery page (%d) does not escape the payload:\n%s", code, page)
	}
	if strings.Contains(page, "s3cret") {
		t.Error("the delivery page shows the webhook's secret")
	}
	if out := p.output(); strings.Contains(out, "s3cret") || strings.Contains(out, token) || strings.Contains(out, "alert(1)") {
		t.Errorf("the log shows a secret, the token or a body:\n%s", out)
	}
	p.stop(t)
}

func TestBrowserRetriesAFailedDelivery(t *testing.T) {
	b := startBrowser(t) // skips without chromium
	e := newEnv(t, `CREATE TABLE site (id int PRIMARY KEY, name text)`)
	var accept atomic.Bool
	var got atomic.Int64
	var sent atomic.Value // the header names of the accepted request
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if !accept.Load() {
			http.Error(w, "receiver is down for maintenance", http.StatusServiceUnavailable)
			return
		}
		var names []string
		for k := range r.Header {
			if k != "Content-Length" && k != "Accept-Encoding" { // Go's client sets these
				names = append(names, k)
			}
		}
		sort.Strings(names)
		sent.Store(strings.Join(names, " "))
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rcv.Close)
	const token = "browser-test-token"
	e.writeWebConfig(fmt.Sprintf(`models:
  - table: site
    model: Site
webhooks:
  - name: shop
    url: %s/hook
    signature: standard-webhooks
    secrets: [whsec_c2VjcmV0IG9uZSBvZiB0d2VudHktZm91cg==, whsec_c2VjcmV0IHR3byBvZiB0d2VudHktZm91cg==]
    headers: {Authorization: Bearer browser-header-secret}
    retry: {max_attempts: 1}`, rcv.URL), token)
	p := e.start("run")
	base := e.httpAddr(p)
	e.waitStreaming()
	e.exec(`INSERT INTO site VALUES (42, 'ams1')`)
	e.waitFor("the delivery to fail", 20*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'failed'`) == 1
	})
	id := e.count(`SELECT id FROM walhook.deliveries`)
	accept.Store(true) // the receiver is back

	// The failed list needs a login first.
	b.navigate(base + "/?state=failed")
	b.waitFor("the login form", 5*time.Second, `location.pathname === "/login" && document.querySelector("#token")`)
	b.screenshot("1-login")
	b.click("#token")
	b.typeText(token)
	b.click(`form[action="/login"] button`)
	row := fmt.Sprintf("#delivery-%d", id)
	b.waitFor("the failed list after login", 10*time.Second,
		fmt.Sprintf(`location.pathname === "/" && location.search === "?state=failed" && document.querySelector(%q)`, row))
	if s := b.text(row + " .state"); s != "failed" {
		t.Fatalf("the row shows state %q", s)
	}
	if s := b.text(row + " .err"); !strings.Contains(s, "HTTP 503: receiver is down for maintenance") {
		t.Errorf("the row shows error %q", s)
	}
	b.screenshot("2-failed")

	b.click(row + " button.retry")
	b.waitFor("the confirmation", 10*time.Second, `document.readyState === "complete" && location.search.includes("done=retried")`)
	if s := b.text("#flash"); !strings.Contains(s, "Re-queued 1 delivery") {
		t.Errorf("flash after Retry: %q", s)
	}
	b.screenshot("3-retried")

	// The delivery page shows it delivered once the sender is done.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.navigate(fmt.Sprintf("%s/deliveries/%d", base, id))
		if b.text("#state") == "delivered" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery %d still %q in the browser 10s after Retry", id, b.text("#state"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if s := b.text("#attempts"); s != "2" {
		t.Errorf("attempts shown: %q", s)
	}
	// The attempt history, newest first: the retry's numbering goes on
	// after the failed attempt, which keeps its status and response.
	if s := b.text("#attempt-history tbody tr:first-child"); !strings.HasPrefix(s, "2") {
		t.Errorf("the newest attempt row reads %q, want attempt 2", s)
	}
	if s := b.text("#attempt-2 .status"); s != "HTTP 204" {
		t.Errorf("attempt 2 shows status %q", s)
	}
	if s := b.text("#attempt-2 .err"); s != "empty body" {
		t.Errorf("attempt 2 shows %q", s)
	}
	if s := b.text("#attempt-1 .status"); s != "HTTP 503" {
		t.Errorf("attempt 1 shows status %q", s)
	}
	if s := b.text("#attempt-1 .err"); !strings.Contains(s, "receiver is down for maintenance") {
		t.Errorf("attempt 1 shows %q, want the response body", s)
	}
	if s := b.text("#attempt-1 .took"); !regexp.MustCompile(`^[0-9.]+(µs|ms|s)$`).MatchString(s) {
		t.Errorf("attempt 1 took %q", s)
	}
	b.screenshot("4-delivered")
	// The request section lists exactly the headers the receiver got,
	// Standard Webhooks ones included, and no secret.
	var shown []string
	if err := b.eval(`Array.from(document.querySelectorAll("table.headers tbody tr td:first-child")).map(td => td.textContent)`, &shown); err != nil {
		t.Fatal(err)
	}
	for i, n := range shown {
		shown[i] = http.CanonicalHeaderKey(n)
	}
	sort.Strings(shown)
	if want, _ := sent.Load().(string); strings.Join(shown, " ") != want {
		t.Errorf("the delivery page lists the headers %v; the receiver got %s", shown, want)
	}
	if page := b.text("main"); strings.Contains(page, "browser-header-secret") || strings.Contains(page, "c2VjcmV0") {
		t.Error("the delivery page shows a secret")
	}
	if got.Load() != 1 {
		t.Errorf("the receiver accepted %d requests, want 1", got.Load())
	}

	// The webhook's chart of the last hour shows the failed attempt and the
	// delivery once the dispatcher has written its counts (every 10 s),
	// coloured by the stylesheet, with no CSP violation.
	e.waitFor("the attempts in the minutes table", 20*time.Second, func() bool {
		return e.count(`SELECT coalesce(sum(delivered), 0) * 10 + coalesce(sum(failed), 0) FROM walhook.minutes WHERE webhook = 'shop'`) == 11
	})
	b.must(b.session, "Page.addScriptToEvaluateOnNewDocument", map[string]any{"source": `window.cspViolations = [];
		document.addEventListener("securitypolicyviolation", e => window.cspViolations.push(e.violatedDirective + " " + e.sample));`}, nil)
	b.navigate(base + "/")
	var chart struct {
		Label             string
		Width, Height     float64
		Delivered, Failed string
		BarHeight         float64
		Violations        []string
	}
	err := b.eval(`(() => { const svg = document.querySelector("#chart-shop svg"); if (!svg) return null;
		const r = svg.getBoundingClientRect(), ok = svg.querySelector("rect.delivered"), bad = svg.querySelector("rect.failed");
		return {Label: svg.getAttribute("aria-label"), Width: r.width, Height: r.height,
			Delivered: ok ? getComputedStyle(ok).fill : "", Failed: bad ? getComputedStyle(bad).fill : "",
			BarHeight: ok ? ok.getBoundingClientRect().height : 0, Violations: window.cspViolations}; })()`, &chart)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(chart.Label, "shop, last hour: 1 delivered, 1 failed attempts (0 retried, 1 gave up)") ||
		chart.Width < 100 || chart.Height < 50 || chart.BarHeight < 1 {
		t.Errorf("the shop chart: %+v", chart)
	}
	// --ok and --bad of walhook.css: the classes apply.
	if chart.Delivered != "rgb(23, 128, 61)" || chart.Failed != "rgb(180, 35, 24)" {
		t.Errorf("chart bars coloured %q and %q, want the stylesheet's green and red", chart.Delivered, chart.Failed)
	}
	if len(chart.Violations) > 0 {
		t.Errorf("the status page violates its CSP: %q", chart.Violations)
	}
	b.screenshot("5-charts")
	// The recorder sees a violation when there is one.
	_ = b.eval(`document.body.insertAdjacentHTML("beforeend", '<p style="color: red">x</p>')`, nil)
	b.waitFor("the deliberate CSP violation to be reported", 5*time.Second, `window.cspViolations.length === 1`)
	p.stop(t)
}
