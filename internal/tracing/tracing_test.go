package tracing

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/walhook/walhook/internal/tracecontext"
)

// TestExportOTLPHTTP sends a span to an in-process OTLP/HTTP collector
// and checks that it arrives at /v1/traces as protobuf, in the trace set
// with WithTraceID.
func TestExportOTLPHTTP(t *testing.T) {
	var got atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			t.Errorf("collector got %s %s (%s)", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		got.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	p, err := New(srv.URL, "test")
	if err != nil {
		t.Fatal(err)
	}
	want := tracecontext.ForDelivery("inventory", 42)
	_, span := p.Tracer().Start(WithTraceID(context.Background(), want), "attempt")
	if tracecontext.TraceID(span.SpanContext().TraceID()) != want {
		t.Errorf("trace id %s, want %s", span.SpanContext().TraceID(), want)
	}
	span.End()
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got.Load() == 0 {
		t.Error("no export reached the collector")
	}
	if _, err := New("localhost:4318", "test"); err == nil {
		t.Error("New accepted an endpoint without scheme")
	}
}
