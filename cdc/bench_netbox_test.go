package cdc_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/test/cdctest"
	"github.com/walhook/walhook/test/pgtest"
)

// BenchmarkNetBoxExample measures capture with examples/netbox.yaml (or the
// file in $WALHOOK_NETBOX_EXAMPLE) on the NetBox demo subset: 40 committed
// bulk updates of its 176 interfaces (Interface has 12 relations and 18
// computed fields) wait in the WAL; the time is from Run to all 7,040
// deliveries committed. Its own cluster, fsync on.
func BenchmarkNetBoxExample(b *testing.B) {
	ctx := context.Background()
	schema, err := os.ReadFile("testdata/netbox-demo/netbox-demo.sql")
	if err != nil {
		b.Fatal(err)
	}
	example := os.Getenv("WALHOOK_NETBOX_EXAMPLE")
	if example == "" {
		example = "../examples/netbox.yaml"
	}
	text, err := os.ReadFile(example)
	if err != nil {
		b.Fatal(err)
	}
	cl, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"fsync": "on", "synchronous_commit": "on"}})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	const txns = 40
	for i := 0; i < b.N; i++ {
		dsn, err := cl.CreateDB(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := pool.Exec(ctx, string(schema)+`;
			ALTER TABLE dcim_device REPLICA IDENTITY FULL; ALTER TABLE dcim_interface REPLICA IDENTITY FULL`); err != nil {
			b.Fatal(err)
		}
		cfg, err := config.Parse("netbox.yaml", text, func(k string) (string, bool) { return dsn, k == "DATABASE_URL" })
		if err != nil {
			b.Fatal(err)
		}
		cfg.Database.Slot, cfg.Database.Publication = cdctest.Slot(dsn), cdctest.Slot(dsn)
		if _, err := migrations.Apply(ctx, pool, "walhook"); err != nil {
			b.Fatal(err)
		}
		pc, _ := pgxpool.ParseConfig(dsn)
		for k, v := range cdc.SessionParams {
			pc.ConnConfig.RuntimeParams[k] = v
		}
		source, err := pgxpool.NewWithConfig(ctx, pc)
		if err != nil {
			b.Fatal(err)
		}
		c, err := cdc.New(cdc.Options{Config: cfg, Source: source, Outbox: pool, Logger: zerolog.Nop()})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Prepare(ctx); err != nil {
			b.Fatal(err)
		}
		var rows int64
		for t := 0; t < txns; t++ {
			tag, err := pool.Exec(ctx, `UPDATE dcim_interface SET description = 'bench ' || $1::int`, t)
			if err != nil {
				b.Fatal(err)
			}
			rows += tag.RowsAffected()
		}
		b.StartTimer()
		start := time.Now()
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(rctx) }()
		for c.Enqueued() < rows {
			time.Sleep(time.Millisecond)
		}
		el := time.Since(start)
		b.StopTimer()
		cancel()
		<-done
		source.Close()
		pool.Close()
		b.ReportMetric(float64(rows)/el.Seconds(), "rows/s")
	}
}
