package backfill

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/test/cdctest"
	"github.com/walhook/walhook/test/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) } // goleak included

func TestBackfillUsageErrors(t *testing.T) {
	cfg := &config.Config{Models: []config.Model{{Schema: "public", Name: "site", Model: "Site"}}}
	for _, o := range []Options{
		{Config: cfg, Model: "Nope"},
		{Config: cfg, Model: "Site", Event: payload.EventDeleted},
	} {
		_, err := Run(context.Background(), o)
		var be *Error
		if !errors.As(err, &be) {
			t.Errorf("%+v: err = %v, want an Error", o, err)
		}
	}
}

// TestBackfillWithCoalescingWebhook: a backfill sends a webhook with
// coalesce: transaction one event per row, stamped with its own page's LSN,
// and writes only to the webhooks it was asked for.
func TestBackfillWithCoalescingWebhook(t *testing.T) {
	b := cdctest.Setup(t, pg, `CREATE TABLE item (id int PRIMARY KEY, v text); INSERT INTO item SELECT g, 'x' FROM generate_series(1, 250) g`, `
  - table: item`)
	cfg, err := config.Parse("test.yaml", fmt.Appendf(nil, `
database:
  dsn: %s
  slot: %s
models:
  - table: item
webhooks:
  - name: plain
    url: http://127.0.0.1:1/p
  - name: co
    url: http://127.0.0.1:1/c
    coalesce: transaction
http:
  listen: ""`, b.DSN, b.Cfg.Database.Slot), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	run := func(webhook string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p, err := Run(ctx, Options{Config: cfg, Source: b.Source, Outbox: b.DB, Logger: zerolog.New(zerolog.NewTestWriter(t)),
			Model: "item", Webhook: webhook, PageSize: 100, Restart: true})
		if err != nil || !p.Finished {
			t.Fatalf("backfill --webhook %q: %+v, %v", webhook, p, err)
		}
	}
	run("plain")
	if n, co := b.Count("true"), b.Count("webhook = 'co'"); n != 250 || co != 0 {
		t.Fatalf("backfill --webhook plain: %d rows, %d for co; want 250 for plain only", n, co)
	}
	b.Exec(`DELETE FROM walhook.deliveries`)
	run("co")
	if n, co := b.Count("true"), b.Count("webhook = 'co'"); n != 250 || co != 250 {
		t.Fatalf("backfill --webhook co: %d rows, %d for co; want 250 for co only", n, co)
	}
	b.Exec(`DELETE FROM walhook.deliveries`)
	run("")
	if n, co := b.Count("webhook = 'plain'"), b.Count("webhook = 'co'"); n != 250 || co != 250 {
		t.Fatalf("backfill of every webhook: %d rows for plain, %d for co, want 250 each", n, co)
	}
	// Both webhooks' rows of an object carry the same page LSN and seq; 3
	// pages, 3 LSNs.
	if n := b.Count(`(commit_lsn, seq, object_key) NOT IN (SELECT commit_lsn, seq, object_key FROM walhook.deliveries WHERE webhook = 'co')
		AND webhook = 'plain'`); n != 0 {
		t.Errorf("%d rows for plain without the same page LSN and seq for co", n)
	}
	var pages int
	if err := b.DB.QueryRow(context.Background(), `SELECT count(DISTINCT commit_lsn) FROM walhook.deliveries WHERE webhook = 'plain'`).Scan(&pages); err != nil || pages != 3 {
		t.Errorf("plain's rows carry %d page LSNs, want 3 (%v)", pages, err)
	}
}

// TestBackfillWaitsForCommittingTransaction: a backfill page does not read a
// row before a transaction that has written its commit record (and so sorts
// before the page) becomes visible: the page would carry the row's state
// from before it, after it.
func TestBackfillWaitsForCommittingTransaction(t *testing.T) {
	ctx := context.Background()
	src, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{
		"synchronous_standby_names": "'nosuch'", "synchronous_commit": "local"}})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	srcDSN := src.NewDB(t)
	b := cdctest.Setup(t, pg, `SELECT 1`, `
  - table: item`)
	b.Cfg.Database.DSN = srcDSN
	srcDB, err := pgxpool.New(ctx, srcDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer srcDB.Close()
	release := func() {
		for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = ''`, `SELECT pg_reload_conf()`} {
			if _, err := srcDB.Exec(ctx, q); err != nil {
				t.Error(err)
			}
		}
	}
	defer release()
	if _, err := srcDB.Exec(ctx, `CREATE TABLE item (id int PRIMARY KEY, v int); INSERT INTO item VALUES (1, 1)`); err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	go func() {
		_, err := srcDB.Exec(ctx, `SET synchronous_commit = on; BEGIN; UPDATE item SET v = 2; COMMIT; SET synchronous_commit = local`)
		committed <- err
	}()
	// The UPDATE's commit record is flushed once it waits for the standby.
	cdctest.WaitUntil(t, "the update to wait for the standby", func() bool {
		var n int
		_ = srcDB.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'`).Scan(&n)
		return n == 1
	})
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, Options{Config: b.Cfg, Source: srcDB, Outbox: b.DB, Logger: zerolog.New(zerolog.NewTestWriter(t)), Model: "item"})
		done <- err
	}()
	select {
	case err := <-done:
		t.Errorf("backfill finished (%v) while a transaction before its page was not visible", err)
	case <-time.After(time.Second):
	}
	release()
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("backfill did not finish")
	}
	if got := cdctest.DataOf(t, b.Bodies("webhook = 'a'")[0]); got != `{"id":1,"v":2}` {
		t.Errorf("backfilled %s, want the committed state v=2", got)
	}
}
