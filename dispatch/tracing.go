package dispatch

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/walhook/walhook/internal/tracecontext"
	"github.com/walhook/walhook/internal/tracing"
)

// Span attribute keys of an attempt.
const (
	attrDelivery = "walhook.delivery.id"
	attrWebhook  = "walhook.webhook"
	attrModel    = "walhook.model"
	attrAttempt  = "walhook.attempt"
	attrProbe    = "walhook.breaker_probe"
	attrStatus   = "http.response.status_code"
	attrMethod   = "http.request.method"
)

// startSpan starts the client span of one attempt of j in the delivery's
// trace.
func (d *Dispatcher) startSpan(ctx context.Context, trace tracecontext.TraceID, j *job) (context.Context, oteltrace.Span) {
	h := j.hook
	return d.tracer.Start(tracing.WithTraceID(ctx, trace), "webhook "+h.name,
		oteltrace.WithNewRoot(),
		oteltrace.WithSpanKind(oteltrace.SpanKindClient),
		oteltrace.WithAttributes(
			attribute.Int64(attrDelivery, j.id),
			attribute.String(attrWebhook, h.name),
			attribute.String(attrModel, j.model),
			attribute.Int(attrAttempt, j.attempts),
			attribute.Bool(attrProbe, j.probe),
			attribute.String(attrMethod, h.method),
		))
}

// endSpan records an attempt's outcome on its span and ends it. The error
// text is the one stored in the outbox (no secrets, cut short).
func endSpan(span oteltrace.Span, resp response) {
	if resp.status != 0 {
		span.SetAttributes(attribute.Int(attrStatus, resp.status))
	}
	if resp.status < http.StatusOK || resp.status >= http.StatusMultipleChoices {
		span.SetStatus(codes.Error, logText(resp.err))
	}
	span.End()
}
