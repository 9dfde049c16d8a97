package cdc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
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

// startLogged is b.start with the capture's log kept in the returned logBuf.
func (b *bundle) startLogged() *logBuf {
	b.t.Helper()
	lb := &logBuf{}
	ctx, cancel := context.WithCancel(context.Background())
	c, err := New(Options{Config: b.cfg, Source: b.source, Outbox: b.db,
		Logger:         zerolog.New(io.MultiWriter(zerolog.NewTestWriter(b.t), lb)).Level(zerolog.InfoLevel),
		StatusInterval: 200 * time.Millisecond})
	if err != nil {
		b.t.Fatal(err)
	}
	if err := c.Prepare(ctx); err != nil {
		b.t.Fatal(err)
	}
	b.cap, b.cancel, b.done = c, cancel, make(chan error, 1)
	go func() { b.done <- c.Run(ctx) }()
	b.t.Cleanup(b.stop)
	return lb
}

// waitUntil polls cond for up to 20 s.
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

// TestPartitionedTableCapturedAsRoot: a partitioned table is captured under
// its own name (publish_via_partition_root), also when an older walhook made
// the publication without it (what check says: preflight's test).
func TestPartitionedTableCapturedAsRoot(t *testing.T) {
	b := setup(t, `CREATE TABLE m (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
		CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu'); CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');`, `
  - table: m
    model: Metric`)
	// A publication made by an older walhook: without publish_via_partition_root.
	b.exec(`CREATE PUBLICATION walhook FOR TABLE m WITH (publish = 'insert, update, delete')`)
	b.start()
	b.exec(`INSERT INTO m VALUES (1, 'eu', 0), (2, 'us', 0)`)
	b.exec(`UPDATE m SET v = 1 WHERE id = 1`)
	b.exec(`DELETE FROM m WHERE id = 2`)
	b.waitRows(7) // a: 2 created, updated, deleted; b: 2 created, deleted
	ds := b.deliveries("webhook = 'a'")
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
	b := setup(t, `CREATE TABLE m (id int PRIMARY KEY) PARTITION BY RANGE (id); CREATE TABLE m_1 PARTITION OF m FOR VALUES FROM (0) TO (100);`, `
  - table: m
  - table: m_1`)
	c, err := New(Options{Config: b.cfg, Source: b.source, Outbox: b.db, Logger: zerolog.Nop()})
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
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE SCHEMA other`, `
  - table: s
    model: S`)
	lb := b.startLogged()
	b.exec(`INSERT INTO s VALUES (1)`)
	b.exec(`ALTER TABLE s RENAME TO s2`)
	b.exec(`INSERT INTO s2 VALUES (2)`)
	b.exec(`ALTER TABLE s2 SET SCHEMA other`)
	b.exec(`UPDATE other.s2 SET id = 30 WHERE id = 2`)
	b.exec(`DELETE FROM other.s2 WHERE id = 1`)
	b.waitRows(2 + 2 + 1 + 2)
	var got []string
	for _, d := range b.deliveries("webhook = 'a'") {
		got = append(got, d.Model+" "+d.Event+" "+d.Key)
	}
	if want := "S created 1,S created 2,S updated 30,S deleted 1"; strings.Join(got, ",") != want {
		t.Errorf("deliveries %s, want %s", strings.Join(got, ","), want)
	}
	if lb.count(`"level":"warn"`, "renamed or moved to other.s2", "table: other.s2") == 0 {
		t.Errorf("no warning about the renamed table:\n%s", lb)
	}
	b.stop()
	c, err := New(Options{Config: b.cfg, Source: b.source, Outbox: b.db, Logger: zerolog.Nop()})
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
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE TABLE extra (id int PRIMARY KEY)`, `
  - table: s`)
	lb := b.startLogged()
	b.exec(`ALTER PUBLICATION walhook ADD TABLE extra`)
	b.exec(`INSERT INTO extra VALUES (1)`)
	b.exec(`INSERT INTO extra VALUES (2)`)
	b.exec(`INSERT INTO s VALUES (1)`)
	b.waitRows(2)
	waitUntil(t, "the unmapped count", func() bool { return b.cap.Unmapped()["public.extra"] == 2 })
	if n := lb.count(`"level":"error"`, "public.extra", "no model maps it"); n != 1 {
		t.Errorf("%d error lines about the unmapped table, want 1:\n%s", n, lb)
	}
}

// TestTruncateIsLoud: on the publication walhook creates itself, a TRUNCATE
// of a captured table is an error line and a count; nothing is sent for it.
func TestTruncateIsLoud(t *testing.T) {
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY)`, `
  - table: s`)
	lb := b.startLogged()
	b.exec(`INSERT INTO s VALUES (1), (2)`)
	b.exec(`TRUNCATE s`)
	b.exec(`INSERT INTO s VALUES (3)`)
	b.waitRows(6)
	waitUntil(t, "the truncate count", func() bool { return b.cap.Truncated()["public.s"] == 1 })
	if n := lb.count(`"level":"error"`, "TRUNCATE is not captured", "public.s"); n != 1 {
		t.Errorf("%d error lines about the TRUNCATE, want 1:\n%s", n, lb)
	}
}

// TestHostileOutputSettings: settings of the database that change the text
// form of values (set with ALTER DATABASE, as a DBA might) change nothing in
// the payloads, neither in the captured row nor in a relation lookup.
func TestHostileOutputSettings(t *testing.T) {
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
			b.start()
			b.exec(`SET lc_monetary = 'C'; SET DateStyle = 'ISO'; SET TimeZone = 'UTC'; SET IntervalStyle = 'postgres'`)
			b.exec(`INSERT INTO site VALUES (1, 1, 1.2345678901234567, 0.1, '2024-01-02 03:04:05.123456+02', '2024-01-02 03:04:05', '2024-01-02', '-1 day -02:03:00', '\xdeadbeef', 1234.56)`)
			b.waitRows(2)
			if got := dataOf(t, b.deliveries("webhook = 'a'")[0].Raw); got != wantData {
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
	b := setup(t, `CREATE TABLE site (id int PRIMARY KEY, slug text NOT NULL, v int);
		CREATE UNIQUE INDEX site_slug ON site (slug); ALTER TABLE site REPLICA IDENTITY USING INDEX site_slug;
		CREATE TABLE dev (id int PRIMARY KEY, slug text NOT NULL, v int);
		CREATE UNIQUE INDEX dev_id_slug ON dev (id, slug); ALTER TABLE dev REPLICA IDENTITY USING INDEX dev_id_slug;`, `
  - table: site
  - table: dev`)
	b.start()
	b.exec(`INSERT INTO site VALUES (1, 'ams', 0), (2, 'fra', 0), (3, 'lon', 0); INSERT INTO dev VALUES (1, 'sw1', 0)`)
	b.exec(`UPDATE site SET v = 1 WHERE id = 2; UPDATE dev SET v = 1`)
	b.exec(`DELETE FROM site; DELETE FROM dev`)
	b.waitRows(2*4 + 2*2 + 1 + 3 + 1 + 1)
	got := map[string][]string{}
	for _, d := range b.deliveries("webhook = 'a'") {
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
	b.cfg.Database.DSN = srcDSN
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
	for k, v := range SessionParams {
		pc.ConnConfig.RuntimeParams[k] = v
	}
	if b.source, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		t.Fatal(err)
	}
	defer b.source.Close()
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
	waitUntil(t, "capture to hold the invisible transaction", func() bool {
		return strings.Contains(b.cap.Stall(), "not yet visible") || b.count("true") > 0
	})
	if ds := b.deliveries("webhook = 'a'"); len(ds) != 0 {
		t.Errorf("%d deliveries enqueued while their transaction is not visible: %s", len(ds), ds[0].Raw)
	}
	time.Sleep(2 * time.Second) // past wal_sender_timeout
	release()
	if err := <-committed; err != nil {
		t.Fatal(err)
	}
	b.waitRows(2 + 2) // site created (a, b), doc updated twice (a)
	site := dataOf(t, b.deliveries("webhook = 'a' AND model = 'site'")[0].Raw)
	if site != `{"id":1,"region":{"id":1,"name":"new"}}` {
		t.Errorf("site = %s, want the region as the transaction left it", site)
	}
	docs := b.deliveries("webhook = 'a' AND model = 'doc'")
	if body, _ := data(docs[1])["body"].(string); !strings.HasPrefix(body, "y") {
		t.Errorf("second doc update carries body %.10q..., want the transaction's own 'y...'", body)
	}
	if b.cap.Stall() != "" || lb.count(`"level":"warn"`, "not yet visible") == 0 || lb.count("capture interrupted") != 0 {
		t.Errorf("stall %q; log:\n%s", b.cap.Stall(), lb)
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
	b := setup(t, `CREATE TABLE doc (id int PRIMARY KEY, title text, body text);
		INSERT INTO doc SELECT g, 't', g || `+bigTextSQL+` FROM generate_series(1, 40) g`, `
  - table: doc`)
	qc := &queryCounter{sub: `"public"."doc"`}
	pc, err := pgxpool.ParseConfig(b.dsn)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range SessionParams {
		pc.ConnConfig.RuntimeParams[k] = v
	}
	pc.ConnConfig.Tracer = qc
	if b.source, err = pgxpool.NewWithConfig(context.Background(), pc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.source.Close)
	b.start()
	b.exec(`UPDATE doc SET title = 't2'`)
	b.waitRows(40)
	if n := qc.n.Load(); n != 1 {
		t.Errorf("%d read-back queries for 40 updated rows, want 1", n)
	}
	for _, d := range b.deliveries("true") {
		if body, _ := data(d)["body"].(string); !strings.HasPrefix(body, d.Key+"c4ca4238") {
			t.Fatalf("row %s: body %.20q...", d.Key, body)
		}
	}
}

// TestFailedLookupHoldsCapture: a relation lookup that fails is retried,
// holding capture (Stall says why), and the change is sent with the field
// once it succeeds; a model with on_lookup_error: omit sends it without.
func TestFailedLookupHoldsCapture(t *testing.T) {
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
	b.exec(`INSERT INTO site VALUES (1, 1); INSERT INTO rack VALUES (1, 1)`)
	b.waitRows(4)
	b.exec(`ALTER TABLE region RENAME TO region_away`)
	b.exec(`INSERT INTO rack VALUES (2, 1)`)
	b.exec(`INSERT INTO site VALUES (2, 1)`)
	waitUntil(t, "capture to stall", func() bool { return strings.Contains(b.cap.Stall(), "lookup failed") })
	b.waitRows(6) // rack 2, without its region
	time.Sleep(300 * time.Millisecond)
	if n := b.count("model = 'site'"); n != 2 {
		t.Fatalf("%d site deliveries while its lookup fails, want 2 (the first site only)", n)
	}
	b.exec(`ALTER TABLE region_away RENAME TO region`)
	b.waitRows(8)
	want := map[string]string{
		"site 2": `{"id":2,"region":{"id":1,"name":"r1"}}`,
		"rack 2": `{"id":2}`,
	}
	for _, d := range b.deliveries("webhook = 'a' AND object_key = '2'") {
		if got := dataOf(t, d.Raw); got != want[d.Model+" 2"] {
			t.Errorf("%s 2: %s, want %s", d.Model, got, want[d.Model+" 2"])
		}
	}
	waitUntil(t, "the stall to clear", func() bool { return b.cap.Stall() == "" })
	if b.cap.LookupErrors() == 0 || lb.count(`"level":"warn"`, "capture holds the changes and retries") == 0 {
		t.Errorf("lookup errors %d; log:\n%s", b.cap.LookupErrors(), lb)
	}
}

// TestDroppedTypeDoesNotStall: changes written while a column had a custom
// type that was dropped before capture read them render as text, with a
// warning, instead of stopping capture.
func TestDroppedTypeDoesNotStall(t *testing.T) {
	b := setup(t, `CREATE TYPE mood AS ENUM ('ok', 'sad'); CREATE DOMAIN posint AS int CHECK (VALUE > 0);
		CREATE TABLE t (id int PRIMARY KEY, m mood, ma mood[], p posint)`, `
  - table: t`)
	b.start()
	b.exec(`INSERT INTO t VALUES (1, 'ok', '{ok}', 1)`)
	b.waitRows(2)
	b.stop()
	b.exec(`INSERT INTO t VALUES (2, 'sad', '{ok,sad}', 2)`)
	b.exec(`ALTER TABLE t ALTER COLUMN m TYPE text, ALTER COLUMN ma TYPE text[], ALTER COLUMN p TYPE int; DROP TYPE mood; DROP DOMAIN posint`)
	b.exec(`INSERT INTO t VALUES (3, 'new', '{a}', 3)`)
	lb := b.startLogged()
	b.waitRows(6)
	got := map[string]string{}
	for _, d := range b.deliveries("webhook = 'a'") {
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
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY)`, `
  - table: s`)
	b.start()
	b.exec(`INSERT INTO s VALUES (1)`)
	b.waitRows(2)
	b.stop()
	// The checkpoint of an old primary that was ahead of the new one, and
	// its deliveries.
	b.exec(`UPDATE walhook.checkpoints SET lsn = 'FF/0'`)
	b.exec(`UPDATE walhook.deliveries SET commit_lsn = 'FE/0'`)
	// (the walsender may hold the slot a moment after capture stopped)
	waitUntil(t, "the slot to be dropped", func() bool {
		_, err := b.db.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, b.cfg.Database.Slot)
		return err == nil
	})
	lb := b.startLogged()
	b.exec(`INSERT INTO s VALUES (2)`)
	b.waitRows(4)
	if b.cap.Gaps() != 1 || lb.count(`"level":"error"`, "lies ahead of the slot's position", "NOT captured") != 1 ||
		lb.count(`"level":"error"`, "holds 2 deliveries of the old history") != 1 {
		t.Errorf("gaps %d; log:\n%s", b.cap.Gaps(), lb)
	}
}

// TestOtherSourceBehindCheckpoint: a checkpoint written for another source
// server (system identifier) does not make capture skip this one's changes.
func TestOtherSourceBehindCheckpoint(t *testing.T) {
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY)`, `
  - table: s`)
	b.start()
	b.exec(`INSERT INTO s VALUES (1)`)
	b.waitRows(2)
	b.stop()
	b.exec(`UPDATE walhook.checkpoints SET lsn = 'FF/0', system_id = '42'`)
	lb := b.startLogged()
	b.exec(`INSERT INTO s VALUES (2)`)
	b.waitRows(4)
	if b.cap.Gaps() != 1 || lb.count(`"level":"error"`, "another server or timeline", "was 42 timeline") != 1 {
		t.Errorf("gaps %d; log:\n%s", b.cap.Gaps(), lb)
	}
	// The next start finds its own identity: no gap.
	b.stop()
	lb = b.startLogged()
	b.exec(`INSERT INTO s VALUES (3)`)
	b.waitRows(6)
	if b.cap.Gaps() != 0 || lb.count(`"level":"error"`) != 0 {
		t.Errorf("second start: gaps %d; log:\n%s", b.cap.Gaps(), lb)
	}
}

// TestSharedWebhookNameAcrossCapturesRefused: a second capture (its own slot
// and publication) into the same outbox may not use a webhook name the first
// one writes.
func TestSharedWebhookNameAcrossCapturesRefused(t *testing.T) {
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY)`, `
  - table: s`)
	b.start()
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
  listen: ""`, b.dsn, b.cfg.Database.Slot, hooks), os.LookupEnv)
		if err != nil {
			t.Fatal(err)
		}
		c, err := New(Options{Config: cfg, Source: b.source, Outbox: b.db, Logger: zerolog.Nop()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = b.db.Exec(context.Background(), "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", cfg.Database.Slot)
		})
		return c.Prepare(context.Background())
	}
	err := other("  - name: a\n    url: http://127.0.0.1:1/a2\n  - name: c\n    url: http://127.0.0.1:1/c")
	if !IsFatal(err) || !strings.Contains(err.Error(), `webhook "a" is already captured into this outbox by slot `+b.cfg.Database.Slot) ||
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
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY); CREATE PUBLICATION walhook FOR TABLE s WITH (publish = 'insert, update, delete')`, `
  - table: s`)
	role := b.role("REPLICATION")
	b.exec("GRANT SELECT ON s TO " + role)
	pool := poolAs(t, b.dsn, role)
	lb := &logBuf{}
	c, err := New(Options{Config: b.cfg, Source: pool, Outbox: b.db, Logger: zerolog.New(lb)})
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
  listen: ""`, b.dsn, b.cfg.Database.Slot), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	b.cfg = cfg
	b.start()
	b.exec(`INSERT INTO site VALUES (1, 'ams'), (2, 'fra'), (3, 'lon')`)
	b.exec(`DELETE FROM site`)
	b.waitRows(6)
	if n := b.count("event = 'deleted' AND object_key <> ''"); n != 3 {
		t.Errorf("%d deleted events with a key, want 3", n)
	}
}

// TestCoalescedUpdateCarriesUnchangedToast: a coalesce: transaction webhook's
// updated event carries an unchanged TOAST value read back like any other.
func TestCoalescedUpdateCarriesUnchangedToast(t *testing.T) {
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
  listen: ""`, b.dsn, b.cfg.Database.Slot), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	b.cfg = cfg
	b.start()
	b.exec(`BEGIN; UPDATE doc SET title = 't2'; UPDATE doc SET title = 't3'; COMMIT`)
	b.waitRows(1)
	d := data(b.deliveries("true")[0])
	if body, _ := d["body"].(string); d["title"] != "t3" || !strings.HasPrefix(body, "zc4ca4238") {
		t.Errorf("coalesced update: title %v, body %.12q...", d["title"], body)
	}
}

// TestCollisionWithOldHistoryIsLoud: after a gap, a change whose (webhook,
// commit LSN, seq) a delivery of the old history already holds cannot be
// enqueued; it is reported at error level and counted, never skipped
// silently as a replay.
func TestCollisionWithOldHistoryIsLoud(t *testing.T) {
	b := setup(t, `CREATE TABLE s (id int PRIMARY KEY)`, `
  - table: s`)
	b.exec(`INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body, created_at)
		VALUES ('a', 'created', 's', '1', '0/5000000', 0, now(), '{}', now() - interval '1 hour')`)
	var window atomic.Pointer[gapWindow]
	window.Store(&gapWindow{from: 0x4000000, to: 0x6000000, before: time.Now()})
	var collided, rows atomic.Int64
	var safe atomic.Bool
	lb := &logBuf{}
	w := newWriter(b.db, outbox.New(b.db, "walhook"), b.cfg.Database.Slot, 2000, 20*time.Millisecond, &rows, &safe, nil, zerolog.New(lb))
	w.window, w.collided = &window, &collided
	ch := make(chan batch, 1)
	at := time.Now()
	ch <- batch{rows: []Delivery{
		{Webhook: "a", Event: "created", Model: "s", Key: "9", CommitLSN: 0x5000000, Seq: 0, CommittedAt: at, Body: "{}"},
		{Webhook: "a", Event: "created", Model: "s", Key: "10", CommitLSN: 0x5000000, Seq: 1, CommittedAt: at, Body: "{}"},
	}, commit: true, endLSN: 0x5000100}
	close(ch)
	if err := w.run(context.Background(), ch); err != nil {
		t.Fatal(err)
	}
	if collided.Load() != 1 || b.count("object_key = '10'") != 1 || lb.count(`"level":"error"`, "NOT enqueued", `"key":"9"`) != 1 {
		t.Errorf("collided %d; log:\n%s", collided.Load(), lb)
	}
}
