package dispatch_test

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/tracecontext"
	"github.com/walhook/walhook/internal/tracing"
)

// TestTracingSpans exports through the SDK to an in-memory exporter: one
// trace per delivery, whose id is the delivery's, with one client span per
// attempt whose id is the parent id that attempt's traceparent carried.
func TestTracingSpans(t *testing.T) {
	t.Parallel()
	e := setup(t)
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithIDGenerator(tracing.IDGenerator()))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })

	var mu sync.Mutex
	parents := map[string]int{} // traceparent -> status answered
	calls := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		id := r.Header.Get("X-Walhook-Delivery")
		calls[id]++
		status := http.StatusNoContent
		if calls[id] == 1 {
			status = http.StatusServiceUnavailable // every delivery needs two attempts
		}
		parents[r.Header.Get("Traceparent")] = status
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	a, b := e.insertOne("traced", `{"id":1}`), e.insertOne("traced", `{"id":2}`)
	e.start(e.pool, testConfig(2, hookConfig("traced", srv.URL)), func(o *dispatch.Options) { o.Tracer = tp.Tracer("test") })
	e.waitState(a, "delivered", 20*time.Second)
	e.waitState(b, "delivered", 20*time.Second)

	spans := exp.GetSpans()
	byTrace := map[tracecontext.TraceID][]tracetest.SpanStub{}
	for _, s := range spans {
		byTrace[tracecontext.TraceID(s.SpanContext.TraceID())] = append(byTrace[tracecontext.TraceID(s.SpanContext.TraceID())], s)
	}
	if len(byTrace) != 2 || len(spans) != 4 {
		t.Fatalf("%d spans in %d traces, want 4 in 2", len(spans), len(byTrace))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, id := range []int64{a, b} {
		trace := tracecontext.ForDelivery("traced", id)
		got := byTrace[trace]
		if len(got) != 2 {
			t.Errorf("delivery %d: %d spans in trace %s, want 2", id, len(got), trace)
			continue
		}
		for _, s := range got {
			attrs := map[attribute.Key]attribute.Value{}
			for _, kv := range s.Attributes {
				attrs[kv.Key] = kv.Value
			}
			if attrs["walhook.delivery.id"].AsInt64() != id || attrs["walhook.webhook"].AsString() != "traced" || attrs["walhook.model"].AsString() != "Site" {
				t.Errorf("span attributes %v", s.Attributes)
			}
			header := tracecontext.Format(trace, tracecontext.SpanID(s.SpanContext.SpanID()), tracecontext.FlagSampled)
			status, sent := parents[header]
			if !sent {
				t.Errorf("span %s: no request carried traceparent %s", s.SpanContext.SpanID(), header)
			}
			if got := attrs["http.response.status_code"].AsInt64(); got != int64(status) {
				t.Errorf("span status attribute %d, receiver answered %d", got, status)
			}
			if (status >= 300) != (s.Status.Code == codes.Error) {
				t.Errorf("span status %v for HTTP %d", s.Status, status)
			}
			if s.Parent.IsValid() {
				t.Errorf("attempt span has a parent %s", s.Parent.SpanID())
			}
		}
	}
}
