package dispatch

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/tracing"
)

// BenchmarkAttempt measures one signed attempt to a local receiver without
// the outbox around it, so that the cost of a span per attempt (batched by
// the SDK to an in-memory exporter) stands out from the database's noise.
func BenchmarkAttempt(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	b.Cleanup(srv.Close)
	// The pool is never used: attempt does not touch the database.
	pool, err := pgxpool.New(context.Background(), "postgres://bench@127.0.0.1:1/bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	w := config.Webhook{Name: "w", URL: srv.URL, HTTPMethod: "POST", Secret: "benchmark secret",
		Timeout: config.Duration(5 * time.Second), Retry: config.Retry{MaxAttempts: 3}}
	cfg := &config.Config{Database: config.Database{Schema: "walhook"}, Webhooks: []config.Webhook{w},
		Dispatch: config.Dispatch{Concurrency: 4}}
	cfg.ApplyDefaults()
	body := []byte(`{"event":"created","model":"Site","data":{"id":1,"name":"ams1"}}`)
	for _, mode := range []string{"off", "memory"} {
		b.Run("tracing="+mode, func(b *testing.B) {
			opts := Options{Pool: pool, Config: cfg, Logger: zerolog.Nop()}
			if mode == "memory" {
				tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewInMemoryExporter()),
					sdktrace.WithIDGenerator(tracing.IDGenerator()))
				b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
				opts.Tracer = tp.Tracer("bench")
			}
			d, err := New(opts)
			if err != nil {
				b.Fatal(err)
			}
			h := d.hooks["w"]
			b.ReportAllocs()
			id := int64(0)
			for b.Loop() {
				id++
				r := d.attempt(context.Background(), &job{id: id, hook: h, body: body, attempts: 1})
				if r.Status != http.StatusNoContent {
					b.Fatalf("status %d: %s", r.Status, r.Err)
				}
			}
		})
	}
}
