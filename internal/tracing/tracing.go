// Package tracing exports walhook's spans through the OpenTelemetry SDK
// (OTLP over HTTP) when tracing.otlp_endpoint is set. Every delivery is one
// trace whose id is tracecontext.ForDelivery, the id its traceparent
// headers carry; IDGenerator makes the SDK use it.
package tracing

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/url"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/walhook/walhook/internal/tracecontext"
)

// ServiceName is the service.name of walhook's spans.
const ServiceName = "walhook"

// Provider owns the SDK's tracer provider and its exporter.
type Provider struct {
	tp *sdktrace.TracerProvider
}

// New returns a Provider that batches spans to the OTLP/HTTP collector at
// endpoint (e.g. http://localhost:4318; spans go to its /v1/traces unless
// the URL has another path).
func New(endpoint, version string) (*Provider, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("tracing: otlp_endpoint %q is not an http(s) URL", endpoint)
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(endpoint)}
	if u.Path == "" || u.Path == "/" {
		opts = append(opts, otlptracehttp.WithURLPath("/v1/traces"))
	}
	exp, err := otlptracehttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	res := resource.NewSchemaless(attribute.String("service.name", ServiceName), attribute.String("service.version", version))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithIDGenerator(IDGenerator()),
	)
	return &Provider{tp: tp}, nil
}

// Tracer is walhook's tracer.
func (p *Provider) Tracer() trace.Tracer { return p.tp.Tracer("github.com/walhook/walhook") }

// Shutdown flushes the spans still queued, waiting at most 5 s.
func (p *Provider) Shutdown(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return p.tp.Shutdown(ctx)
}

type traceIDKey struct{}

// WithTraceID makes the next root span started from ctx (by a provider
// with IDGenerator) belong to trace id.
func WithTraceID(ctx context.Context, id tracecontext.TraceID) context.Context {
	return context.WithValue(ctx, traceIDKey{}, id)
}

// IDGenerator returns the SDK ID generator walhook's providers use: root
// spans take the trace id set with WithTraceID (a random one without it),
// span ids are random.
func IDGenerator() sdktrace.IDGenerator { return idGenerator{} }

type idGenerator struct{}

func (idGenerator) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if id, ok := ctx.Value(traceIDKey{}).(tracecontext.TraceID); ok {
		return trace.TraceID(id), trace.SpanID(tracecontext.NewSpanID())
	}
	var t trace.TraceID
	for !t.IsValid() {
		_, _ = rand.Read(t[:])
	}
	return t, trace.SpanID(tracecontext.NewSpanID())
}

func (idGenerator) NewSpanID(context.Context, trace.TraceID) trace.SpanID {
	return trace.SpanID(tracecontext.NewSpanID())
}
