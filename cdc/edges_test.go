package cdc_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/cdc/enqueue"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/test/cdctest"
	"github.com/walhook/walhook/test/pgtest"
)

// logBuf collects a capture's log lines (and passes them to the test log).
type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// count is how many log lines contain all of subs.
func (l *logBuf) count(subs ...string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		ok := line != ""
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			n++
		}
	}
	return n
}

// startLogged is b.Start with the capture's log kept in the returned logBuf.
func (b *bundle) startLogged() *logBuf {
	b.T.Helper()
	lb := &logBuf{}
	b.Run(cdc.Options{StatusInterval: 200 * time.Millisecond}, lb)
	return lb
}

// TestPartitionedTableCapturedAsRoot: a partitioned table is captured under
// its own name (publish_via_partition_root), also when an older walhook made
// the publication without it (what check says: preflight's test).
func TestPartitionedTableCapturedAsRoot(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
		CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu'); CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');`, `
  - table: m
    model: Metric`)
	// A publication made by an older walhook: without publish_via_partition_root.
	b.Exec(`CREATE PUBLICATION walhook FOR TABLE m WITH (publish = 'insert, update, delete')`)
	b.Start()
	b.Exec(`INSERT INTO m VALUES (1, 'eu', 0), (2, 'us', 0)`)
	b.Exec(`UPDATE m SET v = 1 WHERE id = 1`)
	b.Exec(`DELETE FROM m WHERE id = 2`)
	b.WaitRows(7) // a: 2 created, updated, deleted; b: 2 created, deleted
	ds := b.Deliveries("webhook = 'a'")
	var got []string
	for _, d := range ds {
		if d.Model != "Metric" {
			t.Errorf("model %q", d.Model)
		}
		got = append(got, d.Event+" "+d.Key)
	}
	if want := `created ["1","eu"],created ["2","us"],updated ["1","eu"],deleted ["2","us"]`; strings.Join(got, ",") != want {
		t.Errorf("deliveries %s, want %s", strings.Join(got, ","), want)
	}
}

// TestPartitionAndItsRootRefused: a partition whose partitioned table is
// captured too is refused (its changes arrive under the root's name).
func TestPartitionAndItsRootRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE m (id int PRIMARY KEY) PARTITION BY RANGE (id); CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM (0) TO (100);`, `
  - table: m
  - table: m_1`)
	c, err := cdc.New(cdc.Options{Config: b.Cfg, Source: b.Source, Outbox: b.DB, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Prepare(context.Background())
	var ce *config.Error
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "table public.m_1 is a partition of public.m") {
		t.Fatalf("Prepare = %v", err)
	}
}

// TestRenamedTableKeepsCapturing: a captured table renamed, then moved to
// another schema, while walhook runs is still captured, with a warning; the
// next start refuses the configuration until it names the table again.
func TestRenamedTableKeepsCapturing(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE SCHEMA other`, `
  - table: s
    model: S`)
	lb := b.startLogged()
	b.Exec(`INSERT INTO s VALUES (1)`)
	b.Exec(`ALTER TABLE s RENAME TO s2`)
	b.Exec(`INSERT INTO s2 VALUES (2)`)
	b.Exec(`ALTER TABLE s2 SET SCHEMA other`)
	b.Exec(`UPDATE other.s2 SET id = 30 WHERE id = 2`)
	b.Exec(`DELETE FROM other.s2 WHERE id = 1`)
	b.WaitRows(2 + 2 + 1 + 2)
	var got []string
	for _, d := range b.Deliveries("webhook = 'a'") {
		got = append(got, d.Model+" "+d.Event+" "+d.Key)
	}
	if want := "S created 1,S created 2,S updated 30,S deleted 1"; strings.Join(got, ",") != want {
		t.Errorf("deliveries %s, want %s", strings.Join(got, ","), want)
	}
	if lb.count(`"level":"warn"`, "renamed or moved to other.s2", "table: other.s2") == 0 {
		t.Errorf("no warning about the renamed table:\n%s", lb)
	}
	b.Stop()
	c, err := cdc.New(cdc.Options{Config: b.Cfg, Source: b.Source, Outbox: b.DB, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Prepare(context.Background()); err == nil || !strings.Contains(err.Error(), "table public.s does not exist") {
		t.Fatalf("restart with the old name: Prepare = %v", err)
	}
}

// TestUnmappedTableIsCounted: a table added to the publication by hand is
// not captured, but its changes are logged (once) and counted.
func TestUnmappedTableIsCounted(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE TABLE extra (id int PRIMARY KEY)`, `
  - table: s`)
	lb := b.startLogged()
	b.Exec(`ALTER PUBLICATION walhook ADD TABLE extra`)
	b.Exec(`INSERT INTO extra VALUES (1)`)
	b.Exec(`INSERT INTO extra VALUES (2)`)
	b.Exec(`INSERT INTO s VALUES (1)`)
	b.WaitRows(2)
	cdctest.WaitUntil(t, "the unmapped count", func() bool { return b.Capture.Unmapped()["public.extra"] == 2 })
	if n := lb.count(`"level":"error"`, "public.extra", "no model maps it"); n != 1 {
		t.Errorf("%d error lines about the unmapped table, want 1:\n%s", n, lb)
	}
}

// TestTruncateIsLoud: on the publication walhook creates itself, a TRUNCATE
// of a captured table is an error line and a count; nothing is sent for it.
func TestTruncateIsLoud(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY)`, `
  - table: s`)
	lb := b.startLogged()
	b.Exec(`INSERT INTO s VALUES (1), (2)`)
	b.Exec(`TRUNCATE s`)
	b.Exec(`INSERT INTO s VALUES (3)`)
	b.WaitRows(6)
	cdctest.WaitUntil(t, "the truncate count", func() bool { return b.Capture.Truncated()["public.s"] == 1 })
	if n := lb.count(`"level":"error"`, "TRUNCATE is not captured", "public.s"); n != 1 {
		t.Errorf("%d error lines about the TRUNCATE, want 1:\n%s", n, lb)
	}
}

// TestHostileOutputSettings: settings of the database that change the text
// form of values (set with ALTER DATABASE, as a DBA might) change nothing in
// the payloads, neither in the captured row nor in a relation lookup.
func TestHostileOutputSettings(t *testing.T) {
	t.Parallel()
	const schema = `CREATE TABLE region (id int PRIMARY KEY, weight float8, created timestamptz, span interval, raw bytea, price money);
		CREATE TABLE site (id int PRIMARY KEY, region_id int REFERENCES region, f8 float8, f4 float4, ts timestamptz, tsn timestamp, d date, iv interval, by bytea, m money);
		INSERT INTO region VALUES (1, 0.30000000000000004, '2024-01-02 03:04:05.5+00', '1 day 02:00:00', '\xdead', 12.5);`
	const wantData = `{"id":1,"region":{"id":1,"weight":0.30000000000000004,"created":"2024-01-02T03:04:05.500000Z","span":"1 day 02:00:00","raw":"3q0=","price":"$12.50"},` +
		`"f8":1.2345678901234567,"f4":0.1,"ts":"2024-01-02T01:04:05.123456Z","tsn":"2024-01-02T03:04:05","d":"2024-01-02","iv":"-1 days -02:03:00","by":"3q2+7w==","m":"$1,234.56"}`
	for _, tc := range []struct{ setting, value string }{
		{"extra_float_digits", "0"},
		{"bytea_output", "escape"},
		{"DateStyle", "'SQL, DMY'"},
		{"IntervalStyle", "sql_standard"},
		{"TimeZone", "'America/New_York'"},
	} {
		t.Run(tc.setting, func(t *testing.T) {
			b := setup(t, schema+`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET `+tc.setting+` = `+strings.ReplaceAll(tc.value, "'", "''")+`', current_database()); END $$;`, `
  - table: site
    relations:
      region_id: {field: region, table: public.region, columns: [id, weight, created, span, raw, price]}`)
			b.Start()
			b.Exec(`SET lc_monetary = 'C'; SET DateStyle = 'ISO'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'`)
			b.Exec(`INSERT INTO site VALUES (1, 1, 1.2345678901234567, 0.1, '2024-01-02 03:04:05.123456+02', '2024-01-02 03:04:05', '2024-01-02', '-1 day -02:03:00', '\xdeadbeef', 1234.56)`)
			b.WaitRows(2)
			if got := dataOf(t, b.Deliveries("webhook = 'a'")[0].Raw); got != wantData {
				t.Errorf("with %s = %s at the database level\n got %s\nwant %s", tc.setting, tc.value, got, wantData)
			}
		})
	}
}

// TestReplicaIdentityIndexKey: with REPLICA IDENTITY USING INDEX on a unique
// index without the primary key, a DELETE carries only the index's columns,
// so the object key of every event is built from them: each object keeps one
// key (per-object order, coalescing) and no delete has an empty key.
func TestReplicaIdentityIndexKey(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE site (id int PRIMARY KEY, slug text NOT NULL, v int);
		CREATE UNIQUE INDEX site_slug ON site (slug); ALTER TABLE site REPLICA IDENTITY USING INDEX site_slug;
		CREATE TABLE dev (id int PRIMARY KEY, slug text NOT NULL, v int);
		CREATE UNIQUE INDEX dev_id_slug ON dev (id, slug); ALTER TABLE dev REPLICA IDENTITY USING INDEX dev_id_slug;`, `
  - table: site
  - table: dev`)
	b.Start()
	b.Exec(`INSERT INTO site VALUES (1, 'ams', 0), (2, 'fra', 0), (3, 'lon', 0); INSERT INTO dev VALUES (1, 'sw1', 0)`)
	b.Exec(`UPDATE site SET v = 1 WHERE id = 2; UPDATE dev SET v = 1`)
	b.Exec(`DELETE FROM site; DELETE FROM dev`)
	b.WaitRows(2*4 + 2*2 + 1 + 3 + 1 + 1)
	got := map[string][]string{}
	for _, d := range b.Deliveries("webhook = 'a'") {
		got[d.Model] = append(got[d.Model], d.Event+" "+d.Key)
	}
	want := map[string]string{
		"site": "created ams,created fra,created lon,updated fra,deleted ams,deleted lon,deleted fra", // deletes in heap order
		"dev":  "created 1,updated 1,deleted 1",                                                       // the index holds the primary key: keyed by it
	}
	for m, w := range want {
		if g := strings.Join(got[m], ","); g != w {
			t.Errorf("%s: %s, want %s", m, g, w)
		}
	}
}

// TestLookupsWaitForCommitVisibility: a source transaction whose commit is
// flushed but not yet visible (its session waits for a synchronous standby
// that is not there) is held until it is visible: its relation lookup and
// its unchanged-TOAST read-back see its own writes, never the rows before.
func TestLookupsWaitForCommitVisibility(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A short wal_sender_timeout: holding a transaction must not stop the
	// stream from answering the server.
	src, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{
		"synchronous_standby_names": "'nosuch'", "synchronous_commit": "local", "wal_sender_timeout": "'2s'"}})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	srcDSN := src.NewDB(t)
	b := setup(t, `SELECT 1`, `
  - table: site
    relations:
      region_id: {field: region, table: public.region, columns: [id, name]}
  - table: doc`)
	b.Cfg.Database.DSN = srcDSN
	srcDB, err := pgxpool.New(ctx, srcDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer srcDB.Close()
	// release lets the waiting COMMIT through (deferred too, so that a
	// failing test does not leave it hanging).
	release := func() {
		for _, q := range []string{`ALTER SYSTEM SET synchronous_standby_names = ''`, `SELECT pg_reload_conf()`} {
			if _, err := srcDB.Exec(ctx, q); err != nil {
				t.Error(err)
			}
		}
	}
	defer release()
	if _, err := srcDB.Exec(ctx, `CREATE TABLE region (id int PRIMARY KEY, name text);
		CREATE TABLE site (id int PRIMARY KEY, region_id int REFERENCES region);
		CREATE TABLE doc (id int PRIMARY KEY, title text, body text);
		INSERT INTO region VALUES (1, 'old');
		INSERT INTO doc VALUES (1, 't1', 'x' || `+bigTextSQL+`)`); err != nil {
		t.Fatal(err)
	}
	pc, _ := pgxpool.ParseConfig(srcDSN)
	for k, v := range cdc.SessionParams {
		pc.ConnConfig.RuntimeParams[k] = v
	}
	if b.Source, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		t.Fatal(err)
	}
	defer b.Source.Close()
	lb := b.startLogged()
	// One transaction: rename the region, point a site at it, and rewrite
	// the document's body then its title (the title's UPDATE carries the
	// body as an unchanged TOAST value). Its COMMIT waits for the standby.
	committed := make(chan error, 1)
	go func() {
		_, err := srcDB.Exec(ctx, `SET synchronous_commit = on; BEGIN;
			UPDATE region SET name = 'new' WHERE id = 1; INSERT INTO site VALUES (1, 1);
			UPDATE doc SET body = 'y' || `+bigTextSQL+`; UPDATE doc SET title = 't2';
			COMMIT; SET synchronous_commit = local`)
		committed <- err
	}()
	cdctest.WaitUntil(t, "capture to hold the invisible transaction", func() bool {
		return strings.Contains(b.Capture.Stall(), "not yet visible") || b.Count("true") > 0
	})
	if ds := b.Deliveries("webhook = 'a'"); len(ds) != 0 {
		t.Errorf("%d deliveries enqueued while their transaction is not visible: %s", len(ds), ds[0].Raw)
	}
	time.Sleep(2 * time.Second) // past wal_sender_timeout
	release()
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	b.WaitRows(2 + 2) // site created (a, b), doc updated twice (a)
	site := dataOf(t, b.Deliveries("webhook = 'a' AND model = 'site'")[0].Raw)
	if site != `{"id":1,"region":{"id":1,"name":"new"}}` {
		t.Errorf("site = %s, want the region as the transaction left it", site)
	}
	docs := b.Deliveries("webhook = 'a' AND model = 'doc'")
	if body, _ := docs[1].Data()["body"].(string); !strings.HasPrefix(body, "y") {
		t.Errorf("second doc update carries body %.10q..., want the transaction's own 'y...'", body)
	}
	if b.Capture.Stall() != "" || lb.count(`"level":"warn"`, "not yet visible") == 0 || lb.count("capture interrupted") != 0 {
		t.Errorf("stall %q; log:\n%s", b.Capture.Stall(), lb)
	}
}

// queryCounter counts the SELECT queries whose SQL contains sub.
type queryCounter struct {
	sub string
	n   atomic.Int64
}

func (c *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.HasPrefix(d.SQL, "SELECT") && strings.Contains(d.SQL, c.sub) {
		c.n.Add(1)
	}
	return ctx
}

func (c *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestUnchangedToastReadBackIsBatched: the unchanged TOAST values of a
// transaction's updates are read back with one query per chunk (in the
// lookups' read-only transaction, with their statement timeout), not one
// per row.
func TestUnchangedToastReadBackIsBatched(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE doc (id int PRIMARY KEY, title text, body text);
		INSERT INTO doc SELECT g, 't', g || `+bigTextSQL+` FROM generate_series(1, 40) g`, `
  - table: doc`)
	qc := &queryCounter{sub: `"public"."doc"`}
	pc, err := pgxpool.ParseConfig(b.DSN)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range cdc.SessionParams {
		pc.ConnConfig.RuntimeParams[k] = v
	}
	pc.ConnConfig.Tracer = qc
	if b.Source, err = pgxpool.NewWithConfig(context.Background(), pc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Source.Close)
	b.Start()
	b.Exec(`UPDATE doc SET title = 't2'`)
	b.WaitRows(40)
	if n := qc.n.Load(); n != 1 {
		t.Errorf("%d read-back queries for 40 updated rows, want 1", n)
	}
	for _, d := range b.Deliveries("true") {
		if body, _ := d.Data()["body"].(string); !strings.HasPrefix(body, d.Key+"c4ca4238") {
			t.Fatalf("row %s: body %.20q...", d.Key, body)
		}
	}
}

// TestFailedLookupHoldsCapture: a relation lookup that fails is retried,
// holding capture (Stall says why), and the change is sent with the field
// once it succeeds; a model with on_lookup_error: omit sends it without.
func TestFailedLookupHoldsCapture(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE region (id int PRIMARY KEY, name text); INSERT INTO region VALUES (1, 'r1');
		CREATE TABLE site (id int PRIMARY KEY, region_id int); CREATE TABLE rack (id int PRIMARY KEY, region_id int)`, `
  - table: site
    relations:
      region_id: {table: region, columns: [id, name]}
  - table: rack
    on_lookup_error: omit
    relations:
      region_id: {table: region, columns: [id, name]}`)
	lb := b.startLogged()
	b.Exec(`INSERT INTO site VALUES (1, 1); INSERT INTO rack VALUES (1, 1)`)
	b.WaitRows(4)
	b.Exec(`ALTER TABLE region RENAME TO region_away`)
	b.Exec(`INSERT INTO rack VALUES (2, 1)`)
	b.Exec(`INSERT INTO site VALUES (2, 1)`)
	cdctest.WaitUntil(t, "capture to stall", func() bool { return strings.Contains(b.Capture.Stall(), "lookup failed") })
	b.WaitRows(6) // rack 2, without its region
	time.Sleep(300 * time.Millisecond)
	if n := b.Count("model = 'site'"); n != 2 {
		t.Fatalf("%d site deliveries while its lookup fails, want 2 (the first site only)", n)
	}
	b.Exec(`ALTER TABLE region_away RENAME TO region`)
	b.WaitRows(8)
	want := map[string]string{
		"site 2": `{"id":2,"region":{"id":1,"name":"r1"}}`,
		"rack 2": `{"id":2}`,
	}
	for _, d := range b.Deliveries("webhook = 'a' AND object_key = '2'") {
		if got := dataOf(t, d.Raw); got != want[d.Model+" 2"] {
			t.Errorf("%s 2: %s, want %s", d.Model, got, want[d.Model+" 2"])
		}
	}
	cdctest.WaitUntil(t, "the stall to clear", func() bool { return b.Capture.Stall() == "" })
	if b.Capture.LookupErrors() == 0 || lb.count(`"level":"warn"`, "capture holds the changes and retries") == 0 {
		t.Errorf("lookup errors %d; log:\n%s", b.Capture.LookupErrors(), lb)
	}
}

// TestDroppedTypeDoesNotStall: changes written while a column had a custom
// type that was dropped before capture read them render as text, with a
// warning, instead of stopping capture.
func TestDroppedTypeDoesNotStall(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TYPE mood AS ENUM ('ok', 'sad'); CREATE DOMAIN posint AS int CHECK (VALUE > 0);
		CREATE TABLE t (id int PRIMARY KEY, m mood, ma mood[], p posint)`, `
  - table: t`)
	b.Start()
	b.Exec(`INSERT INTO t VALUES (1, 'ok', '{ok}', 1)`)
	b.WaitRows(2)
	b.Stop()
	b.Exec(`INSERT INTO t VALUES (2, 'sad', '{ok,sad}', 2)`)
	b.Exec(`ALTER TABLE t ALTER COLUMN m TYPE text, ALTER COLUMN ma TYPE text[], ALTER COLUMN p TYPE int; DROP TYPE mood; DROP DOMAIN posint`)
	b.Exec(`INSERT INTO t VALUES (3, 'new', '{a}', 3)`)
	lb := b.startLogged()
	b.WaitRows(6)
	got := map[string]string{}
	for _, d := range b.Deliveries("webhook = 'a'") {
		got[d.Key] = dataOf(t, d.Raw)
	}
	for key, want := range map[string]string{
		"2": `{"id":2,"m":"sad","ma":"{ok,sad}","p":"2"}`, // types gone: their text
		"3": `{"id":3,"m":"new","ma":["a"],"p":3}`,
	} {
		if got[key] != want {
			t.Errorf("row %s: %s, want %s", key, got[key], want)
		}
	}
	if lb.count(`"level":"warn"`, "public.mood", "no longer exists") == 0 {
		t.Errorf("no warning naming the dropped type:\n%s", lb)
	}
}

// TestSlotCreatedAgainBehindCheckpoint: when the slot is created again (a
// failover, a restore) at a position before the stored checkpoint, capture
// starts at the slot's position, reports the gap, and loses none of the
// changes the new slot carries.
func TestSlotCreatedAgainBehindCheckpoint(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY)`, `
  - table: s`)
	b.Start()
	b.Exec(`INSERT INTO s VALUES (1)`)
	b.WaitRows(2)
	b.Stop()
	// The checkpoint of an old primary that was ahead of the new one, and
	// its deliveries.
	b.Exec(`UPDATE walhook.checkpoints SET lsn = 'FF/0'`)
	b.Exec(`UPDATE walhook.deliveries SET commit_lsn = 'FE/0'`)
	// (the walsender may hold the slot a moment after capture stopped)
	cdctest.WaitUntil(t, "the slot to be dropped", func() bool {
		_, err := b.DB.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, b.Cfg.Database.Slot)
		return err == nil
	})
	lb := b.startLogged()
	b.Exec(`INSERT INTO s VALUES (2)`)
	b.WaitRows(4)
	if b.Capture.Gaps() != 1 || lb.count(`"level":"error"`, "lies ahead of the slot's position", "NOT captured") != 1 ||
		lb.count(`"level":"error"`, "holds 2 deliveries of the old history") != 1 {
		t.Errorf("gaps %d; log:\n%s", b.Capture.Gaps(), lb)
	}
}

// TestOtherSourceBehindCheckpoint: a checkpoint written for another source
// server (system identifier) does not make capture skip this one's changes.
func TestOtherSourceBehindCheckpoint(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY)`, `
  - table: s`)
	b.Start()
	b.Exec(`INSERT INTO s VALUES (1)`)
	b.WaitRows(2)
	b.Stop()
	b.Exec(`UPDATE walhook.checkpoints SET lsn = 'FF/0', system_id = '42'`)
	lb := b.startLogged()
	b.Exec(`INSERT INTO s VALUES (2)`)
	b.WaitRows(4)
	if b.Capture.Gaps() != 1 || lb.count(`"level":"error"`, "another server or timeline", "was 42 timeline") != 1 {
		t.Errorf("gaps %d; log:\n%s", b.Capture.Gaps(), lb)
	}
	// The next start finds its own identity: no gap.
	b.Stop()
	lb = b.startLogged()
	b.Exec(`INSERT INTO s VALUES (3)`)
	b.WaitRows(6)
	if b.Capture.Gaps() != 0 || lb.count(`"level":"error"`) != 0 {
		t.Errorf("second start: gaps %d; log:\n%s", b.Capture.Gaps(), lb)
	}
}

// TestSharedWebhookNameAcrossCapturesRefused: a second capture (its own slot
// and publication) into the same outbox may not use a webhook name the first
// one writes.
func TestSharedWebhookNameAcrossCapturesRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY)`, `
  - table: s`)
	b.Start()
	other := func(hooks string) error {
		cfg, err := config.Parse("other.yaml", fmt.Appendf(nil, `
database:
  dsn: %s
  slot: %s_2
  publication: other
models:
  - table: u
webhooks:
%s
http:
  listen: ""`, b.DSN, b.Cfg.Database.Slot, hooks), os.LookupEnv)
		if err != nil {
			t.Fatal(err)
		}
		c, err := cdc.New(cdc.Options{Config: cfg, Source: b.Source, Outbox: b.DB, Logger: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = b.DB.Exec(context.Background(), "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", cfg.Database.Slot)
		})
		return c.Prepare(context.Background())
	}
	err := other("  - name: a\n    url: http://127.0.0.1:1/a2\n  - name: c\n    url: http://127.0.0.1:1/c")
	if !cdc.IsFatal(err) || !strings.Contains(err.Error(), `webhook "a" is already captured into this outbox by slot `+b.Cfg.Database.Slot) ||
		!strings.Contains(err.Error(), "DELETE FROM") {
		t.Fatalf("second capture with webhook a: %v", err)
	}
	if err := other("  - name: c\n    url: http://127.0.0.1:1/c"); err != nil {
		t.Fatalf("second capture with its own webhook: %v", err)
	}
}

// TestOldPublicationOfAnotherOwnerStillWorks: a publication a DBA made for
// an older walhook (no truncate) that walhook's role may not alter is used
// with a warning, not refused (what check says: preflight's test).
func TestOldPublicationOfAnotherOwnerStillWorks(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE PUBLICATION walhook FOR TABLE s WITH (publish = 'insert, update, delete')`, `
  - table: s`)
	role := b.Role("REPLICATION")
	b.Exec("GRANT SELECT ON s TO " + role)
	pool := b.PoolAs(role)
	lb := &logBuf{}
	c, err := cdc.New(cdc.Options{Config: b.Cfg, Source: pool, Outbox: b.DB, Logger: zerolog.New(lb)})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Prepare(context.Background()); err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	if lb.count(`"level":"warn"`, "does not publish truncate", "ALTER PUBLICATION") != 1 {
		t.Errorf("log:\n%s", lb)
	}
}

// TestReplicaIdentityIndexKeyCoalesced: with REPLICA IDENTITY USING INDEX,
// deleting several rows in one transaction gives a coalesce: transaction
// webhook one deleted event per row (they are distinct objects).
func TestReplicaIdentityIndexKeyCoalesced(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE site (id int PRIMARY KEY, slug text NOT NULL);
		CREATE UNIQUE INDEX site_slug ON site (slug); ALTER TABLE site REPLICA IDENTITY USING INDEX site_slug`, `
  - table: site`)
	cfg, err := config.Parse("test.yaml", fmt.Appendf(nil, `
database:
  dsn: %s
  slot: %s
models:
  - table: site
webhooks:
  - name: co
    url: http://127.0.0.1:1/c
    coalesce: transaction
http:
  listen: ""`, b.DSN, b.Cfg.Database.Slot), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	b.Cfg = cfg
	b.Start()
	b.Exec(`INSERT INTO site VALUES (1, 'ams'), (2, 'fra'), (3, 'lon')`)
	b.Exec(`DELETE FROM site`)
	b.WaitRows(6)
	if n := b.Count("event = 'deleted' AND object_key <> ''"); n != 3 {
		t.Errorf("%d deleted events with a key, want 3", n)
	}
}

// TestCoalescedUpdateCarriesUnchangedToast: a coalesce: transaction webhook's
// updated event carries an unchanged TOAST value read back like any other.
func TestCoalescedUpdateCarriesUnchangedToast(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE doc (id int PRIMARY KEY, title text, body text); INSERT INTO doc VALUES (1, 't', 'z' || `+bigTextSQL+`)`, `
  - table: doc`)
	cfg, err := config.Parse("test.yaml", fmt.Appendf(nil, `
database:
  dsn: %s
  slot: %s
models:
  - table: doc
webhooks:
  - name: co
    url: http://127.0.0.1:1/c
    coalesce: transaction
http:
  listen: ""`, b.DSN, b.Cfg.Database.Slot), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	b.Cfg = cfg
	b.Start()
	b.Exec(`BEGIN; UPDATE doc SET title = 't2'; UPDATE doc SET title = 't3'; COMMIT`)
	b.WaitRows(1)
	d := b.Deliveries("true")[0].Data()
	if body, _ := d["body"].(string); d["title"] != "t3" || !strings.HasPrefix(body, "zc4ca4238") {
		t.Errorf("coalesced update: title %v, body %.12q...", d["title"], body)
	}
}

// TestCollisionWithOldHistoryIsLoud: after a gap, a change whose (webhook,
// commit LSN, seq) a delivery of the old history already holds cannot be
// enqueued; it is reported at error level and counted, never skipped
// silently as a replay.
func TestCollisionWithOldHistoryIsLoud(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY)`, `
  - table: s`)
	b.Exec(`INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body, created_at)
		VALUES ('a', 'created', 's', '1', '0/5000000', 0, now(), '{}', now() - interval '1 hour')`)
	lb := &logBuf{}
	at := time.Now()
	var window atomic.Pointer[enqueue.GapWindow]
	window.Store(&enqueue.GapWindow{From: 0x4000000, To: 0x6000000, Before: time.Now()})
	var collided, rows atomic.Int64
	var safe atomic.Bool
	w := enqueue.New(enqueue.Options{Pool: b.DB, Store: outbox.New(b.DB, "walhook"), Slot: b.Cfg.Database.Slot, GroupRows: 2000, GroupDelay: 20 * time.Millisecond,
		Rows: &rows, Safe: &safe, Log: zerolog.New(lb), Window: &window, Collided: &collided})
	ch := make(chan enqueue.Batch, 1)
	ch <- enqueue.Batch{Rows: []enqueue.Delivery{
		{Webhook: "a", Event: "created", Model: "s", Key: "9", CommitLSN: 0x5000000, Seq: 0, CommittedAt: at, Body: "{}"},
		{Webhook: "a", Event: "created", Model: "s", Key: "10", CommitLSN: 0x5000000, Seq: 1, CommittedAt: at, Body: "{}"},
	}, Commit: true, EndLSN: 0x5000100}
	close(ch)
	if err := w.Run(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
	if collided.Load() != 1 || b.Count("object_key = '10'") != 1 || lb.count(`"level":"error"`, "NOT enqueued", `"key":"9"`) != 1 {
		t.Errorf("collided %d; log:\n%s", collided.Load(), lb)
	}
}
