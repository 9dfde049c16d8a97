package test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Scaling out: the outbox in its own database, several
// dispatch-only processes on one outbox, and capture split across two
// slots into one outbox — all through the real binary.

// writeConfigFile writes a config with its own database section and
// returns its path.
func (e *env) writeConfigFile(name, database, body string) string {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), name)
	text := fmt.Sprintf("database:\n%s\n%s\nhttp:\n  listen: \"\"\nlog:\n  level: info\n", database, body)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// startWith runs the binary on the config at cfg.
func (e *env) startWith(cfg string, args ...string) *proc {
	e.t.Helper()
	old := e.cfg
	e.cfg = cfg
	defer func() { e.cfg = old }()
	return e.start(args...)
}

// outboxDB creates another database on the cluster for the outbox.
func outboxDB(t *testing.T) (string, *pgxpool.Pool) {
	t.Helper()
	dsn := pg.NewDB(t)
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return dsn, pool
}

func countIn(t *testing.T, db *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// dropSlotAtEnd drops another slot of the test's once its processes are
// gone (cleanups run last-in first-out, so register it before starting
// them).
func (e *env) dropSlotAtEnd(slot string) {
	e.t.Cleanup(func() {
		for i := 0; i < 40; i++ {
			var n int
			_ = e.db.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&n)
			if n == 0 {
				return
			}
			_, _ = e.db.Exec(context.Background(), "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", slot)
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// multiset reads rows of (id, version, event) as a count per row.
func multiset(t *testing.T, db *pgxpool.Pool, sql string) map[string]int {
	t.Helper()
	rows, err := db.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	defer rows.Close()
	m := map[string]int{}
	for rows.Next() {
		var id, version int
		var event string
		if err := rows.Scan(&id, &version, &event); err != nil {
			t.Fatal(err)
		}
		m[fmt.Sprintf("%d/%d/%s", id, version, event)]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return m
}

// compareAudit compares the audit table in the source database with the
// outbox rows of webhook in the outbox database: each committed change
// exactly once. It returns the number of changes.
func compareAudit(t *testing.T, source, outbox *pgxpool.Pool, webhook string) int {
	t.Helper()
	want := multiset(t, source, `SELECT id, version, event FROM audit`)
	have := multiset(t, outbox, fmt.Sprintf(`SELECT object_key::int, (body::jsonb->'data'->>'version')::int, event
		FROM walhook.deliveries WHERE webhook = '%s'`, webhook))
	var missing, extra []string
	total := 0
	for k, n := range want {
		total += n
		if have[k] < n {
			missing = append(missing, k)
		}
	}
	for k, n := range have {
		if want[k] < n {
			extra = append(extra, k)
		}
	}
	if len(missing) > 0 || len(extra) > 0 {
		t.Fatalf("webhook %s: %d committed changes missing from the outbox (e.g. %v), %d rows doubled or not a committed change (e.g. %v)",
			webhook, len(missing), first(missing, 5), len(extra), first(extra, 5))
	}
	return total
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func TestOutboxInOwnDatabaseSurvivesSigkill(t *testing.T) {
	e := newEnv(t, auditSchema)
	outDSN, out := outboxDB(t)
	e.cfg = e.writeConfigFile("walhook.yaml", fmt.Sprintf("  dsn: %s\n  outbox_dsn: %s\n  slot: %s", e.dsn, outDSN, e.slot), `models:
  - table: item
webhooks:
  - name: one
    url: http://127.0.0.1:1/`)
	p := e.start("run", "--capture-only")
	e.waitStreaming()
	stop := make(chan struct{})
	wdone := make(chan struct{})
	var txns int64
	go func() { txns = mixedWriters(t, e.dsn, 4, stop); close(wdone) }()
	kills := 0
	deadline := time.After(5 * time.Second)
	for running := true; running; {
		select {
		case <-deadline:
			running = false
		case <-time.After(time.Duration(150+rand.IntN(400)) * time.Millisecond):
			p.kill()
			kills++
			p = e.start("run", "--capture-only")
		}
	}
	close(stop)
	<-wdone
	changes := e.count(`SELECT count(*) FROM audit`)
	e.waitFor(fmt.Sprintf("%d outbox rows", changes), 30*time.Second, func() bool {
		return countIn(t, out, `SELECT count(*) FROM walhook.deliveries`) >= changes
	})
	time.Sleep(300 * time.Millisecond) // anything doubled would land now
	compareAudit(t, e.db, out, "one")

	// Everything lives in the outbox database: nothing in the source.
	if n := e.count(`SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook'`); n != 0 {
		t.Errorf("the source database has a walhook schema; the outbox belongs in outbox_dsn")
	}
	if n := countIn(t, out, `SELECT count(*) FROM walhook.checkpoints WHERE slot = $1`, e.slot); n != 1 {
		t.Errorf("%d checkpoints for slot %s in the outbox database, want 1", n, e.slot)
	}
	p.stop(t)

	// status and check name both databases.
	srcDB := e.dsn[strings.LastIndex(e.dsn, "/")+1:]
	outName := outDSN[strings.LastIndex(outDSN, "/")+1:]
	srcDB, _, _ = strings.Cut(srcDB, "?")
	outName, _, _ = strings.Cut(outName, "?")
	stOut, err := exec.Command(bin, "status", "--json", "-c", e.cfg).CombinedOutput()
	if err != nil {
		t.Fatalf("status: %v\n%s", err, stOut)
	}
	var st struct {
		Source struct{ Database string } `json:"source"`
		Outbox struct {
			Database string `json:"database"`
			Separate bool   `json:"separate"`
		} `json:"outbox"`
		Webhooks []struct {
			Name   string
			Counts struct{ Pending int }
		}
		Capture struct {
			CheckpointLSN string `json:"checkpoint_lsn"`
		}
	}
	if err := json.Unmarshal(stOut, &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, stOut)
	}
	if st.Source.Database != srcDB || st.Outbox.Database != outName || !st.Outbox.Separate {
		t.Errorf("status --json names source %q and outbox %q (separate %v), want %q and %q:\n%s", st.Source.Database, st.Outbox.Database, st.Outbox.Separate, srcDB, outName, stOut)
	}
	if len(st.Webhooks) != 1 || st.Webhooks[0].Counts.Pending != changes || st.Capture.CheckpointLSN == "" {
		t.Errorf("status --json does not read the outbox database (want %d pending and a checkpoint):\n%s", changes, stOut)
	}
	text, err := exec.Command(bin, "status", "-c", e.cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(text), srcDB) || !strings.Contains(string(text), outName) {
		t.Errorf("status does not name both databases (%v):\n%s", err, text)
	}
	chk, err := exec.Command(bin, "check", "-c", e.cfg).CombinedOutput()
	if err != nil {
		t.Errorf("check: %v\n%s", err, chk)
	}
	for _, want := range []string{"source database", "database " + srcDB, "outbox database", "database " + outName, "outbox schema walhook"} {
		if !strings.Contains(string(chk), want) {
			t.Errorf("check output lacks %q:\n%s", want, chk)
		}
	}
	if line := checkLine(t, string(chk), "outbox schema walhook"); !strings.Contains(line, outName) {
		t.Errorf("the outbox schema check does not name the outbox database %s: %s", outName, line)
	}
	t.Logf("outbox in its own database: %d SIGKILLs, %d transactions, %d changes, each exactly once", kills, txns, changes)
}

// wrap serves o's address with a handler that calls before, then o.
func (o *orderReceiver) wrap(t *testing.T, before func(*http.Request)) {
	t.Helper()
	o.ln.Close() // at once, even if Serve has not started yet
	o.down()
	ln, err := net.Listen("tcp", o.addr)
	for i := 0; err != nil && i < 20; i++ {
		time.Sleep(50 * time.Millisecond)
		ln, err = net.Listen("tcp", o.addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		before(r)
		o.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func TestThreeDispatchersDeliverEachRowOnceInOrder(t *testing.T) {
	e := newEnv(t, auditSchema)
	rcv := newOrderReceiver(t)
	// Count requests by dispatcher: each process's config adds its own
	// header, as configs on different hosts may differ in such details.
	var byProc sync.Map
	rcv.wrap(t, func(r *http.Request) {
		n, _ := byProc.LoadOrStore(r.Header.Get("X-Dispatcher"), new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	})
	config := func(i int) string {
		return e.writeConfigFile(fmt.Sprintf("d%d.yaml", i), fmt.Sprintf("  dsn: %s\n  slot: %s", e.dsn, e.slot), fmt.Sprintf(`models:
  - table: item
webhooks:
  - name: one
    url: http://%s/
    headers: {X-Dispatcher: "d%d"}
    timeout: 2s
    retry: {initial_interval: 50ms, max_interval: 200ms, max_attempts: 100}
dispatch:
  concurrency: 8
  poll_interval: 100ms`, rcv.addr, i))
	}
	capture := e.startWith(config(0), "run", "--capture-only")
	e.waitStreaming()
	// A backlog first, so that the three start on it together, then
	// writes while they run.
	stop := make(chan struct{})
	wdone := make(chan struct{})
	var txns int64
	go func() { txns = mixedWriters(t, e.dsn, 4, stop); close(wdone) }()
	time.Sleep(1500 * time.Millisecond)
	var ds []*proc
	for i := 1; i <= 3; i++ {
		ds = append(ds, e.startWith(config(i), "run", "--dispatch-only"))
	}
	time.Sleep(3 * time.Second)
	close(stop)
	<-wdone
	changes := e.count(`SELECT count(*) FROM audit`)
	e.waitFor("every change delivered", 30*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'delivered'`) == changes
	})
	e.checkOutbox("one")
	objects, received := rcv.checkOrder(t)
	if received != changes {
		t.Errorf("receiver saw %d distinct deliveries, want %d", received, changes)
	}
	rcv.mu.Lock()
	dupes := rcv.dupes
	rcv.mu.Unlock()
	if dupes != 0 {
		t.Errorf("%d deliveries sent more than once, though no process died", dupes)
	}
	var shares []string
	for i := 1; i <= 3; i++ {
		var n int64
		if v, ok := byProc.Load(fmt.Sprintf("d%d", i)); ok {
			n = v.(*atomic.Int64).Load()
		}
		if n == 0 {
			t.Errorf("dispatcher d%d sent nothing: the claims are not shared", i)
		}
		shares = append(shares, fmt.Sprintf("d%d %d", i, n))
	}
	for _, d := range ds {
		d.stop(t)
	}
	capture.stop(t)
	t.Logf("3 dispatch-only processes + 1 capture: %d transactions, %d changes to %d objects, each delivered once, in order (%s)",
		txns, changes, objects, strings.Join(shares, ", "))
}

// A dispatcher killed with rows claimed: another process takes them back
// when their lease runs out and delivers them, in order per object. Only
// requests the dead one had in flight may be sent twice.
func TestDispatchersTakeOverADeadDispatchersLeases(t *testing.T) {
	e := newEnv(t, auditSchema)
	rcv := newOrderReceiver(t)
	rcv.wrap(t, func(*http.Request) { time.Sleep(5 * time.Millisecond) }) // rows stay claimed a while
	// A 200ms timeout keeps the lease short: (8+1) x 200ms + 10s.
	e.writeConfig(fmt.Sprintf(`models:
  - table: item
webhooks:
  - name: one
    url: http://%s/
    timeout: 200ms
    retry: {initial_interval: 50ms, max_interval: 200ms, max_attempts: 100}
dispatch:
  concurrency: 4
  poll_interval: 100ms`, rcv.addr))
	capture := e.start("run", "--capture-only")
	e.waitStreaming()
	stop := make(chan struct{})
	wdone := make(chan struct{})
	go func() { mixedWriters(t, e.dsn, 4, stop); close(wdone) }()
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	<-wdone
	changes := e.count(`SELECT count(*) FROM audit`)
	e.waitFor("the backlog captured", 20*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries`) == changes
	})
	victim := e.start("run", "--dispatch-only")
	survivor := e.start("run", "--dispatch-only")
	e.waitFor("rows in flight", 10*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'delivered'`) > 100
	})
	victim.kill()
	killedAt := time.Now()
	stranded := e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'delivering'`)
	e.waitFor("every change delivered", 40*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'delivered'`) == changes
	})
	took := time.Since(killedAt)
	e.checkOutbox("one")
	objects, received := rcv.checkOrder(t)
	if received != changes {
		t.Errorf("receiver saw %d distinct deliveries, want %d", received, changes)
	}
	rcv.mu.Lock()
	dupes := rcv.dupes
	rcv.mu.Unlock()
	if dupes > 4*8 { // at most what the dead one held: concurrency x heldPerWorker
		t.Errorf("%d requests resent; the dead dispatcher held at most 32", dupes)
	}
	survivor.stop(t)
	capture.stop(t)
	t.Logf("dispatcher SIGKILLed with ~%d rows claimed; the other delivered all %d changes to %d objects within %v, in order, %d resent",
		stranded, changes, objects, took.Round(100*time.Millisecond), dupes)
}

const splitSchema = `
CREATE TABLE a (id int PRIMARY KEY, version int NOT NULL);
CREATE TABLE b (id int PRIMARY KEY, version int NOT NULL);`

func TestSplitCaptureTwoConfigsOneOutbox(t *testing.T) {
	e := newEnv(t, splitSchema)
	outDSN, out := outboxDB(t)
	rcv := newReceiver(t, "k")
	slotB := e.slot + "_b"
	e.dropSlotAtEnd(slotB)
	db := func(slot, pub string) string {
		return fmt.Sprintf("  dsn: %s\n  outbox_dsn: %s\n  slot: %s\n  publication: %s", e.dsn, outDSN, slot, pub)
	}
	hooks := func(table, name string) string {
		return fmt.Sprintf(`models:
  - table: %s
webhooks:
  - name: %s
    url: %s/%s
    secret: k
    retry: {initial_interval: 50ms, max_interval: 200ms}
dispatch:
  poll_interval: 100ms`, table, name, rcv.URL, name)
	}
	cfgA := e.writeConfigFile("a.yaml", db(e.slot, "pub_a"), hooks("a", "wa"))
	cfgB := e.writeConfigFile("b.yaml", db(slotB, "pub_b"), hooks("b", "wb"))
	pa := e.startWith(cfgA, "run")
	pb := e.startWith(cfgB, "run")
	e.waitFor("both slots to stream", 30*time.Second, func() bool {
		return e.count(fmt.Sprintf(`SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('%s', '%s') AND active`, e.slot, slotB)) == 2
	})

	// Both tables change in the same transactions: each capture must take
	// its own table's changes and nothing of the other's.
	const txns, perTx = 200, 5
	for i := 0; i < txns; i++ {
		lo, hi := i*perTx+1, (i+1)*perTx
		e.exec(fmt.Sprintf(`BEGIN;
			INSERT INTO a SELECT g, 1 FROM generate_series(%d, %d) g;
			INSERT INTO b SELECT g, 1 FROM generate_series(%d, %d) g;
			UPDATE a SET version = 2 WHERE id = %d;
			COMMIT`, lo, hi, lo, hi, lo))
	}
	e.exec(`UPDATE b SET version = version + 1 WHERE id % 10 = 0`)
	e.exec(`DELETE FROM b WHERE id % 100 = 0`)
	wantA := txns*perTx + txns
	wantB := txns*perTx + txns*perTx/10 + txns*perTx/100
	deliveredBoth := func() (int, int) {
		rcv.mu.Lock()
		defer rcv.mu.Unlock()
		var a, b int
		for _, body := range rcv.bodies {
			switch {
			case strings.Contains(body, `"model":"a"`):
				a++
			case strings.Contains(body, `"model":"b"`):
				b++
			}
		}
		return a, b
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		a, b := deliveredBoth()
		if a >= wantA && b >= wantB {
			break
		}
		if time.Now().After(deadline) {
			var states, cps string
			_ = out.QueryRow(context.Background(), `SELECT coalesce(string_agg(webhook || ' ' || state || ' ' || n, ', '), 'none')
				FROM (SELECT webhook, state, count(*) n FROM walhook.deliveries GROUP BY 1, 2 ORDER BY 1, 2) x`).Scan(&states)
			_ = out.QueryRow(context.Background(), `SELECT coalesce(string_agg(slot || ' at ' || lsn, ', '), 'none') FROM walhook.checkpoints`).Scan(&cps)
			t.Fatalf("timed out: received %d of a (want %d), %d of b (want %d); outbox rows: %s; checkpoints: %s", a, wantA, b, wantB, states, cps)
		}
	}
	time.Sleep(300 * time.Millisecond)
	for _, c := range []struct {
		webhook, model string
		want           int
	}{{"wa", "a", wantA}, {"wb", "b", wantB}} {
		if n := countIn(t, out, `SELECT count(*) FROM walhook.deliveries WHERE webhook = $1 AND model = $2`, c.webhook, c.model); n != c.want {
			t.Errorf("outbox has %d rows of webhook %s, want %d", n, c.webhook, c.want)
		}
		if n := countIn(t, out, `SELECT count(*) FROM walhook.deliveries WHERE webhook = $1 AND model <> $2`, c.webhook, c.model); n != 0 {
			t.Errorf("webhook %s has %d rows of the other config's table", c.webhook, n)
		}
		if n := countIn(t, out, `SELECT count(DISTINCT (object_key, event, body::jsonb->'data'->>'version')) FROM walhook.deliveries WHERE webhook = $1`, c.webhook); n != c.want {
			t.Errorf("webhook %s: %d distinct changes, want %d", c.webhook, n, c.want)
		}
	}
	if a, b := deliveredBoth(); a != wantA || b != wantB || rcv.distinct() != wantA+wantB {
		t.Errorf("received %d of a (want %d), %d of b (want %d), %d distinct ids (want %d)", a, wantA, b, wantB, rcv.distinct(), wantA+wantB)
	}
	if n := countIn(t, out, `SELECT count(*) FROM walhook.checkpoints WHERE slot IN ($1, $2)`, e.slot, slotB); n != 2 {
		t.Errorf("%d checkpoints for the two slots, want one each", n)
	}
	if n := countIn(t, out, `SELECT count(*) FROM walhook.deliveries WHERE state <> 'delivered'`); n != 0 {
		t.Errorf("%d deliveries not delivered", n)
	}
	pa.stop(t)
	pb.stop(t)
	t.Logf("two captures (slots %s, %s) into one outbox: %d + %d deliveries, each once", e.slot, slotB, wantA, wantB)
}
