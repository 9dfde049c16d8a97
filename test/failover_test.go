package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc/source"
	"github.com/walhook/walhook/internal/replslot"
	"github.com/walhook/walhook/test/cdctest"
	"github.com/walhook/walhook/test/pgtest"
)

// haPair is a primary and a streaming standby set up as PostgreSQL
// documents for failover slots: a physical slot for the standby, the
// primary's synchronized_standby_slots naming it, and the standby syncing
// failover slots (sync_replication_slots, hot_standby_feedback, dbname in
// primary_conninfo).
type haPair struct {
	primary, standby *pgtest.Cluster
	db               string
}

// startHAPair starts the pair with database db (made by setupSQL on the
// primary before the copy). It skips the test on servers before minVersion
// (server_version_num). On 17+ the pair is set up for failover slots.
func startHAPair(t *testing.T, db, setupSQL string, minVersion int) *haPair {
	t.Helper()
	ctx := context.Background()
	num := skipBefore(t, minVersion)
	primarySettings, standbySettings := map[string]string{}, map[string]string{}
	if num >= 170000 {
		primarySettings["synchronized_standby_slots"] = "'sb'"
		standbySettings["sync_replication_slots"] = "on"
		standbySettings["synchronized_standby_slots"] = "''"
		standbySettings["log_min_messages"] = "log"
	}
	primary, err := pgtest.Start(ctx, pgtest.Options{Settings: primarySettings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(primary.Close)
	conn, err := pgx.Connect(ctx, primary.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`SELECT pg_create_physical_replication_slot('sb', true)`, `CREATE DATABASE ` + db} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	conn.Close(ctx)
	if conn, err = pgx.Connect(ctx, primary.DSN(db)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, setupSQL); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if err := primary.Stop(false); err != nil {
		t.Fatal(err)
	}
	sb, err := primary.NewStandby("sb", 0, standbySettings)
	if err != nil {
		t.Fatal(err)
	}
	standby := &pgtest.Cluster{Cluster: sb}
	t.Cleanup(standby.Close)
	if err := primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := standby.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h := &haPair{primary: primary, standby: standby, db: db}
	h.waitFor(t, "the standby to stream", 30*time.Second, primary.DSN("postgres"),
		`SELECT count(*) > 0 FROM pg_stat_replication WHERE state = 'streaming'`)
	return h
}

// skipBefore skips the test on a server older than minVersion
// (server_version_num) and returns the server's version.
func skipBefore(t *testing.T, minVersion int) int {
	t.Helper()
	num, err := pg.VersionNum(context.Background())
	if err != nil {
		t.Fatal(err)
	} else if num < minVersion {
		t.Skipf("needs PostgreSQL %d+ (this is %d); run make test-matrix", minVersion/10000, num)
	}
	return num
}

// startClusterSince starts a cluster of the test's own with settings,
// skipping the test on servers before minVersion (server_version_num).
func startClusterSince(t *testing.T, minVersion int, settings map[string]string) *pgtest.Cluster {
	t.Helper()
	ctx := context.Background()
	skipBefore(t, minVersion)
	cl, err := pgtest.Start(ctx, pgtest.Options{Settings: settings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// dsn names both servers: libpq's multi-host form, which follows the
// primary.
func (h *haPair) dsn() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write&connect_timeout=3",
		h.primary.Port, h.standby.Port, h.db)
}

// waitFor polls a query returning one bool on dsn until it is true.
func (h *haPair) waitFor(t *testing.T, what string, timeout time.Duration, dsn, query string, args ...any) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		var ok bool
		conn, err := pgx.Connect(ctx, dsn)
		if err == nil {
			err = conn.QueryRow(ctx, query, args...).Scan(&ok)
			conn.Close(ctx)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (last error: %v)", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// keyReceiver records the ids of the objects created, from the webhooks'
// bodies.
type keyReceiver struct {
	*httptest.Server
	mu   sync.Mutex
	keys map[int64]int
}

func newKeyReceiver(t *testing.T) *keyReceiver {
	r := &keyReceiver{keys: map[int64]int{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var body struct {
			Data struct {
				ID int64 `json:"id"`
			} `json:"data"`
		}
		b, _ := io.ReadAll(req.Body)
		if err := json.Unmarshal(b, &body); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.keys[body.Data.ID]++
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *keyReceiver) snapshot() map[int64]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[int64]int, len(r.keys))
	for k, v := range r.keys {
		out[k] = v
	}
	return out
}

// TestFailoverToAStandbyLosesNothing is the failover a database lives
// through, three times over: an application writes continuously, the
// primary dies (immediate stop) right after walhook's outbox commits, the
// standby is promoted, and a new standby is made of it for the next round.
// After each failover every row the promoted server holds is delivered,
// nothing it lacks is delivered, and walhook carries on by itself through
// the multi-host DSN.
func TestFailoverToAStandbyLosesNothing(t *testing.T) {
	h := startHAPair(t, "app", `CREATE TABLE item (id bigint PRIMARY KEY, v text)`, 170000)
	rcv := newKeyReceiver(t)
	cfg := filepath.Join(t.TempDir(), "walhook.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`database:
  dsn: %s
models:
  - table: item
webhooks:
  - name: r
    url: %s/hook
http:
  listen: ""
log:
  level: info
`, h.dsn(), rcv.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, cfg: cfg}
	p := e.start("run")
	h.waitFor(t, "walhook to stream", 30*time.Second, h.primary.DSN("app"),
		`SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = 'walhook' AND active AND failover`)

	// The application: 10-row transactions, continuously, through the
	// multi-host DSN; after an error it carries on with new ids (the
	// failed transaction may or may not have committed).
	ctx, stopApp := context.WithCancel(context.Background())
	var next atomic.Int64
	var appDone sync.WaitGroup
	appDone.Add(1)
	go func() {
		defer appDone.Done()
		pool, err := pgxpool.New(ctx, h.dsn())
		if err != nil {
			t.Error(err)
			return
		}
		defer pool.Close()
		for ctx.Err() == nil {
			first := next.Add(10) - 9
			_, err := pool.Exec(ctx, `INSERT INTO item SELECT g, 'v' FROM generate_series($1::bigint, $2::bigint) g`, first, first+9)
			if err != nil {
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { stopApp(); appDone.Wait() })

	const rounds = 3
	for round := 1; round <= rounds; round++ {
		// The slot must have reached the standby before the primary dies.
		h.waitFor(t, "the standby to sync the slot", 120*time.Second, h.standby.DSN("app"),
			`SELECT count(*) = 1 FROM pg_replication_slots WHERE slot_name = 'walhook' AND synced AND NOT temporary`)
		target := len(rcv.snapshot()) + 200
		deadline := time.Now().Add(30 * time.Second)
		for len(rcv.snapshot()) < target {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: only %d rows delivered before the failover\n%s", round, len(rcv.snapshot()), p.output())
			}
			time.Sleep(20 * time.Millisecond)
		}
		// Kill the primary right after an outbox commit (the commit that
		// carries the next checkpoint), then promote the standby.
		h.waitFor(t, "an outbox commit", 10*time.Second, h.primary.DSN("app"),
			`SELECT updated_at > now() - interval '50 milliseconds' FROM walhook.checkpoints`)
		if err := h.primary.Stop(true); err != nil {
			t.Fatal(err)
		}
		before := len(rcv.snapshot())
		if err := h.standby.Promote(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // the application writes to the new primary
		h.primary, h.standby = h.standby, h.primary
		want := h.rows(t)
		deadline = time.Now().Add(90 * time.Second)
		for {
			got := rcv.snapshot()
			missing := 0
			for id := range want {
				if got[id] == 0 {
					missing++
				}
			}
			if missing == 0 {
				break
			}
			if time.Now().After(deadline) || p.cmd.ProcessState != nil {
				t.Fatalf("round %d: %d of the %d rows on the promoted server were never delivered (%d delivered before the failover)\n%s", round, missing, len(want), before, p.output())
			}
			time.Sleep(100 * time.Millisecond)
		}
		// Rows delivered that the promoted server lacks: none. (Delivered
		// first, then read: the application keeps writing.)
		delivered := rcv.snapshot()
		now := h.rows(t)
		for id := range delivered {
			if !now[id] {
				t.Fatalf("round %d: row %d was delivered but the promoted server lacks it", round, id)
			}
		}
		t.Logf("round %d: %d rows on the promoted server, all delivered; %d before the failover", round, len(want), before)
		if round < rounds {
			h.rebuildStandby(t)
		}
	}
	out := p.output()
	if strings.Contains(out, "NOT captured") {
		t.Errorf("walhook reported a gap:\n%s", out)
	}
	if n := strings.Count(out, "was promoted"); n != rounds {
		t.Errorf("walhook said %d times that it followed a promotion, want %d:\n%s", n, rounds, out)
	}
	stopApp()
	appDone.Wait()
	p.stop(t)
}

// logOnFailure prints the end of a server's log when the test fails.
func (h *haPair) logOnFailure(t *testing.T, c *pgtest.Cluster) {
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(c.Dir, "server.log"))
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("server log of port %d:\n%s", c.Port, b)
		}
	})
}

// rows returns the ids in table item on the primary.
func (h *haPair) rows(t *testing.T) map[int64]bool {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, h.primary.DSN(h.db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT id FROM item`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[int64]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out
}

// rebuildStandby makes a new standby of the (promoted) primary, on the
// port of the dead one, so that the DSN names both again: the primary gets
// the physical slot and synchronized_standby_slots, is stopped cleanly,
// copied and started again (walhook reconnects meanwhile).
func (h *haPair) rebuildStandby(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, h.primary.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'sb'`,
		`SELECT pg_create_physical_replication_slot('sb', true)`,
		`ALTER SYSTEM SET synchronized_standby_slots = 'sb'`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	conn.Close(ctx)
	if err := h.primary.Stop(false); err != nil {
		t.Fatal(err)
	}
	dead := h.standby
	dead.Close()
	sb, err := h.primary.NewStandby("sb", dead.Port, map[string]string{"sync_replication_slots": "on", "synchronized_standby_slots": "''", "log_min_messages": "log"})
	if err != nil {
		t.Fatal(err)
	}
	h.standby = &pgtest.Cluster{Cluster: sb}
	t.Cleanup(h.standby.Close)
	h.logOnFailure(t, h.standby)
	if err := h.primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.standby.Start(ctx); err != nil {
		t.Fatal(err)
	}
	h.waitFor(t, "the new standby to stream", 30*time.Second, h.primary.DSN("postgres"),
		`SELECT count(*) > 0 FROM pg_stat_replication WHERE state = 'streaming'`)
}

// TestConfirmWaitsForTheStandbysToHaveTheOutbox: capture confirms a source
// position only once the standbys named in synchronized_standby_slots have
// flushed the outbox commit that holds its deliveries. Otherwise the slot
// sync could copy the position to a standby that lacks those rows, and a
// failover to it would lose them. The standby here is a physical slot
// moved by hand, so the test sets what it has flushed.
func TestConfirmWaitsForTheStandbysToHaveTheOutbox(t *testing.T) {
	ctx := context.Background()
	cl := startClusterSince(t, 170000, map[string]string{"synchronized_standby_slots": "'sb'"})
	b := cdctest.Setup(t, cl, `CREATE TABLE item (id int PRIMARY KEY);
		SELECT pg_create_physical_replication_slot('sb', true)`, `  - table: item`)
	var lsn string
	advance := func() { // the standby flushes everything written so far
		t.Helper()
		if err := b.DB.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
			t.Fatal(err)
		}
		b.Exec(`SELECT pg_replication_slot_advance('sb', $1::text::pg_lsn)`, lsn)
	}
	advance()
	b.Start()
	// confirmedPast says whether the slot is confirmed past the commit of
	// item id's change.
	confirmedPast := func(id int) (c string, past bool) {
		t.Helper()
		if err := b.DB.QueryRow(ctx, `SELECT s.confirmed_flush_lsn::text, s.confirmed_flush_lsn > d.commit_lsn
			FROM pg_replication_slots s, (SELECT max(commit_lsn) AS commit_lsn FROM walhook.deliveries WHERE object_key = $2) d
			WHERE s.slot_name = $1`, b.Cfg.Database.Slot, fmt.Sprint(id)).Scan(&c, &past); err != nil {
			t.Fatal(err)
		}
		return c, past
	}
	for round := 0; round < 3; round++ {
		b.Exec(`INSERT INTO item VALUES ($1)`, round)
		advance() // the standby has the change: PostgreSQL sends it to capture
		cdctest.WaitUntil(t, "the change in the outbox", func() bool { return b.Count(fmt.Sprintf("object_key = '%d'", round)) == 2 })
		// The outbox commit lies past what the standby has flushed: the
		// change's position must not be confirmed, whatever the time.
		time.Sleep(1500 * time.Millisecond)
		if c, past := confirmedPast(round); past {
			t.Fatalf("round %d: the slot was confirmed to %s, past the change, while the standby has flushed only %s, before the outbox commit", round, c, lsn)
		}
		advance() // now it has
		cdctest.WaitUntil(t, "the change's position to be confirmed", func() bool { _, past := confirmedPast(round); return past })
	}
}

// TestSlotCreatedAgainWhileStoppedIsAGap: a slot dropped and created again
// under the same name while walhook is stopped (a maintenance script, a
// restore) starts past walhook's checkpoint. The changes in between were
// not captured: that is a gap, reported like the others, never a skip.
func TestSlotCreatedAgainWhileStoppedIsAGap(t *testing.T) {
	b := cdctest.Setup(t, pg, `CREATE TABLE item (id int PRIMARY KEY)`, `  - table: item`)
	b.Start()
	b.Exec(`INSERT INTO item VALUES (1)`)
	cdctest.WaitUntil(t, "the first change", func() bool { return b.Count(`object_key = '1'`) == 2 })
	b.Stop()
	if g := b.Capture.Gaps(); g != 0 {
		t.Fatalf("%d gaps before the slot was dropped", g)
	}
	slot := b.Cfg.Database.Slot
	cdctest.WaitUntil(t, "the slot to be dropped", func() bool { // its walsender may still be ending
		_, err := b.DB.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot)
		return err == nil
	})
	b.Exec(`INSERT INTO item VALUES (2)`) // no slot: never captured
	b.Exec(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	b.Exec(`INSERT INTO item VALUES (3)`)
	b.Start()
	cdctest.WaitUntil(t, "the change after the new slot", func() bool { return b.Count(`object_key = '3'`) == 2 })
	if g := b.Capture.Gaps(); g != 1 {
		t.Fatalf("%d gaps reported after the slot was created again, want 1", g)
	}
	// A restart after that is no gap.
	b.Stop()
	b.Start()
	b.Exec(`INSERT INTO item VALUES (4)`)
	cdctest.WaitUntil(t, "the next change", func() bool { return b.Count(`object_key = '4'`) == 2 })
	if g := b.Capture.Gaps(); g != 0 {
		t.Fatalf("a plain restart reported %d gaps", g)
	}
}

// TestIdleTimeoutInvalidatedSlot: PostgreSQL 18 gives up a slot nobody
// streamed from for idle_replication_slot_timeout. walhook says so with
// the fix, counts the gap, and captures again on a new slot.
func TestIdleTimeoutInvalidatedSlot(t *testing.T) {
	ctx := context.Background()
	cl := startClusterSince(t, 180000, map[string]string{"idle_replication_slot_timeout": "'1s'"})
	b := cdctest.Setup(t, cl, `CREATE TABLE item (id int PRIMARY KEY)`, `  - table: item`)
	b.Start()
	b.Exec(`INSERT INTO item VALUES (1)`)
	cdctest.WaitUntil(t, "the first change", func() bool { return b.Count(`object_key = '1'`) == 2 })
	b.Stop()
	slot := b.Cfg.Database.Slot
	cdctest.WaitUntil(t, "the slot to be invalidated", func() bool {
		b.Exec(`CHECKPOINT`) // invalidation happens at checkpoints
		var reason *string
		if err := b.DB.QueryRow(ctx, `SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&reason); err != nil {
			t.Fatal(err)
		}
		return reason != nil && *reason == "idle_timeout"
	})
	st, found, err := replslot.Read(ctx, b.DB, slot)
	if err != nil || !found || st.Invalidation != "idle_timeout" || !st.Lost() {
		t.Fatalf("replslot.Read = %+v, %v, %v; want invalidation idle_timeout", st, found, err)
	}
	if txt := source.InvalidationText(st.Invalidation); !strings.Contains(txt, "idle_replication_slot_timeout") {
		t.Errorf("the explanation does not name the setting: %s", txt)
	}
	b.Exec(`INSERT INTO item VALUES (2)`) // not captured: the slot is gone
	b.Start()
	b.Exec(`INSERT INTO item VALUES (3)`)
	cdctest.WaitUntil(t, "capture on the new slot", func() bool { return b.Count(`object_key = '3'`) == 2 })
	if g := b.Capture.Gaps(); g != 1 {
		t.Fatalf("%d gaps after the slot was invalidated, want 1", g)
	}
}

// TestCaptureFromAStandby: on PostgreSQL 16+ capture decodes on a hot
// standby (the source DSN), so decoding is taken off the primary, and
// writes the outbox to a writable database (outbox_dsn, here on the
// primary). The publication is the primary's (a standby cannot create it).
func TestCaptureFromAStandby(t *testing.T) {
	h := startHAPair(t, "app", `CREATE TABLE item (id bigint PRIMARY KEY, v text);
		CREATE PUBLICATION walhook FOR TABLE item WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)`, 160000)
	rcv := newKeyReceiver(t)
	cfg := filepath.Join(t.TempDir(), "walhook.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`database:
  dsn: %s
  outbox_dsn: %s
models:
  - table: item
webhooks:
  - name: r
    url: %s/hook
http:
  listen: ""
log:
  level: info
`, h.standby.DSN("app"), h.primary.DSN("app"), rcv.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	primary, err := pgxpool.New(context.Background(), h.primary.DSN("app"))
	if err != nil {
		t.Fatal(err)
	}
	defer primary.Close()
	e := &env{t: t, cfg: cfg}
	p := e.start("run")
	// Creating a slot on a standby waits for the primary's next record of
	// running transactions (every 15 s); the primary can write one now.
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.output(), "streaming changes") {
		if time.Now().After(deadline) || p.cmd.ProcessState != nil {
			t.Fatalf("walhook did not stream from the standby:\n%s", p.output())
		}
		_, _ = primary.Exec(context.Background(), `SELECT pg_log_standby_snapshot()`)
		time.Sleep(200 * time.Millisecond)
	}
	for i := 0; i < 20; i++ {
		if _, err := primary.Exec(context.Background(), `INSERT INTO item SELECT g, 'v' FROM generate_series($1::bigint, $1::bigint + 9) g`, i*10+1); err != nil {
			t.Fatal(err)
		}
	}
	deadline = time.Now().Add(60 * time.Second)
	for len(rcv.snapshot()) < 200 {
		if time.Now().After(deadline) || p.cmd.ProcessState != nil {
			var outboxRows int
			var slotState string
			_ = primary.QueryRow(context.Background(), `SELECT count(*) FROM walhook.deliveries`).Scan(&outboxRows)
			var prim string
			_ = primary.QueryRow(context.Background(), `SELECT format('primary at %s, standby %s', pg_current_wal_lsn(), (SELECT string_agg(state || ' ' || replay_lsn::text, ',') FROM pg_stat_replication))`).Scan(&prim)
			t.Log(prim)
			if c, err := pgx.Connect(context.Background(), h.standby.DSN("app")); err == nil {
				_ = c.QueryRow(context.Background(), `SELECT format('%s confirmed %s restart %s replay %s', active, confirmed_flush_lsn, restart_lsn, pg_last_wal_replay_lsn()) FROM pg_replication_slots WHERE slot_name = 'walhook'`).Scan(&slotState)
				c.Close(context.Background())
			}
			t.Fatalf("%d of 200 rows delivered from the standby (%d in the outbox; slot %s)\n%s", len(rcv.snapshot()), outboxRows, slotState, p.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, _ := exec.Command(bin, "check", "-c", cfg).CombinedOutput()
	if !strings.Contains(string(out), "the source is a standby (decoding there takes it off the primary)") {
		t.Errorf("walhook check does not say the source is a standby:\n%s", out)
	}
	p.stop(t)

	// A publication that does not exist cannot be created on a standby:
	// check and run say to create it on the primary, and how.
	text, _ := os.ReadFile(cfg)
	other := filepath.Join(t.TempDir(), "other.yaml")
	if err := os.WriteFile(other, []byte(strings.Replace(string(text), "models:", "  slot: other\n  publication: other\nmodels:", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command(bin, "check", "-c", other).CombinedOutput()
	if !strings.Contains(string(out), "the source is a standby, where no publication can be created") || !strings.Contains(string(out), `CREATE PUBLICATION "other" FOR TABLE "public"."item"`) {
		t.Errorf("walhook check does not say to create the publication on the primary:\n%s", out)
	}
	out, err = exec.Command(bin, "run", "-c", other).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `on the primary run: CREATE PUBLICATION "other" FOR TABLE "public"."item"`) {
		t.Errorf("walhook run on a standby without the publication: %v\n%s", err, out)
	}
}

// TestExistingSlotBecomesAFailoverSlot: on 17+ a slot made before (by an
// older walhook, or by hand) is turned into a failover slot before capture
// streams from it (ALTER_REPLICATION_SLOT), and back with
// database.slot_failover: false; a new slot is created as one.
func TestExistingSlotBecomesAFailoverSlot(t *testing.T) {
	ctx := context.Background()
	skipBefore(t, 170000)
	b := cdctest.Setup(t, pg, `CREATE TABLE item (id int PRIMARY KEY)`, `  - table: item`)
	slot := b.Cfg.Database.Slot
	failover := func() bool {
		t.Helper()
		var f bool
		if err := b.DB.QueryRow(ctx, `SELECT failover FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	b.Exec(`CREATE PUBLICATION walhook FOR TABLE item WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)`)
	b.Exec(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot)
	b.Start()
	b.Exec(`INSERT INTO item VALUES (1)`)
	cdctest.WaitUntil(t, "the first change", func() bool { return b.Count(`object_key = '1'`) == 2 })
	if !failover() {
		t.Fatal("the existing slot is not a failover slot after capture started")
	}
	cdctest.WaitUntil(t, "capture to read the slot's failover state", func() bool { return b.Capture.Failover() != nil })
	if fs := b.Capture.Failover(); !fs.Slot || fs.Ready {
		t.Errorf("Failover() = %+v, want a failover slot that is not ready (no standby)", fs)
	}
	b.Stop()
	off := false
	b.Cfg.Database.SlotFailover = &off
	cdctest.WaitUntil(t, "the walsender to let the slot go", func() bool {
		var active bool
		_ = b.DB.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		return !active
	})
	b.Start()
	b.Exec(`INSERT INTO item VALUES (2)`)
	cdctest.WaitUntil(t, "the next change", func() bool { return b.Count(`object_key = '2'`) == 2 })
	if failover() {
		t.Fatal("slot_failover: false left the slot a failover slot")
	}
}
