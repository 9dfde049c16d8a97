package cdc_test

import (
	"testing"
	"time"

	"github.com/walhook/walhook/cdc"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// With a Tracer, each captured source transaction is a span (its commit LSN,
// changes and delivery rows) and each outbox commit one (rows enqueued).
func TestCaptureSpans(t *testing.T) {
	t.Parallel()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	b := setup(t, `CREATE TABLE site (id int PRIMARY KEY, name text)`, `
  - table: site
    model: Site`)
	b.Run(cdc.Options{StatusInterval: 200 * time.Millisecond, Tracer: tp.Tracer("test")})
	b.Exec(`INSERT INTO site VALUES (1, 'a'), (2, 'b'), (3, 'c')`)
	b.WaitRows(6) // two webhooks
	deadline := time.Now().Add(5 * time.Second)
	var txn, enq int
	for time.Now().Before(deadline) {
		txn, enq = 0, 0
		for _, s := range exp.GetSpans() {
			attrs := map[attribute.Key]attribute.Value{}
			for _, kv := range s.Attributes {
				attrs[kv.Key] = kv.Value
			}
			switch s.Name {
			case "capture transaction":
				if attrs["walhook.changes"].AsInt64() == 3 && attrs["walhook.deliveries"].AsInt64() == 6 && attrs["walhook.commit_lsn"].AsString() != "" {
					txn++
				}
			case "enqueue":
				enq += int(attrs["walhook.rows"].AsInt64())
			}
		}
		if txn == 1 && enq >= 6 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("spans: %d capture transactions with 3 changes and 6 rows (want 1), %d rows in enqueue spans (want 6): %v", txn, enq, exp.GetSpans())
}
