package dispatch_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/tracing"
	"github.com/walhook/walhook/internal/web"
)

// BenchmarkDispatch measures end-to-end throughput: rows already in the
// outbox, signed POSTs to a local receiver that answers 204 at once, until
// every row is marked delivered in the database. The metrics variant adds
// the Prometheus observer walhook runs with; the tracing variants add a
// span per attempt, batched by the OpenTelemetry SDK to an in-memory
// exporter or over OTLP/HTTP to an in-process collector.
func BenchmarkDispatch(b *testing.B) {
	const rows = 20000
	for _, bc := range []struct {
		concurrency int
		metrics     bool
		tracing     string // "", "memory" or "otlp"
	}{{16, false, ""}, {64, false, ""}, {64, true, ""}, {64, false, "memory"}, {64, false, "otlp"}} {
		concurrency := bc.concurrency
		name := fmt.Sprintf("concurrency=%d", concurrency)
		if bc.metrics {
			name += "/metrics"
		}
		if bc.tracing != "" {
			name += "/tracing=" + bc.tracing
		}
		b.Run(name, func(b *testing.B) {
			e := setup(b)
			var got atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				got.Add(1)
				w.WriteHeader(http.StatusNoContent)
			}))
			b.Cleanup(srv.Close)
			cfg := testConfig(concurrency, hookConfig("w", srv.URL, func(w *config.Webhook) {
				w.Secret = "benchmark secret"
				w.Headers = map[string]string{"Authorization": "Bearer x"}
			}))
			cfg.Dispatch.PollInterval = config.Duration(time.Second)
			var tracer oteltrace.Tracer
			switch bc.tracing {
			case "memory":
				exp := tracetest.NewInMemoryExporter()
				tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithIDGenerator(tracing.IDGenerator()))
				b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
				tracer = tp.Tracer("bench")
			case "otlp":
				collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, _ = io.Copy(io.Discard, r.Body)
					w.WriteHeader(http.StatusOK)
				}))
				b.Cleanup(collector.Close)
				tp, err := tracing.New(collector.URL, "bench")
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
				tracer = tp.Tracer()
			}
			var elapsed time.Duration
			var sent int
			offset := 0
			for b.Loop() {
				b.StopTimer()
				e.exec(`DELETE FROM walhook.deliveries`)
				e.insertMany("w", rows, offset)
				offset += rows
				got.Store(0)
				opts := dispatch.Options{Pool: e.pool, Config: cfg, Logger: testLogger(b), Version: "bench"}
				opts.Tracer = tracer
				if bc.metrics {
					opts.Observer = web.NewMetrics(cfg, "bench")
				}
				d, err := dispatch.New(opts)
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				b.StartTimer()
				start := time.Now()
				go func() { done <- d.Run(ctx) }()
				for got.Load() < rows {
					time.Sleep(time.Millisecond)
				}
				for e.count(`state = 'delivered'`) < rows {
					time.Sleep(time.Millisecond)
				}
				elapsed += time.Since(start)
				sent += rows
				b.StopTimer()
				cancel()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(sent)/elapsed.Seconds(), "deliveries/s")
		})
	}
}
