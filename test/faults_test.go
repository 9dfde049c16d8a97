package test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/test/pgtest"
)

var (
	chaosFor  = flag.Duration("chaos", 6*time.Second, "how long the chaos loop writes and kills walhook (longer: go test ./test -run Chaos -chaos 10m)")
	hugeRows  = flag.Int("huge-rows", 1000000, "rows in the huge-transaction test")
	idleWALMB = flag.Int("idle-wal-mb", 500, "MB of unrelated WAL written in the idle-slot test")
)

// auditSchema records every committed change of item in audit, in the same
// transaction: the ground truth the outbox is checked against.
const auditSchema = `
CREATE TABLE item (id int PRIMARY KEY, version int NOT NULL, v text);
ALTER TABLE item REPLICA IDENTITY FULL;
CREATE TABLE audit (id int NOT NULL, version int NOT NULL, event text NOT NULL);
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN INSERT INTO audit VALUES (OLD.id, OLD.version, 'deleted'); RETURN OLD; END IF;
  INSERT INTO audit VALUES (NEW.id, NEW.version, CASE TG_OP WHEN 'INSERT' THEN 'created' ELSE 'updated' END);
  RETURN NEW;
END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON item FOR EACH ROW EXECUTE FUNCTION audit_fn();`

// mixedWriters commits random inserts, updates and deletes of item (1-3
// rows per transaction) from n goroutines until stop is closed.
func mixedWriters(t *testing.T, dsn string, n int, stop <-chan struct{}) (txns int64) {
	var wg sync.WaitGroup
	var count atomic.Int64
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			pool, err := pgxpool.New(ctx, dsn)
			if err != nil {
				t.Error(err)
				return
			}
			defer pool.Close()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			var live []int
			next := w * 10_000_000
			for {
				select {
				case <-stop:
					return
				default:
				}
				var sql []string
				for k := 0; k < 1+r.IntN(3); k++ {
					switch p := r.IntN(10); {
					case len(live) == 0 || p < 3:
						next++
						live = append(live, next)
						sql = append(sql, fmt.Sprintf("INSERT INTO item VALUES (%d, 1, 'x')", next))
					case p < 9:
						sql = append(sql, fmt.Sprintf("UPDATE item SET version = version + 1, v = md5(random()::text) WHERE id = %d", live[r.IntN(len(live))]))
					default:
						i := r.IntN(len(live))
						sql = append(sql, fmt.Sprintf("DELETE FROM item WHERE id = %d", live[i]))
						live = append(live[:i], live[i+1:]...)
					}
				}
				// A failed transaction left nothing behind: try the next one.
				if _, err := pool.Exec(ctx, "BEGIN; "+strings.Join(sql, "; ")+"; COMMIT"); err == nil {
					count.Add(1)
				}
				time.Sleep(time.Duration(r.IntN(3)) * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	return count.Load()
}

// orderReceiver records, per object, the (version, event) of each delivery
// in the order first received, and counts receipts per delivery id.
type orderReceiver struct {
	mu     sync.Mutex
	seen   map[string]int
	perObj map[string][]string
	srv    *http.Server
	ln     net.Listener
	addr   string
	dupes  int
}

func newOrderReceiver(t *testing.T) *orderReceiver {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &orderReceiver{seen: map[string]int{}, perObj: map[string][]string{}, addr: ln.Addr().String()}
	ln.Close()
	o.up(t)
	t.Cleanup(o.down)
	return o
}

func (o *orderReceiver) up(t *testing.T) {
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		t.Fatal(err)
	}
	o.ln = ln
	o.srv = &http.Server{Handler: o}
	go o.srv.Serve(ln)
}

func (o *orderReceiver) down() {
	if o.srv != nil {
		o.srv.Close()
		o.srv = nil
	}
}

func (o *orderReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var p struct {
		Event string `json:"event"`
		Data  struct {
			ID      int `json:"id"`
			Version int `json:"version"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		w.WriteHeader(400)
		return
	}
	id := r.Header.Get("X-Walhook-Delivery")
	o.mu.Lock()
	o.seen[id]++
	if o.seen[id] == 1 {
		key := r.URL.Path + strconv.Itoa(p.Data.ID) // order is per webhook and object
		o.perObj[key] = append(o.perObj[key], fmt.Sprintf("%08d/%s", p.Data.Version, eventRank(p.Event)))
	} else {
		o.dupes++
	}
	o.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func eventRank(e string) string {
	return map[string]string{"created": "0", "updated": "1", "deleted": "2"}[e]
}

// checkOrder fails for an object whose deliveries arrived out of commit order.
func (o *orderReceiver) checkOrder(t *testing.T) (objects, deliveries int) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	for key, seq := range o.perObj {
		if !sort.StringsAreSorted(seq) {
			t.Errorf("object %s received out of order: %v", key, seq)
		}
		deliveries += len(seq)
	}
	return len(o.perObj), deliveries
}

// checkOutbox compares the outbox rows of webhook with the audit table: each
// committed change exactly once.
func (e *env) checkOutbox(webhook string) int {
	e.t.Helper()
	q := fmt.Sprintf(`SELECT object_key::int, (body::jsonb->'data'->>'version')::int, event FROM walhook.deliveries WHERE webhook = '%s'`, webhook)
	missing := e.count(`SELECT count(*) FROM (SELECT id, version, event FROM audit EXCEPT ALL ` + q + `) x`)
	extra := e.count(`SELECT count(*) FROM (` + q + ` EXCEPT ALL SELECT id, version, event FROM audit) x`)
	if missing != 0 || extra != 0 {
		e.t.Fatalf("webhook %s: %d committed changes missing from the outbox, %d rows that are not one committed change", webhook, missing, extra)
	}
	return e.count(`SELECT count(*) FROM audit`)
}

func TestChaosKillLoop(t *testing.T) {
	e := newEnv(t, auditSchema)
	rcv := newOrderReceiver(t)
	e.writeConfig(fmt.Sprintf(`models:
  - table: item
webhooks:
  - name: one
    url: http://%s/
    timeout: 1s
    retry: {initial_interval: 50ms, max_interval: 200ms, max_attempts: 100}
  - name: two
    url: http://%s/two
    events: [deleted]
    timeout: 1s
    retry: {initial_interval: 50ms, max_interval: 200ms, max_attempts: 100}
dispatch:
  concurrency: 16
  poll_interval: 100ms`, rcv.addr, rcv.addr))
	p := e.start("run")
	e.waitStreaming()
	stop := make(chan struct{})
	var txns int64
	wdone := make(chan struct{})
	go func() { txns = mixedWriters(t, e.dsn, 4, stop); close(wdone) }()
	kills := 0
	deadline := time.After(*chaosFor)
	for running := true; running; {
		select {
		case <-deadline:
			running = false
		case <-time.After(time.Duration(150+rand.IntN(500)) * time.Millisecond):
			p.kill()
			kills++
			p = e.start("run")
		}
	}
	close(stop)
	<-wdone
	changes := e.count(`SELECT count(*) FROM audit`)
	deletes := e.count(`SELECT count(*) FROM audit WHERE event = 'deleted'`)
	e.waitFor("every change delivered", 120*time.Second, func() bool {
		n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'delivered'`)
		if n != changes+deletes && rand.IntN(40) == 0 {
			t.Logf("delivered %d of %d; by state: %s", n, changes+deletes, e.states())
		}
		return n == changes+deletes
	})
	e.checkOutbox("one")
	if n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE webhook = 'two'`); n != deletes {
		t.Errorf("webhook two has %d rows, want %d deletes", n, deletes)
	}
	objects, received := rcv.checkOrder(t)
	if received != changes+deletes {
		t.Errorf("receiver saw %d distinct deliveries, want %d", received, changes+deletes)
	}
	t.Logf("chaos: %v, %d SIGKILLs, %d transactions, %d changes, %d deliveries to %d objects, 0 missing, 0 duplicated rows, %d resent requests (at-least-once)",
		*chaosFor, kills, txns, changes, changes+deletes, objects, rcv.dupes)
	p.stop(t)
}

func TestReceiverOutageOutboxAbsorbsIt(t *testing.T) {
	e := newEnv(t, auditSchema)
	rcv := newOrderReceiver(t)
	rcv.down() // connection refused
	e.writeConfig(fmt.Sprintf(`models:
  - table: item
webhooks:
  - name: one
    url: http://%s/
    retry: {initial_interval: 100ms, max_interval: 300ms, max_attempts: 1000}
dispatch:
  poll_interval: 100ms`, rcv.addr))
	p := e.start("run")
	e.waitStreaming()
	stop := make(chan struct{})
	wdone := make(chan struct{})
	go func() { mixedWriters(t, e.dsn, 2, stop); close(wdone) }()
	time.Sleep(2 * time.Second)
	close(stop)
	<-wdone
	changes := e.count(`SELECT count(*) FROM audit`)
	// While the receiver is down, capture still enqueues everything and the
	// slot's confirmed position passes the changes: WAL is not held.
	e.waitFor("capture to enqueue during the outage", 30*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries`) == changes
	})
	e.waitFor("the slot to confirm past the changes", 30*time.Second, func() bool {
		return e.count(fmt.Sprintf(`SELECT count(*) FROM pg_replication_slots WHERE slot_name = '%s'
			AND confirmed_flush_lsn >= (SELECT max(commit_lsn) FROM walhook.deliveries)`, e.slot)) == 1
	})
	if n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'delivered'`); n != 0 {
		t.Fatalf("%d delivered while the receiver was down", n)
	}
	if n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE last_error LIKE '%connection refused%'`); n == 0 {
		t.Error("no attempt recorded connection refused")
	}
	rcv.up(t)
	e.waitFor("the backlog to drain", 60*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'delivered'`) == changes
	})
	e.checkOutbox("one")
	rcv.checkOrder(t)
	p.stop(t)
}

// TestIdleSlotDoesNotRetainWAL: the captured table is idle while another
// table and another database write lots of WAL.
func TestIdleSlotDoesNotRetainWAL(t *testing.T) {
	e := newEnv(t, `CREATE TABLE item (id int PRIMARY KEY); CREATE TABLE noise (id bigserial PRIMARY KEY, v text)`)
	e.writeConfig(`models:
  - table: item
webhooks:
  - name: one
    url: http://127.0.0.1:1/`)
	p := e.start("run", "--capture-only")
	e.waitStreaming()
	other, err := pgxpool.New(context.Background(), pg.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Exec(context.Background(), `CREATE TABLE noise (id bigserial PRIMARY KEY, v text)`); err != nil {
		t.Fatal(err)
	}
	var maxLag int64
	done := make(chan error, 1)
	go func() {
		ctx := context.Background()
		// ~1 MB of WAL per statement; alternate this database and another one.
		for i := 0; i < *idleWALMB; i++ {
			db := e.db
			if i%2 == 1 {
				db = other
			}
			if _, err := db.Exec(ctx, `INSERT INTO noise (v) SELECT repeat(md5(g::text), 30) FROM generate_series(1, 900) g`); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	start, _ := walLSN(e.db)
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			running = false
		case <-time.After(100 * time.Millisecond):
		}
		lag := int64(e.count(fmt.Sprintf(`SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = '%s'`, e.slot)))
		maxLag = max(maxLag, lag)
	}
	end, _ := walLSN(e.db)
	t.Logf("wrote %d MB of WAL elsewhere; the slot's largest lag was %.1f MB", (end-start)>>20, float64(maxLag)/(1<<20))
	if maxLag > 64<<20 {
		t.Fatalf("slot lag reached %d MB while the captured table was idle (limit 64 MB)", maxLag>>20)
	}
	p.stop(t)
}

func (e *env) states() string {
	var s string
	e.db.QueryRow(context.Background(), `SELECT coalesce(string_agg(state || '=' || n || ' (' || coalesce(err, '') || ')', ', '), '') FROM (SELECT state, count(*) n, left(max(last_error), 60) err FROM walhook.deliveries GROUP BY state) x`).Scan(&s)
	return s
}

func walLSN(db *pgxpool.Pool) (int64, error) {
	var n int64
	err := db.QueryRow(context.Background(), `SELECT (pg_current_wal_lsn() - '0/0')::bigint`).Scan(&n)
	return n, err
}

func peakRSS(pid int) (kb int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("no VmHWM")
}

func TestHugeTransactionBoundedMemory(t *testing.T) {
	e := newEnv(t, `CREATE TABLE big (id int PRIMARY KEY, name text, n numeric, at timestamptz DEFAULT now())`)
	e.writeConfig(`models:
  - table: big
webhooks:
  - name: one
    url: http://127.0.0.1:1/`)
	p := e.start("run", "--capture-only")
	e.waitStreaming()
	start := time.Now()
	e.exec(fmt.Sprintf(`INSERT INTO big SELECT g, md5(g::text), g * 1.5 FROM generate_series(1, %d) g`, *hugeRows))
	e.waitFor(fmt.Sprintf("%d rows enqueued", *hugeRows), 5*time.Minute, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries`) >= *hugeRows
	})
	took := time.Since(start)
	rss, err := peakRSS(p.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if n := e.count(`SELECT count(*) FROM walhook.deliveries`); n != *hugeRows {
		t.Fatalf("%d rows, want %d", n, *hugeRows)
	}
	t.Logf("one transaction of %d rows enqueued in %v (%.0f rows/s); walhook peak RSS %.1f MB", *hugeRows, took.Round(time.Millisecond), float64(*hugeRows)/took.Seconds(), float64(rss)/1024)
	if rss > 100*1024 {
		t.Fatalf("peak RSS %d MB, limit 100 MB", rss/1024)
	}
	p.stop(t)
}

// Capture's memory is bounded by bytes, not only by rows: one
// transaction of 1 MB jsonb rows was held 500 rows at a time, and up to 16
// such chunks waited for the writer: gigabytes. 300 rows of 1 MB (300 MB
// of bodies, little WAL: the values compress) now pass through a few
// chunks of 4 MB.
func TestLargeRowsBoundedMemory(t *testing.T) {
	const rows = 300
	e := newEnv(t, `CREATE TABLE doc (id int PRIMARY KEY, body jsonb)`)
	e.writeConfig(`models:
  - table: doc
webhooks:
  - name: one
    url: http://127.0.0.1:1/`)
	p := e.start("run", "--capture-only")
	e.waitStreaming()
	// 32 hex digits times 32768: a 1 MB string per row.
	e.exec(fmt.Sprintf(`INSERT INTO doc SELECT g, jsonb_build_object('blob', repeat(md5(g::text), 32768)) FROM generate_series(1, %d) g`, rows))
	e.waitFor(fmt.Sprintf("%d rows of 1 MB enqueued", rows), 5*time.Minute, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries`) >= rows
	})
	rss, err := peakRSS(p.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE octet_length(body) > 1000000`); n != rows {
		t.Fatalf("%d rows with a body over 1 MB, want %d", n, rows)
	}
	t.Logf("one transaction of %d rows of 1 MB enqueued; walhook peak RSS %.1f MB", rows, float64(rss)/1024)
	if rss > 150*1024 {
		t.Fatalf("peak RSS %d MB, limit 150 MB", rss/1024)
	}
	p.stop(t)
}

func TestTwoInstancesOneCapturesOtherTakesOver(t *testing.T) {
	e := newEnv(t, auditSchema)
	rcv := newOrderReceiver(t)
	e.writeConfig(fmt.Sprintf(`models:
  - table: item
webhooks:
  - name: one
    url: http://%s/
    timeout: 1s
    retry: {initial_interval: 50ms, max_interval: 200ms}
dispatch:
  poll_interval: 100ms`, rcv.addr))
	a := e.start("run")
	e.waitStreaming()
	b := e.start("run")
	stop := make(chan struct{})
	wdone := make(chan struct{})
	go func() { mixedWriters(t, e.dsn, 2, stop); close(wdone) }()
	time.Sleep(time.Second)
	capturer, standby := a, b
	if !strings.Contains(a.output(), "streaming changes") {
		capturer, standby = b, a
	}
	if strings.Contains(standby.output(), "streaming changes") {
		t.Fatal("both processes say they are streaming")
	}
	capturer.kill()
	killedAt := time.Now()
	e.waitFor("the standby to take over capture", 15*time.Second, func() bool {
		return strings.Contains(standby.output(), "streaming changes")
	})
	took := time.Since(killedAt)
	if took > 10*time.Second {
		t.Errorf("takeover took %v, want under 10s", took)
	}
	time.Sleep(time.Second)
	close(stop)
	<-wdone
	changes := e.count(`SELECT count(*) FROM audit`)
	e.waitFor("every change delivered", 60*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'delivered'`) == changes
	})
	e.checkOutbox("one")
	rcv.checkOrder(t)
	t.Logf("standby took over capture %v after SIGKILL; %d changes, none lost or doubled", took.Round(time.Millisecond), changes)
	standby.stop(t)
}

func TestSlotOrPublicationDroppedWhileRunning(t *testing.T) {
	for _, what := range []string{"slot", "publication"} {
		t.Run(what, func(t *testing.T) {
			e := newEnv(t, `CREATE TABLE item (id int PRIMARY KEY)`)
			e.writeConfig(`models:
  - table: item
webhooks:
  - name: one
    url: http://127.0.0.1:1/`)
			p := e.start("run", "--capture-only")
			e.waitStreaming()
			e.exec(`INSERT INTO item VALUES (1)`)
			e.waitFor("first row", 10*time.Second, func() bool { return e.count(`SELECT count(*) FROM walhook.deliveries`) == 1 })
			var want string
			if what == "slot" {
				// Someone terminates walhook's walsender and drops the slot.
				e.waitFor("the slot to be dropped", 20*time.Second, func() bool {
					e.db.Exec(context.Background(), `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1`, e.slot)
					_, err := e.db.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, e.slot)
					return err == nil
				})
				want = "no longer exists"
			} else {
				e.exec(`DROP PUBLICATION walhook`)
				e.exec(`INSERT INTO item VALUES (2)`)
				want = "publication walhook was dropped"
			}
			done := make(chan error, 1)
			go func() { done <- p.cmd.Wait() }()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("walhook exited 0")
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("walhook did not stop:\n%s", p.output())
			}
			if !strings.Contains(p.output(), want) {
				t.Fatalf("output does not say %q:\n%s", want, p.output())
			}
			e.exec(`INSERT INTO item VALUES (3)`) // not captured: no slot (or no publication)
			p2 := e.start("run", "--capture-only")
			// The first walhook's walsender may hold the old slot a moment
			// longer: wait for this process to stream.
			e.waitFor("the new walhook to stream", 30*time.Second, func() bool { return strings.Contains(p2.output(), "streaming changes") })
			e.waitStreaming()
			e.exec(`INSERT INTO item VALUES (4)`)
			e.waitFor("capture to resume", 20*time.Second, func() bool {
				return e.count(`SELECT count(*) FROM walhook.deliveries WHERE object_key = '4'`) == 1
			})
			if !strings.Contains(p2.output(), "were NOT captured") {
				t.Errorf("restart does not say that changes were not captured:\n%s", p2.output())
			}
			p2.stop(t)
		})
	}
}

func TestInvalidatedSlotIsRecreatedWithAWarning(t *testing.T) {
	ctx := context.Background()
	cl, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"max_slot_wal_keep_size": "'16MB'", "max_wal_size": "'32MB'", "min_wal_size": "'32MB'"}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	saved := pg
	pg = cl
	defer func() { pg = saved }()
	e := newEnv(t, `CREATE TABLE item (id int PRIMARY KEY); CREATE TABLE noise (v text)`)
	e.writeConfig(`models:
  - table: item
webhooks:
  - name: one
    url: http://127.0.0.1:1/`)
	p := e.start("run", "--capture-only")
	e.waitStreaming()
	e.exec(`INSERT INTO item VALUES (1)`)
	e.waitFor("first row", 10*time.Second, func() bool { return e.count(`SELECT count(*) FROM walhook.deliveries`) == 1 })
	p.stop(t)
	for i := 0; i < 8; i++ {
		e.exec(`INSERT INTO noise SELECT repeat(md5(g::text), 30) FROM generate_series(1, 9000) g`)
		e.exec(`SELECT pg_switch_wal()`)
		e.exec(`CHECKPOINT`)
	}
	e.waitFor("the slot to be invalidated", 20*time.Second, func() bool {
		return e.count(fmt.Sprintf(`SELECT count(*) FROM pg_replication_slots WHERE slot_name = '%s' AND wal_status = 'lost'`, e.slot)) == 1
	})
	p = e.start("run", "--capture-only")
	e.waitStreaming()
	e.exec(`INSERT INTO item VALUES (2)`)
	e.waitFor("capture to resume", 20*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE object_key = '2'`) == 1
	})
	if out := p.output(); !strings.Contains(out, "invalidated") || !strings.Contains(out, "were NOT captured") {
		t.Errorf("restart does not explain the lost slot:\n%s", out)
	}
	p.stop(t)
}

func TestTruncateIsLoggedNotSent(t *testing.T) {
	e := newEnv(t, `CREATE TABLE item (id int PRIMARY KEY)`)
	e.writeConfig(`models:
  - table: item
webhooks:
  - name: one
    url: http://127.0.0.1:1/`)
	p := e.start("run", "--capture-only")
	e.waitStreaming()
	e.exec(`INSERT INTO item VALUES (1), (2)`)
	e.exec(`TRUNCATE item`)
	e.exec(`INSERT INTO item VALUES (3)`)
	e.waitFor("rows", 10*time.Second, func() bool { return e.count(`SELECT count(*) FROM walhook.deliveries`) == 3 })
	e.waitFor("the warning", 10*time.Second, func() bool { return strings.Contains(p.output(), "TRUNCATE is not captured") })
	p.stop(t)
}

// TestMisbehavingReceivers: a receiver that never answers, one that trickles
// its response and one that resets the connection each end as a recorded
// failed attempt within the timeout, and do not hold up a good receiver.
func TestMisbehavingReceivers(t *testing.T) {
	// Never answers: reads until walhook gives up and closes the connection.
	silent := listen(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c); c.Close() })
	reset := listen(t, func(c net.Conn) {
		buf := make([]byte, 1024)
		c.Read(buf)
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	trickle := listen(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		c.Read(buf)
		// The status line and headers arrive one byte at a time.
		for _, b := range []byte("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n") {
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		c.Close()
	})
	good := newOrderReceiver(t)
	e := newEnv(t, `CREATE TABLE item (id int PRIMARY KEY, version int)`)
	hook := func(name, addr string) string {
		return fmt.Sprintf("  - name: %s\n    url: http://%s/\n    timeout: 1s\n    retry: {max_attempts: 1}\n", name, addr)
	}
	e.writeConfig("models:\n  - table: item\nwebhooks:\n" + hook("silent", silent) + hook("reset", reset) + hook("trickle", trickle) + hook("good", good.addr) +
		"dispatch:\n  concurrency: 3\n  poll_interval: 100ms")
	p := e.start("run")
	e.waitStreaming()
	start := time.Now()
	for i := 1; i <= 3; i++ {
		e.exec(`INSERT INTO item VALUES ($1, 1)`, i)
	}
	e.waitFor("the good receiver", 15*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE webhook = 'good' AND state = 'delivered'`) == 3
	})
	e.waitFor("the bad ones to fail", 20*time.Second, func() bool {
		n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'failed'`)
		if n != 9 && rand.IntN(40) == 0 {
			t.Log(e.states())
		}
		return n == 9
	})
	t.Logf("all outcomes recorded %v after the changes", time.Since(start).Round(time.Millisecond))
	rows, err := e.db.Query(context.Background(), `SELECT webhook, last_error, extract(epoch FROM last_attempt_at - created_at) FROM walhook.deliveries WHERE state = 'failed' ORDER BY webhook`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var hook, msg string
		var after float64
		rows.Scan(&hook, &msg, &after)
		if msg == "" {
			t.Errorf("%s: no error recorded", hook)
		}
	}
	p.stop(t)
}

func listen(t *testing.T, handle func(net.Conn)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}
