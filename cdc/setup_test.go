package cdc_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/cdc/source"
	"github.com/walhook/walhook/test/pgtest"
)

func TestPrepareSaysHowToFixServerAndRole(t *testing.T) {
	t.Parallel()
	t.Run("role without REPLICATION", func(t *testing.T) {
		b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE ROLE app LOGIN; GRANT SELECT ON s TO app`, "  - table: s")
		u, _ := url.Parse(b.DSN)
		u.User = url.User("app")
		pool, err := pgxpool.New(context.Background(), u.String())
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		c, _ := cdc.New(cdc.Options{Config: b.Cfg, Source: pool, Outbox: b.DB, Logger: zerolog.Nop()})
		err = c.Prepare(context.Background())
		if !cdc.IsFatal(err) || !strings.Contains(err.Error(), `ALTER ROLE "app" REPLICATION`) {
			t.Fatalf("Prepare = %v, want a fatal error naming ALTER ROLE app REPLICATION", err)
		}
	})
	t.Run("wal_level replica", func(t *testing.T) {
		ctx := context.Background()
		cl, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"wal_level": "replica"}})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		pool, err := pgxpool.New(ctx, cl.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		b := setup(t, `CREATE TABLE s (id int PRIMARY KEY)`, "  - table: s")
		c, _ := cdc.New(cdc.Options{Config: b.Cfg, Source: pool, Outbox: b.DB, Logger: zerolog.Nop()})
		err = c.Prepare(ctx)
		var fe *source.FatalError
		if !errors.As(err, &fe) || !strings.Contains(err.Error(), "ALTER SYSTEM SET wal_level = logical") {
			t.Fatalf("Prepare = %v, want a fatal error with the fix", err)
		}
	})
}

func TestPublicationFollowsConfig(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY); CREATE TABLE v (id int PRIMARY KEY)`, "  - table: s\n  - table: u")
	b.Start()
	b.Stop()
	// Drop u, add v: the publication follows on the next start.
	b.Cfg.Models = b.Cfg.Models[:1]
	b.Cfg.Models = append(b.Cfg.Models, b.Cfg.Models[0])
	b.Cfg.Models[1].Table, b.Cfg.Models[1].Name, b.Cfg.Models[1].Model = "v", "v", "v"
	b.Start()
	var tables string
	if err := b.DB.QueryRow(context.Background(), `SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = 'walhook'`).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != "s,v" {
		t.Fatalf("publication tables = %s, want s,v", tables)
	}
}

func TestPublicationOwnedByAnotherRole(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY);
		CREATE ROLE pubapp LOGIN REPLICATION; GRANT SELECT ON s, u TO pubapp;
		CREATE PUBLICATION walhook FOR TABLE u`, "  - table: s")
	u, _ := url.Parse(b.DSN)
	u.User = url.User("pubapp")
	pool, err := pgxpool.New(context.Background(), u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	c, _ := cdc.New(cdc.Options{Config: b.Cfg, Source: pool, Outbox: b.DB, Logger: zerolog.Nop()})
	err = c.Prepare(context.Background())
	if !cdc.IsFatal(err) || !strings.Contains(err.Error(), "owned by role postgres") || !strings.Contains(err.Error(), `ALTER PUBLICATION "walhook" SET TABLE "public"."s"`) {
		t.Fatalf("Prepare = %v, want a fatal error naming the owner and the fix", err)
	}
}
