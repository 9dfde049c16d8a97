package cdc_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/test/pgtest"
)

// BenchmarkCaptureEnqueue measures capture from a cold start: 100,000
// committed inserts (100 transactions of 1,000 rows) are waiting in the WAL;
// the time is from Run to all 100,000 deliveries committed in the outbox.
// It uses its own cluster with fsync on, as production would.
func BenchmarkCaptureEnqueue(b *testing.B) {
	ctx := context.Background()
	cl, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"fsync": "on", "synchronous_commit": "on"}})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	const txns, perTx = 100, 1000
	for i := 0; i < b.N; i++ {
		dsn, err := cl.CreateDB(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `CREATE TABLE item (id int PRIMARY KEY, name text, qty int, price numeric, tags text[], created timestamptz DEFAULT now())`); err != nil {
			b.Fatal(err)
		}
		cfg, err := config.Parse("bench.yaml", fmt.Appendf(nil, "database: {dsn: %q, slot: bench_%d}\nmodels: [{table: item}]\nwebhooks: [{name: w, url: 'http://127.0.0.1:1/'}]\nhttp: {listen: ''}\n", dsn, i), nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := migrations.Apply(ctx, pool, "walhook"); err != nil {
			b.Fatal(err)
		}
		c, err := cdc.New(cdc.Options{Config: cfg, Source: pool, Outbox: pool, Logger: zerolog.Nop()})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Prepare(ctx); err != nil {
			b.Fatal(err)
		}
		for t := 0; t < txns; t++ {
			if _, err := pool.Exec(ctx, `INSERT INTO item SELECT g, 'item ' || g, g % 7, g * 1.25, '{a,b}' FROM generate_series($1::int, $2::int) g`, t*perTx+1, (t+1)*perTx); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		start := time.Now()
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(rctx) }()
		for {
			if c.Enqueued() >= txns*perTx {
				break
			}
			time.Sleep(time.Millisecond)
		}
		el := time.Since(start)
		b.StopTimer()
		cancel()
		<-done
		b.ReportMetric(float64(txns*perTx)/el.Seconds(), "rows/s")
		pool.Exec(ctx, "SELECT pg_drop_replication_slot($1)", cfg.Database.Slot)
		pool.Close()
	}
}
