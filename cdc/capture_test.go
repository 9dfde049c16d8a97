package cdc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/test/cdctest"
	"github.com/walhook/walhook/test/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

// bundle is one test's database, configuration, pools and capture, with
// the helpers of this package's tests.
type bundle struct{ *cdctest.Bundle }

// setup creates a database with schemaSQL and a configuration with the
// models YAML (cdctest.Setup).
func setup(t *testing.T, schemaSQL, modelsYAML string) *bundle {
	t.Helper()
	return &bundle{cdctest.Setup(t, pg, schemaSQL, modelsYAML)}
}

// setupAlone is setup on a cluster of the test's own, for a test whose
// large transactions would hold up the other tests' streams (every
// walsender of a cluster decodes all of its WAL).
func setupAlone(t *testing.T, schemaSQL, modelsYAML string) *bundle {
	t.Helper()
	cl, err := pgtest.Start(context.Background(), pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return &bundle{cdctest.Setup(t, cl, schemaSQL, modelsYAML)}
}

func TestInsertUpdateDelete(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE site (id bigserial PRIMARY KEY, name text NOT NULL, status text, comments text, custom_field_data jsonb DEFAULT '{}');
		CREATE TABLE other (id int PRIMARY KEY)`, `
  - table: site
    model: Site
    exclude: [comments]
    rename: {custom_field_data: custom_fields}
    url: /api/dcim/sites/{id}/
    choices:
      status: {active: Active, planned: Planned}`)
	b.Start()
	before := time.Now()
	b.Exec(`INSERT INTO site (name, status, comments, custom_field_data) VALUES ('ams1', 'planned', 'secret note', '{"a": 1}')`)
	b.Exec(`INSERT INTO other VALUES (1)`)
	b.Exec(`UPDATE site SET status = 'active' WHERE id = 1`)
	b.Exec(`DELETE FROM site WHERE id = 1`)
	// a: created, updated, deleted; b: created, deleted.
	b.WaitRows(5)
	ds := b.Deliveries("true")
	wantEvents := []string{"a/created", "b/created", "a/updated", "a/deleted", "b/deleted"}
	for i, d := range ds {
		if got := d.Webhook + "/" + d.Event; got != wantEvents[i] {
			t.Fatalf("delivery %d is %s, want %s", i, got, wantEvents[i])
		}
		if d.Model != "Site" || d.Key != "1" || d.Body["model"] != "Site" || d.Body["event"] != d.Event {
			t.Errorf("delivery %d: model %q key %q body %v", i, d.Model, d.Key, d.Body)
		}
		ts, err := d.Body["signal_received_timestamp"].(json.Number).Float64()
		if err != nil || ts < float64(before.Unix())-5 || ts > float64(time.Now().Unix())+5 {
			t.Errorf("signal_received_timestamp %v is not the commit time", d.Body["signal_received_timestamp"])
		}
	}
	created := ds[0].Data()
	if _, ok := created["comments"]; ok {
		t.Error("excluded column rendered")
	}
	if cf, _ := json.Marshal(created["custom_fields"]); string(cf) != `{"a":1}` {
		t.Errorf("renamed jsonb column = %s", cf)
	}
	if created["url"] != "/api/dcim/sites/1/" {
		t.Errorf("url = %v", created["url"])
	}
	if st, _ := json.Marshal(created["status"]); string(st) != `{"label":"Planned","value":"planned"}` {
		t.Errorf("choice = %s", st)
	}
	if !strings.HasPrefix(ds[0].Raw, `{"event":"created","signal_received_timestamp":`) ||
		!strings.Contains(ds[0].Raw, `"data":{"id":1,"url":"/api/dcim/sites/1/","name":"ams1"`) {
		t.Errorf("body layout: %s", ds[0].Raw)
	}
	// DELETE with default identity carries the key only.
	del := ds[3].Data()
	if len(del) != 2 || del["id"] != json.Number("1") {
		t.Errorf("deleted data = %v, want the key (and url)", del)
	}
	if ds[0].Raw != ds[1].Raw {
		t.Error("webhooks a and b got different bodies for the same change")
	}
}

func TestDeleteWithFullIdentityCarriesRow(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE dev (id int PRIMARY KEY, name text, serial text); ALTER TABLE dev REPLICA IDENTITY FULL`, `
  - table: public.dev
    model: Device`)
	b.Start()
	b.Exec(`INSERT INTO dev VALUES (7, 'sw1', 'X1')`)
	b.Exec(`DELETE FROM dev`)
	b.WaitRows(4)
	ds := b.Deliveries("webhook = 'a' AND event = 'deleted'")
	if d := ds[0].Data(); d["name"] != "sw1" || d["serial"] != "X1" || d["id"] != json.Number("7") {
		t.Errorf("deleted data = %v", d)
	}
}

func TestValueTypes(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TYPE mood AS ENUM ('ok', 'sad');
		CREATE DOMAIN posint AS int CHECK (VALUE > 0);
		CREATE TABLE t (id int PRIMARY KEY, b bool, i2 int2, i8 int8, f8 float8, f4 float4, n numeric, nan numeric,
			txt text, vc varchar(10), u uuid, ip inet, cidr cidr, mac macaddr, j json, jb jsonb, arr int[], tarr text[],
			ts timestamptz, tsn timestamp, d date, tm time, iv interval, by bytea, m mood, ma mood[], p posint, nul text, inf float8)`, `
  - table: t`)
	b.Start()
	b.Exec(`INSERT INTO t VALUES (1, true, -3, 9007199254740993, 1.5, 0.25, 123456789012345678901234567890.123456789, 'NaN',
		'he said "hi"' || chr(10), 'v', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '10.0.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03',
		'{"z": 1, "a": [1, 2.50]}', '{"b": 2}', '{{1,2},{3,NULL}}', '{"a b","NULL",NULL}',
		'2024-01-02 03:04:05.12345+02', '2024-01-02 03:04:05.5', '2024-01-02', '12:30:00', '1 day 02:00:00', '\xdeadbeef', 'sad', '{ok,sad}', 5, NULL, 'Infinity')`)
	b.WaitRows(2)
	raw := b.Deliveries("webhook = 'a'")[0].Raw
	want := `"data":{"id":1,"b":true,"i2":-3,"i8":9007199254740993,"f8":1.5,"f4":0.25,"n":123456789012345678901234567890.123456789,"nan":"NaN",` +
		`"txt":"he said \"hi\"\n","vc":"v","u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","ip":"10.0.0.1/24","cidr":"10.0.0.0/8","mac":"08:00:2b:01:02:03",` +
		`"j":{"z": 1, "a": [1, 2.50]},"jb":{"b": 2},"arr":[[1,2],[3,null]],"tarr":["a b","NULL",null],` +
		`"ts":"2024-01-02T01:04:05.123450Z","tsn":"2024-01-02T03:04:05.500000","d":"2024-01-02","tm":"12:30:00","iv":"1 day 02:00:00","by":"3q2+7w==",` +
		`"m":"sad","ma":["ok","sad"],"p":5,"nul":null,"inf":"Infinity"}}`
	if !strings.HasSuffix(raw, want) {
		t.Errorf("body\n got %s\nwant suffix %s", raw, want)
	}
}

// bigText is a value PostgreSQL stores out of line (TOAST), incompressible.
const bigTextSQL = `(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g)`

func TestUnchangedToastIsCarried(t *testing.T) {
	t.Parallel()
	for _, identity := range []string{"DEFAULT", "FULL"} {
		t.Run(identity, func(t *testing.T) {
			b := setup(t, `CREATE TABLE doc (id int PRIMARY KEY, title text, body text); ALTER TABLE doc REPLICA IDENTITY `+identity, `
  - table: doc`)
			b.Start()
			b.Exec(`INSERT INTO doc VALUES (1, 't1', ` + bigTextSQL + `)`)
			b.Exec(`UPDATE doc SET title = 't2' WHERE id = 1`)
			b.WaitRows(3)
			var want string
			if err := b.DB.QueryRow(context.Background(), "SELECT "+bigTextSQL).Scan(&want); err != nil {
				t.Fatal(err)
			}
			upd := b.Deliveries("event = 'updated'")
			if len(upd) != 1 {
				t.Fatalf("%d updates", len(upd))
			}
			d := upd[0].Data()
			if d["title"] != "t2" || d["body"] != want {
				t.Errorf("update data: title %v, body has %d chars (want %d)", d["title"], len(fmt.Sprint(d["body"])), len(want))
			}
		})
	}
}

func TestRestartResumesWithoutDuplicates(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY, v int)`, `
  - table: s`)
	b.Start()
	for i := 1; i <= 50; i++ {
		b.Exec(`INSERT INTO s VALUES ($1, 0)`, i)
	}
	b.WaitRows(100)
	b.Stop()
	b.Exec(`UPDATE s SET v = 1`) // while walhook is down: 50 updates in one transaction
	b.Exec(`INSERT INTO s VALUES (51, 0)`)
	b.Start()
	b.WaitRows(100 + 50 + 2)
	// Replaying from an older position must not add rows either.
	b.Stop()
	b.Exec(`DELETE FROM walhook.checkpoints`)
	b.Start()
	b.Exec(`INSERT INTO s VALUES (52, 0)`)
	b.WaitRows(152 + 2)
	time.Sleep(300 * time.Millisecond)
	b.WaitRows(154)
	if n := b.Count("(webhook, commit_lsn, seq) IN (SELECT webhook, commit_lsn, seq FROM walhook.deliveries GROUP BY 1, 2, 3 HAVING count(*) > 1)"); n != 0 {
		t.Fatalf("%d duplicated changes", n)
	}
}

func TestLargeTransactionAndManySmall(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY, v text)`, `
  - table: s`)
	b.Start()
	b.Exec(`INSERT INTO s SELECT g, 'x' FROM generate_series(1, 20000) g`)
	for i := 0; i < 200; i++ {
		b.Exec(`UPDATE s SET v = 'y' WHERE id = $1`, i+1)
	}
	b.WaitRows(20000*2 + 200)
	var seqs int
	if err := b.DB.QueryRow(context.Background(), `SELECT count(DISTINCT seq) FROM walhook.deliveries WHERE event = 'created'`).Scan(&seqs); err != nil {
		t.Fatal(err)
	}
	if seqs != 20000 {
		t.Errorf("%d distinct seq in the big transaction, want 20000", seqs)
	}
}

func TestSchemaChangesMidStream(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY, a text, b int)`, `
  - table: s`)
	b.Start()
	b.Exec(`INSERT INTO s VALUES (1, 'x', 1)`)
	b.Exec(`ALTER TABLE s ADD COLUMN c text DEFAULT 'new'`)
	b.Exec(`INSERT INTO s VALUES (2, 'y', 2)`)
	b.Exec(`ALTER TABLE s DROP COLUMN a`)
	b.Exec(`ALTER TABLE s ALTER COLUMN b TYPE text`)
	b.Exec(`ALTER TABLE s RENAME COLUMN c TO d`)
	b.Exec(`INSERT INTO s VALUES (3, '3', 'z')`)
	b.WaitRows(6)
	ds := b.Deliveries("webhook = 'a'")
	want := []string{`{"id":1,"a":"x","b":1}`, `{"id":2,"a":"y","b":2,"c":"new"}`, `{"id":3,"b":"3","d":"z"}`}
	for i, d := range ds {
		if !strings.HasSuffix(d.Raw, `"data":`+want[i]+`}`) {
			t.Errorf("change %d: %s, want data %s", i, d.Raw, want[i])
		}
	}
}

func TestIdleSlotAdvances(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE TABLE noise (id serial PRIMARY KEY, v text)`, `
  - table: s`)
	b.Start()
	b.Exec(`INSERT INTO s VALUES (1)`)
	b.WaitRows(2)
	for i := 0; i < 20; i++ {
		b.Exec(`INSERT INTO noise (v) SELECT repeat('x', 1000) FROM generate_series(1, 500)`)
	}
	var lag int64
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b.Exec(`INSERT INTO noise (v) VALUES ('x')`) // other tables keep writing
		if err := b.DB.QueryRow(context.Background(), `SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
			FROM pg_replication_slots WHERE slot_name = $1`, b.Cfg.Database.Slot).Scan(&lag); err != nil {
			t.Fatal(err)
		}
		if lag < 1<<20 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("slot still %d bytes behind while captured tables are idle", lag)
}

func TestTableProblemsAreConfigErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE nopk (a int); CREATE TABLE ok (id int PRIMARY KEY)`, `
  - table: nopk
  - table: missing
  - table: ok
    exclude: [nosuch]`)
	c, err := cdc.New(cdc.Options{Config: b.Cfg, Source: b.Source, Outbox: b.DB, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Prepare(context.Background())
	var ce *config.Error
	if !asConfigError(err, &ce) || len(ce.Problems) != 3 {
		t.Fatalf("Prepare = %v, want 3 config problems", err)
	}
	msg := err.Error()
	for _, want := range []string{"test.yaml:7: table public.nopk has no primary key", "REPLICA IDENTITY FULL", "test.yaml:8: table public.missing does not exist", `test.yaml:9: model ok: exclude names unknown column "nosuch"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
}

func asConfigError(err error, ce **config.Error) bool {
	return errors.As(err, ce)
}

// TestEnqueuedAfterEachCommit: Options.Enqueued (how walhook run wakes its
// own dispatcher) is called after each outbox commit that enqueued rows,
// with those rows committed: another session sees them at the call.
func TestEnqueuedAfterEachCommit(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE site (id bigserial PRIMARY KEY, name text NOT NULL)`, `
  - table: site`)
	var mu sync.Mutex
	var seen []int
	b.Run(cdc.Options{StatusInterval: 200 * time.Millisecond, Enqueued: func() {
		var n int
		if err := b.DB.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries`).Scan(&n); err != nil {
			t.Error(err)
		}
		mu.Lock()
		seen = append(seen, n)
		mu.Unlock()
	}})
	for i := range 3 {
		b.Exec(`INSERT INTO site (name) VALUES ($1)`, fmt.Sprint(i))
		// One change for each of webhooks a and b.
		b.WaitRows(2 * (i + 1))
		cdctest.WaitUntil(t, "the call after the commit", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(seen) > 0 && seen[len(seen)-1] == 2*(i+1)
		})
	}
	time.Sleep(time.Second) // idle checkpoints enqueue nothing: no call
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("Enqueued called %d times (rows seen %v), want once per commit", len(seen), seen)
	}
}
