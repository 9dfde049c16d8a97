// Package cdctest gives the tests of capture and of packages built on it
// (backfill, preflight) one database each, with the outbox migrated, a
// configuration, pools, and a capture they can start.
package cdctest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/test/pgtest"
)

// Bundle is one test's database (source and outbox in one), configuration,
// pools and, once started, running capture.
type Bundle struct {
	T      *testing.T
	DSN    string
	Cfg    *config.Config
	DB     *pgxpool.Pool // plain pool: the outbox, and SQL of the test
	Source *pgxpool.Pool // with cdc.SessionParams
	// Capture is the capture Start started (nil before).
	Capture *cdc.Capture
	cancel  context.CancelFunc
	done    chan error
}

// Setup creates a database on pg with schemaSQL and the outbox schema, and a
// configuration with the models YAML, webhooks a (every event) and b
// (created and deleted), and a slot of the database's own (slots are
// cluster-wide).
func Setup(t *testing.T, pg *pgtest.Cluster, schemaSQL, modelsYAML string) *Bundle {
	t.Helper()
	ctx := context.Background()
	b := &Bundle{T: t, DSN: pg.NewDB(t)}
	var err error
	if b.DB, err = pgxpool.New(ctx, b.DSN); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.DB.Close)
	if _, err := b.DB.Exec(ctx, schemaSQL); err != nil {
		t.Fatal(err)
	}
	b.Reconfigure(modelsYAML, Webhooks)
	if _, err := migrations.Apply(ctx, b.DB, "walhook"); err != nil {
		t.Fatal(err)
	}
	pc, err := pgxpool.ParseConfig(b.DSN)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range cdc.SessionParams {
		pc.ConnConfig.RuntimeParams[k] = v
	}
	if b.Source, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Source.Close)
	t.Cleanup(func() {
		_, _ = b.DB.Exec(context.Background(), "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", b.Cfg.Database.Slot)
	})
	return b
}

// Webhooks are the webhooks of a Setup configuration: a takes every event,
// b created and deleted.
const Webhooks = `  - name: a
    url: http://127.0.0.1:1/a
  - name: b
    url: http://127.0.0.1:1/b
    events: [created, deleted]
`

// Slot is the replication slot of the database of dsn: its own, as slots
// are cluster-wide.
func Slot(dsn string) string {
	db := dsn[strings.LastIndex(dsn, "/")+1:]
	db, _, _ = strings.Cut(db, "?")
	return "s_" + db
}

// Parse returns the test's configuration with these models and webhooks
// (YAML list items).
func (b *Bundle) Parse(modelsYAML, webhooksYAML string) *config.Config {
	b.T.Helper()
	text := fmt.Sprintf("\ndatabase:\n  dsn: %s\n  slot: %s\nmodels:\n%s\nwebhooks:\n%s\nhttp:\n  listen: \"\"\n", b.DSN, Slot(b.DSN), modelsYAML, webhooksYAML)
	cfg, err := config.Parse("test.yaml", []byte(text), os.LookupEnv)
	if err != nil {
		b.T.Fatal(err)
	}
	return cfg
}

// Reconfigure replaces the test's configuration (before Start) with these
// models and webhooks.
func (b *Bundle) Reconfigure(modelsYAML, webhooksYAML string) {
	b.T.Helper()
	b.Cfg = b.Parse(modelsYAML, webhooksYAML)
}

// Start prepares and runs capture until Stop or the end of the test.
func (b *Bundle) Start() {
	b.T.Helper()
	b.Run(cdc.Options{StatusInterval: 200 * time.Millisecond})
}

// Run prepares and runs capture with opts (the test's configuration, and
// its pools unless opts has others) until Stop or the end of the test; its
// log also goes to logs.
func (b *Bundle) Run(opts cdc.Options, logs ...io.Writer) {
	b.T.Helper()
	b.Go(b.Prepare(opts, logs...))
}

// Prepare makes a capture with opts like Run, and prepares it.
func (b *Bundle) Prepare(opts cdc.Options, logs ...io.Writer) *cdc.Capture {
	b.T.Helper()
	out := zerolog.MultiLevelWriter(append([]io.Writer{zerolog.NewTestWriter(b.T)}, logs...)...)
	opts.Config, opts.Logger = b.Cfg, zerolog.New(out).Level(zerolog.InfoLevel)
	if opts.Source == nil {
		opts.Source = b.Source
	}
	if opts.Outbox == nil {
		opts.Outbox = b.DB
	}
	c, err := cdc.New(opts)
	if err != nil {
		b.T.Fatal(err)
	}
	if err := c.Prepare(context.Background()); err != nil {
		b.T.Fatal(err)
	}
	return c
}

// Go runs the prepared capture c until Stop or the end of the test.
func (b *Bundle) Go(c *cdc.Capture) {
	ctx, cancel := context.WithCancel(context.Background())
	b.Capture, b.cancel, b.done = c, cancel, make(chan error, 1)
	go func() { b.done <- c.Run(ctx) }()
	b.T.Cleanup(b.Stop)
}

// Stop stops the capture Start, Run or Go started.
func (b *Bundle) Stop() {
	if b.cancel == nil {
		return
	}
	b.cancel()
	if err := <-b.done; err != nil {
		b.T.Errorf("capture: %v", err)
	}
	b.cancel = nil
}

// Exec runs sql on the database, failing the test on an error.
func (b *Bundle) Exec(sql string, args ...any) {
	b.T.Helper()
	if _, err := b.DB.Exec(context.Background(), sql, args...); err != nil {
		b.T.Fatalf("%s: %v", sql, err)
	}
}

// Count counts the outbox rows matching where.
func (b *Bundle) Count(where string) int {
	b.T.Helper()
	var n int
	if err := b.DB.QueryRow(context.Background(), "SELECT count(*) FROM walhook.deliveries WHERE "+where).Scan(&n); err != nil {
		b.T.Fatal(err)
	}
	return n
}

// WaitRows waits until the outbox holds want rows (and not more).
func (b *Bundle) WaitRows(want int) {
	b.T.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := b.Count("true")
		if n == want {
			return
		}
		if n > want || time.Now().After(deadline) {
			b.T.Fatalf("outbox has %d rows, want %d", n, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Delivery is an outbox row, its body decoded (numbers as json.Number).
type Delivery struct {
	Webhook, Event, Model, Key string
	Seq                        int
	Body                       map[string]any
	Raw                        string
}

// Data returns the "data" of the body.
func (d Delivery) Data() map[string]any { return d.Body["data"].(map[string]any) }

// Deliveries returns the outbox rows matching where, in delivery order.
func (b *Bundle) Deliveries(where string) []Delivery {
	b.T.Helper()
	rows, err := b.DB.Query(context.Background(), "SELECT webhook, event, model, object_key, seq, body FROM walhook.deliveries WHERE "+where+" ORDER BY commit_lsn, seq, webhook")
	if err != nil {
		b.T.Fatal(err)
	}
	defer rows.Close()
	var out []Delivery
	for rows.Next() {
		var d Delivery
		if err := rows.Scan(&d.Webhook, &d.Event, &d.Model, &d.Key, &d.Seq, &d.Raw); err != nil {
			b.T.Fatal(err)
		}
		dec := json.NewDecoder(strings.NewReader(d.Raw))
		dec.UseNumber()
		if err := dec.Decode(&d.Body); err != nil {
			b.T.Fatalf("body is not JSON: %v: %s", err, d.Raw)
		}
		out = append(out, d)
	}
	return out
}

// Bodies returns the bodies of the outbox rows matching where, in delivery
// order.
func (b *Bundle) Bodies(where string) []string {
	b.T.Helper()
	var out []string
	for _, d := range b.Deliveries(where) {
		out = append(out, d.Raw)
	}
	return out
}

// Role creates a login role with attrs, named after the test's slot (roles
// are cluster-wide), and drops it, and what it was granted, at the end.
func (b *Bundle) Role(attrs string) string {
	b.T.Helper()
	name := "r_" + b.Cfg.Database.Slot
	b.Exec("CREATE ROLE " + name + " LOGIN " + attrs)
	b.T.Cleanup(func() {
		ctx := context.Background()
		_, _ = b.DB.Exec(ctx, "DROP OWNED BY "+name)
		_, _ = b.DB.Exec(ctx, "DROP ROLE "+name)
	})
	return name
}

// PoolAs opens a pool on the test's database as role.
func (b *Bundle) PoolAs(role string) *pgxpool.Pool {
	b.T.Helper()
	u, err := url.Parse(b.DSN)
	if err != nil {
		b.T.Fatal(err)
	}
	u.User = url.User(role)
	pool, err := pgxpool.New(context.Background(), u.String())
	if err != nil {
		b.T.Fatal(err)
	}
	b.T.Cleanup(pool.Close)
	return pool
}

// DataOf returns the "data" of a webhook body.
func DataOf(t *testing.T, body string) string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	return string(m["data"])
}

// WaitUntil polls cond until it holds, failing the test after 20s.
func WaitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
