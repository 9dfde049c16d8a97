package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/test/pgtest"
	"go.uber.org/goleak"
)

var pg *pgtest.Cluster

// TestMain runs the tests on one cluster, then checks that no goroutine a
// backfill started (the lookups' workers) outlived its Run.
func TestMain(m *testing.M) {
	code := pgtest.Main(m, &pg)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left behind:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// bundle is one test's database (source and outbox in one), config and pools.
type bundle struct {
	t      *testing.T
	dsn    string
	cfg    *config.Config
	db     *pgxpool.Pool
	source *pgxpool.Pool // with cdc.SessionParams
}

// setup creates a database with schemaSQL, the outbox schema, and a config
// with the models YAML and webhooks a and b.
func setup(t *testing.T, schemaSQL, modelsYAML string) *bundle {
	t.Helper()
	ctx := context.Background()
	b := &bundle{t: t, dsn: pg.NewDB(t)}
	var err error
	b.db, err = pgxpool.New(ctx, b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.db.Close)
	if _, err := b.db.Exec(ctx, schemaSQL); err != nil {
		t.Fatal(err)
	}
	db := b.dsn[strings.LastIndex(b.dsn, "/")+1:]
	db, _, _ = strings.Cut(db, "?")
	b.cfg, err = config.Parse("test.yaml", fmt.Appendf(nil, `
database:
  dsn: %s
  slot: s_%s
models:
%s
webhooks:
  - name: a
    url: http://127.0.0.1:1/a
  - name: b
    url: http://127.0.0.1:1/b
    events: [created, deleted]
http:
  listen: ""
`, b.dsn, db, modelsYAML), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Apply(ctx, b.db, "walhook"); err != nil {
		t.Fatal(err)
	}
	pc, err := pgxpool.ParseConfig(b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range cdc.SessionParams {
		pc.ConnConfig.RuntimeParams[k] = v
	}
	if b.source, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.source.Close)
	return b
}

func (b *bundle) exec(sql string) {
	b.t.Helper()
	if _, err := b.db.Exec(context.Background(), sql); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
}

func (b *bundle) count(where string) int {
	b.t.Helper()
	var n int
	if err := b.db.QueryRow(context.Background(), "SELECT count(*) FROM walhook.deliveries WHERE "+where).Scan(&n); err != nil {
		b.t.Fatal(err)
	}
	return n
}

// bodies returns the bodies of the deliveries matching where, in outbox order.
func (b *bundle) bodies(where string) []string {
	b.t.Helper()
	rows, err := b.db.Query(context.Background(), "SELECT body::text FROM walhook.deliveries WHERE "+where+" ORDER BY commit_lsn, seq, webhook")
	if err != nil {
		b.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			b.t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func dataOf(t *testing.T, raw string) string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatalf("body %s: %v", raw, err)
	}
	return string(m["data"])
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

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
	b := setup(t, `CREATE TABLE item (id int PRIMARY KEY, v text); INSERT INTO item SELECT g, 'x' FROM generate_series(1, 250) g`, `
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
  listen: ""`, b.dsn, b.cfg.Database.Slot), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	run := func(webhook string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		p, err := Run(ctx, Options{Config: cfg, Source: b.source, Outbox: b.db, Logger: zerolog.New(zerolog.NewTestWriter(t)),
			Model: "item", Webhook: webhook, PageSize: 100, Restart: true})
		if err != nil || !p.Finished {
			t.Fatalf("backfill --webhook %q: %+v, %v", webhook, p, err)
		}
	}
	run("plain")
	if n, co := b.count("true"), b.count("webhook = 'co'"); n != 250 || co != 0 {
		t.Fatalf("backfill --webhook plain: %d rows, %d for co; want 250 for plain only", n, co)
	}
	b.exec(`DELETE FROM walhook.deliveries`)
	run("co")
	if n, co := b.count("true"), b.count("webhook = 'co'"); n != 250 || co != 250 {
		t.Fatalf("backfill --webhook co: %d rows, %d for co; want 250 for co only", n, co)
	}
	b.exec(`DELETE FROM walhook.deliveries`)
	run("")
	if n, co := b.count("webhook = 'plain'"), b.count("webhook = 'co'"); n != 250 || co != 250 {
		t.Fatalf("backfill of every webhook: %d rows for plain, %d for co, want 250 each", n, co)
	}
	// Both webhooks' rows of an object carry the same page LSN and seq; 3
	// pages, 3 LSNs.
	if n := b.count(`(commit_lsn, seq, object_key) NOT IN (SELECT commit_lsn, seq, object_key FROM walhook.deliveries WHERE webhook = 'co')
		AND webhook = 'plain'`); n != 0 {
		t.Errorf("%d rows for plain without the same page LSN and seq for co", n)
	}
	var pages int
	if err := b.db.QueryRow(context.Background(), `SELECT count(DISTINCT commit_lsn) FROM walhook.deliveries WHERE webhook = 'plain'`).Scan(&pages); err != nil || pages != 3 {
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
	b := setup(t, `SELECT 1`, `
  - table: item`)
	b.cfg.Database.DSN = srcDSN
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
	waitUntil(t, "the update to wait for the standby", func() bool {
		var n int
		_ = srcDB.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'`).Scan(&n)
		return n == 1
	})
	done := make(chan error, 1)
	go func() {
		_, err := Run(ctx, Options{Config: b.cfg, Source: srcDB, Outbox: b.db, Logger: zerolog.New(zerolog.NewTestWriter(t)), Model: "item"})
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
	if got := dataOf(t, b.bodies("webhook = 'a'")[0]); got != `{"id":1,"v":2}` {
		t.Errorf("backfilled %s, want the committed state v=2", got)
	}
}
