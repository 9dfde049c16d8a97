package web

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
)

// namespace prefixes every walhook metric.
const namespace = "walhook"

// Bucket bounds in seconds.
var (
	attemptBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	latencyBuckets = []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600}
)

// Metrics holds walhook's Prometheus metrics in a registry of its own. It is
// the cdc.Observer and dispatch.Observer of a process; the Server adds the
// metrics read from the database and the capture at scrape time.
type Metrics struct {
	reg      *prometheus.Registry
	enqueued *prometheus.CounterVec
	attempts *prometheus.CounterVec
	duration *prometheus.HistogramVec
	latency  *prometheus.HistogramVec
	breaker  *prometheus.GaugeVec
	unmapped *prometheus.CounterVec
	truncate *prometheus.CounterVec
	gaps     *prometheus.CounterVec
	// outcomeErrors and outcomesDropped count failed writes of delivery
	// outcomes and outcomes given up on (dispatch.OutcomeObserver).
	outcomeErrors, outcomesDropped prometheus.Counter
	// hooks holds the series of the configured webhooks, resolved once so
	// that observing an attempt takes no lock. Replaced whole (never
	// changed) when a reload adds webhooks.
	hooks atomic.Pointer[map[string]*hookMetrics]
	// reloadOK and reloadAt: the last reload's outcome and when the
	// configuration was last loaded successfully (at start or by a reload).
	reloadOK, reloadAt prometheus.Gauge
	hooksMu            sync.Mutex // serialises AddWebhooks
}

// hookMetrics are one webhook's series, plus counts for the status page.
type hookMetrics struct {
	delivered, retry, failed prometheus.Counter
	duration, latency        prometheus.Observer
	// Attempts made by this process since it started, by outcome.
	nDelivered, nRetry, nFailed atomic.Int64
}

// NewMetrics creates the metrics of a process running cfg. Series of every
// configured webhook, model and event start at zero, so that rate() and
// absence alerts work from the first scrape.
func NewMetrics(cfg *config.Config, version string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "enqueued_deliveries_total",
			Help: "Delivery rows committed to the outbox by capture, by model and event: one per captured row change and matching webhook.",
		}, []string{"model", "event"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "delivery_attempts_total",
			Help: "HTTP delivery attempts by webhook and outcome: delivered (2xx), retry (failed, will be retried), failed (failed on the last allowed attempt).",
		}, []string{"webhook", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "delivery_attempt_duration_seconds",
			Help:    "Duration of HTTP delivery attempts, whatever their outcome, by webhook.",
			Buckets: attemptBuckets,
		}, []string{"webhook"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "delivery_latency_seconds",
			Help:    "Time from the source transaction's commit to the receiver's 2xx answer, by webhook (retries included).",
			Buckets: latencyBuckets,
		}, []string{"webhook"}),
		breaker: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "webhook_circuit_open",
			Help: "1 while this process has paused a webhook because its receiver keeps failing (circuit breaker open or probing), else 0.",
		}, []string{"webhook"}),
		unmapped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "changes_unmapped_total",
			Help: "Changes of a published table that no model maps: not sent (each table is also logged at error level once).",
		}, []string{"table"}),
		truncate: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "truncates_total",
			Help: "TRUNCATEs of captured tables: their rows are not sent (resend with a backfill if receivers need them).",
		}, []string{"table"}),
		gaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "capture_gaps_total",
			Help: "Starts of capture after a gap: the slot was created again, or the source is another server or timeline; changes in the gap were not captured.",
		}, []string{"slot"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "config_last_reload_successful",
			Help: "1 when the last configuration reload (SIGHUP or POST /-/reload) succeeded, or none was tried; 0 when it failed and the previous configuration stayed in use.",
		}),
		reloadAt: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "config_last_reload_success_timestamp_seconds",
			Help: "When the configuration in use was loaded (at start or by the last successful reload), as Unix seconds.",
		}),
		outcomeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "outcome_write_errors_total",
			Help: "Failed writes of a batch of delivery outcomes (each is retried; after 3 in a row /readyz reports it).",
		}),
		outcomesDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "outcomes_dropped_total",
			Help: "Delivery outcomes given up on because the database keeps refusing them: their rows are sent again once their lease runs out.",
		}),
	}
	m.reloadOK.Set(1)
	m.reloadAt.SetToCurrentTime()
	hooks := map[string]*hookMetrics{}
	m.hooks.Store(&hooks)
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Always 1; the version label is walhook's version.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	build.Set(1)
	m.reg.MustRegister(m.enqueued, m.attempts, m.duration, m.latency, m.breaker, m.unmapped, m.truncate, m.gaps, build, m.reloadOK, m.reloadAt,
		m.outcomeErrors, m.outcomesDropped,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cfg == nil {
		return m
	}
	m.gaps.WithLabelValues(cfg.Database.Slot)
	m.AddWebhooks(cfg)
	return m
}

// AddWebhooks adds the series of cfg's models and webhooks that are not
// there yet (after a reload; the series of removed ones stay).
func (m *Metrics) AddWebhooks(cfg *config.Config) {
	m.hooksMu.Lock()
	defer m.hooksMu.Unlock()
	for _, md := range cfg.Models {
		for _, ev := range config.Events {
			m.enqueued.WithLabelValues(md.Model, ev)
		}
	}
	old := *m.hooks.Load()
	hooks := make(map[string]*hookMetrics, len(old)+len(cfg.Webhooks))
	for k, v := range old {
		hooks[k] = v
	}
	for _, w := range cfg.Webhooks {
		if _, ok := hooks[w.Name]; !ok {
			hooks[w.Name] = m.newHook(w.Name)
			m.breaker.WithLabelValues(w.Name).Set(0)
		}
	}
	m.hooks.Store(&hooks)
}

// ConfigReloaded records a reload's outcome (walhook_config_last_reload_*).
func (m *Metrics) ConfigReloaded(ok bool) {
	if ok {
		m.reloadOK.Set(1)
		m.reloadAt.SetToCurrentTime()
		return
	}
	m.reloadOK.Set(0)
}

func (m *Metrics) newHook(name string) *hookMetrics {
	return &hookMetrics{
		delivered: m.attempts.WithLabelValues(name, string(outbox.OutcomeDelivered)),
		retry:     m.attempts.WithLabelValues(name, string(outbox.OutcomeRetry)),
		failed:    m.attempts.WithLabelValues(name, string(outbox.OutcomeFailed)),
		duration:  m.duration.WithLabelValues(name),
		latency:   m.latency.WithLabelValues(name),
	}
}

// Registry is the registry /metrics serves.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// OutcomeWriteFailed implements dispatch.OutcomeObserver.
func (m *Metrics) OutcomeWriteFailed() { m.outcomeErrors.Inc() }

// OutcomesDropped implements dispatch.OutcomeObserver.
func (m *Metrics) OutcomesDropped(n int) { m.outcomesDropped.Add(float64(n)) }

// Enqueued implements cdc.Observer.
func (m *Metrics) Enqueued(model, event string, rows int) {
	m.enqueued.WithLabelValues(model, event).Add(float64(rows))
}

// Attempted implements dispatch.Observer. It takes no lock for configured
// webhooks.
func (m *Metrics) Attempted(a outbox.Attempt) {
	h, ok := (*m.hooks.Load())[a.Webhook]
	if !ok {
		// Not configured, so the dispatcher cannot send it; handled for
		// completeness, at the price of a label lookup.
		h = m.newHook(a.Webhook)
	}
	h.duration.Observe(a.Duration.Seconds())
	switch a.Outcome {
	case outbox.OutcomeDelivered:
		h.delivered.Inc()
		h.nDelivered.Add(1)
		if !a.CommittedAt.IsZero() {
			h.latency.Observe(max(time.Since(a.CommittedAt).Seconds(), 0))
		}
	case outbox.OutcomeRetry:
		h.retry.Inc()
		h.nRetry.Add(1)
	case outbox.OutcomeFailed:
		h.failed.Inc()
		h.nFailed.Add(1)
	}
}

// Unmapped implements cdc.LossObserver.
func (m *Metrics) Unmapped(table string) { m.unmapped.WithLabelValues(table).Inc() }

// Truncated implements cdc.LossObserver.
func (m *Metrics) Truncated(table string) { m.truncate.WithLabelValues(table).Inc() }

// Gap implements cdc.GapObserver.
func (m *Metrics) Gap(slot string) { m.gaps.WithLabelValues(slot).Inc() }

// BreakerChanged implements dispatch.BreakerObserver.
func (m *Metrics) BreakerChanged(webhook string, state outbox.BreakerState) {
	v := 1.0
	if state == outbox.BreakerClosed {
		v = 0
	}
	m.breaker.WithLabelValues(webhook).Set(v)
}

// processCounts are a webhook's attempts made by this process, for the page.
type processCounts struct{ Delivered, Retry, Failed int64 }

func (m *Metrics) processCounts(webhook string) (processCounts, bool) {
	h, ok := (*m.hooks.Load())[webhook]
	if !ok {
		return processCounts{}, false
	}
	return processCounts{h.nDelivered.Load(), h.nRetry.Load(), h.nFailed.Load()}, true
}
