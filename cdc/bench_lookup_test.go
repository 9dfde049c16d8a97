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

// BenchmarkCaptureEnqueueAPI is BenchmarkCaptureEnqueue with an API-style
// model: two relations (nested objects with url), a choice, a rename and two
// computed fields (a count and a json_agg of tags), so that it measures the
// cost of the batched lookups: 100 transactions of 1,000 rows.
func BenchmarkCaptureEnqueueAPI(b *testing.B) {
	ctx := context.Background()
	cl, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"fsync": "on", "synchronous_commit": "on"}})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	const txns, perTx = 100, 1000
	for i := 0; i < b.N; i++ {
		dsn, err := cl.CreateDB(ctx, "benchapi")
		if err != nil {
			b.Fatal(err)
		}
		pool, err := pgxpool.New(ctx, dsn)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `
			CREATE TABLE region (id bigint PRIMARY KEY, name text, slug text);
			INSERT INTO region SELECT g, 'Region ' || g, 'region-' || g FROM generate_series(1, 50) g;
			CREATE TABLE tenant (id bigint PRIMARY KEY, name text, slug text);
			INSERT INTO tenant SELECT g, 'Tenant ' || g, 'tenant-' || g FROM generate_series(1, 20) g;
			CREATE TABLE tag (id bigint PRIMARY KEY, name text, slug text, color text);
			INSERT INTO tag SELECT g, 'Tag ' || g, 'tag-' || g, 'ff0000' FROM generate_series(1, 5) g;
			CREATE TABLE tagged (object_id bigint, tag_id bigint REFERENCES tag); CREATE INDEX ON tagged (object_id);
			INSERT INTO tagged SELECT g, 1 + g % 5 FROM generate_series(1, 100000, 3) g;
			CREATE TABLE device (id bigint PRIMARY KEY, site_id bigint); CREATE INDEX ON device (site_id);
			INSERT INTO device SELECT g, g % 5000 FROM generate_series(1, 20000) g;
			CREATE TABLE site (id bigint PRIMARY KEY, name text, slug text, status text, region_id bigint, tenant_id bigint,
				custom_field_data jsonb DEFAULT '{}', created timestamptz DEFAULT now())`); err != nil {
			b.Fatal(err)
		}
		cfg, err := config.Parse("bench.yaml", fmt.Appendf(nil, `
database: {dsn: %q, slot: benchapi_%d}
models:
  - table: site
    model: Site
    url: /api/dcim/sites/{id}/
    rename: {custom_field_data: custom_fields}
    choices: {status: {active: Active, planned: Planned}}
    relations:
      region_id: {table: region, columns: [id, name AS display, name, slug], url: "/api/dcim/regions/{id}/"}
      tenant_id: {table: tenant, columns: [id, name AS display, name, slug], url: "/api/tenancy/tenants/{id}/"}
    computed:
      device_count: {sql: "SELECT count(*) FROM device WHERE site_id = $1", args: [id]}
      tags: {sql: "SELECT coalesce(json_agg(json_build_object('id', t.id, 'name', t.name, 'slug', t.slug, 'color', t.color)), '[]') FROM tagged x JOIN tag t ON t.id = x.tag_id WHERE x.object_id = $1", args: [id]}
webhooks: [{name: w, url: 'http://127.0.0.1:1/'}]
http: {listen: ''}
`, dsn, i), nil)
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
			if _, err := pool.Exec(ctx, `INSERT INTO site (id, name, slug, status, region_id, tenant_id)
				SELECT g, 'site ' || g, 'site-' || g, CASE WHEN g % 3 = 0 THEN 'planned' ELSE 'active' END, 1 + g % 50, nullif(g % 21, 0)
				FROM generate_series($1::int, $2::int) g`, t*perTx+1, (t+1)*perTx); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		start := time.Now()
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(rctx) }()
		for c.Enqueued() < txns*perTx {
			time.Sleep(time.Millisecond)
		}
		el := time.Since(start)
		b.StopTimer()
		cancel()
		<-done
		b.ReportMetric(float64(txns*perTx)/el.Seconds(), "rows/s")
		_, _ = pool.Exec(ctx, "SELECT pg_drop_replication_slot($1)", cfg.Database.Slot)
		pool.Close()
	}
}
