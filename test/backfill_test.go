package test

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

var backfillTimeout = flag.Duration("backfill-timeout", 3*time.Minute, "longest a walhook backfill may take in the tests")

// backfill runs walhook backfill to the end and returns its output and
// exit status.
func (e *env) backfill(args ...string) (string, int) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), *backfillTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"backfill", "-c", e.cfg}, args...)...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		e.t.Fatalf("backfill %v did not finish within %v:\n%s", args, *backfillTimeout, out)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return string(out), 0
}

const backfillSchema = `
CREATE TABLE item (id int PRIMARY KEY, version int NOT NULL DEFAULT 1, status text NOT NULL, v text);
INSERT INTO item SELECT g, 1, CASE WHEN g %% 3 = 0 THEN 'active' ELSE 'planned' END, md5(g::text) FROM generate_series(1, %d) g;`

func backfillConfig(addr string) string {
	return fmt.Sprintf(`models:
  - table: item
    model: Item
webhooks:
  - name: one
    url: http://%s/
    timeout: 2s
    retry: {initial_interval: 50ms, max_interval: 200ms, max_attempts: 100}
  - name: off
    url: http://%s/off
    enabled: false
  - name: deletes
    url: http://%s/deletes
    events: [deleted]
dispatch:
  concurrency: 16
  poll_interval: 100ms`, addr, addr, addr)
}

func TestBackfillDeliversEachRowOnce(t *testing.T) {
	const n = 10_000
	e := newEnv(t, fmt.Sprintf(backfillSchema, n))
	rcv := newOrderReceiver(t)
	e.writeConfig(backfillConfig(rcv.addr))
	p := e.start("run")
	e.waitStreaming()
	start := time.Now()
	out, code := e.backfill("--model", "Item")
	took := time.Since(start)
	if code != 0 || !strings.Contains(out, "finished") {
		t.Fatalf("backfill exited %d:\n%s", code, out)
	}
	t.Logf("backfill of %d rows (capture running): %v, %.0f rows/s", n, took.Round(time.Millisecond), float64(n)/took.Seconds())
	if got := e.count(`SELECT count(*) FROM walhook.deliveries WHERE webhook = 'one'`); got != n {
		t.Fatalf("%d outbox rows, want %d", got, n)
	}
	if got := e.count(`SELECT count(*) FROM (SELECT object_key FROM walhook.deliveries GROUP BY webhook, model, object_key HAVING count(*) <> 1) x`); got != 0 {
		t.Fatalf("%d objects with other than one row", got)
	}
	if got := e.count(`SELECT count(*) FROM walhook.deliveries WHERE webhook <> 'one' OR event <> 'created' OR seq >= 0`); got != 0 {
		t.Fatalf("%d rows for disabled or non-matching webhooks, or not created / negative seq", got)
	}
	if got := e.count(`SELECT count(*) FROM walhook.backfills WHERE rows_done = 10000 AND deliveries = 10000 AND rows_total = 10000 AND finished_at IS NOT NULL`); got != 1 {
		t.Fatalf("progress row not finished: %d", got)
	}
	// A finished backfill does nothing again.
	out, code = e.backfill("--model", "Item")
	if code != 0 || !strings.Contains(out, "already finished") {
		t.Fatalf("re-run exited %d:\n%s", code, out)
	}
	if got := e.count(`SELECT count(*) FROM walhook.deliveries`); got != n {
		t.Fatalf("re-run added rows: %d", got)
	}
	e.waitFor("every backfill row delivered", 60*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'delivered'`) == n
	})
	objects, received := rcv.checkOrder(t)
	if objects != n || received != n {
		t.Fatalf("receiver saw %d objects, %d deliveries; want %d", objects, received, n)
	}
	// --restart sends everything again.
	out, code = e.backfill("--model", "Item", "--restart")
	if code != 0 || !strings.Contains(out, "finished") {
		t.Fatalf("--restart exited %d:\n%s", code, out)
	}
	if got := e.count(`SELECT count(DISTINCT (object_key, commit_lsn)) FROM walhook.deliveries`); got != 2*n {
		t.Fatalf("after --restart %d rows, want %d", got, 2*n)
	}
	p.stop(t)
}

func TestBackfillKillAndResume(t *testing.T) {
	const n = 20_000
	e := newEnv(t, fmt.Sprintf(backfillSchema, n))
	e.writeConfig(backfillConfig("127.0.0.1:9"))
	kills := 0
	for {
		cmd := exec.Command(bin, "backfill", "-c", e.cfg, "--model", "Item", "--page-size", "250", "--rate", "8000")
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		var err error
		select {
		case err = <-done:
		case <-time.After(time.Duration(400+rand.IntN(600)) * time.Millisecond):
			_ = cmd.Process.Kill() // SIGKILL
			<-done
			kills++
			continue
		}
		if err != nil {
			t.Fatalf("backfill: %v\n%s", err, out.String())
		}
		break
	}
	if kills == 0 {
		t.Fatal("the backfill was never killed: make it slower")
	}
	if got := e.count(`SELECT count(*) FROM walhook.deliveries`); got != n {
		t.Fatalf("%d outbox rows after %d kills, want %d", got, kills, n)
	}
	if got := e.count(`SELECT count(DISTINCT object_key) FROM walhook.deliveries`); got != n {
		t.Fatalf("%d distinct objects, want %d (gaps or duplicates)", got, n)
	}
	if got := e.count(`SELECT count(*) FROM item WHERE NOT EXISTS (SELECT 1 FROM walhook.deliveries WHERE object_key = item.id::text)`); got != 0 {
		t.Fatalf("%d rows never enqueued", got)
	}
	if got := e.count(`SELECT count(*) FROM walhook.backfills WHERE rows_done = 20000 AND deliveries = 20000 AND finished_at IS NOT NULL`); got != 1 {
		t.Fatal("progress row does not say finished with 20000 rows")
	}
	t.Logf("%d SIGKILLs, resumed each time: %d rows once each", kills, n)
}

func TestBackfillWithLiveUpdatesEndsWithNewestState(t *testing.T) {
	const n = 2_000
	e := newEnv(t, fmt.Sprintf(backfillSchema, n))
	rcv := newOrderReceiver(t)
	e.writeConfig(backfillConfig(rcv.addr))
	p := e.start("run")
	e.waitStreaming()
	stop := make(chan struct{})
	var updates atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			pool, err := pgxpool.New(ctx, e.dsn)
			if err != nil {
				t.Error(err)
				return
			}
			defer pool.Close()
			r := rand.New(rand.NewPCG(uint64(w), 11))
			for {
				select {
				case <-stop:
					return
				default:
				}
				if updates.Load() >= 8_000 { // bound the test's deliveries
					time.Sleep(10 * time.Millisecond)
					continue
				}
				// 1-3 random rows per transaction.
				var sql []string
				for k := 0; k < 1+r.IntN(3); k++ {
					sql = append(sql, fmt.Sprintf("UPDATE item SET version = version + 1, v = md5(random()::text) WHERE id = %d", 1+r.IntN(n)))
				}
				if _, err := pool.Exec(ctx, "BEGIN; "+strings.Join(sql, "; ")+"; COMMIT"); err == nil {
					updates.Add(1)
				}
				time.Sleep(time.Duration(1+r.IntN(3)) * time.Millisecond)
			}
		}()
	}
	out, code := e.backfill("--model", "Item", "--page-size", "50")
	close(stop)
	wg.Wait()
	if code != 0 {
		t.Fatalf("backfill exited %d:\n%s", code, out)
	}
	t.Logf("backfill with %d concurrent update transactions: %s", updates.Load(), strings.TrimSpace(out))
	// Capture catches up: every update is in the outbox.
	e.waitFor("capture to catch up", 60*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE seq >= 0`) == e.count(`SELECT coalesce(sum(version - 1), 0)::int FROM item`)
	})
	// The last outbox row of every object, in delivery order, carries its
	// current version.
	stale := e.count(`
		SELECT count(*) FROM item i
		JOIN LATERAL (SELECT body FROM walhook.deliveries d WHERE d.webhook = 'one' AND d.object_key = i.id::text
			ORDER BY commit_lsn DESC, seq DESC LIMIT 1) last ON true
		WHERE (last.body::jsonb->'data'->>'version')::int <> i.version`)
	if stale != 0 {
		t.Fatalf("%d objects whose last outbox row is not their current version", stale)
	}
	if got := e.count(`SELECT count(*) FROM item i WHERE NOT EXISTS (SELECT 1 FROM walhook.deliveries d WHERE d.object_key = i.id::text)`); got != 0 {
		t.Fatalf("%d objects with no row at all", got)
	}
	// And the receiver got the current version last, for every object.
	total := e.count(`SELECT count(*) FROM walhook.deliveries WHERE webhook = 'one'`)
	e.waitFor("everything delivered", 90*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'delivered'`) == total
	})
	cur := map[string]int{}
	rows, err := e.db.Query(context.Background(), `SELECT id, version FROM item`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, v int
		_ = rows.Scan(&id, &v)
		cur[fmt.Sprintf("/%d", id)] = v
	}
	rows.Close()
	rcv.mu.Lock()
	bad := 0
	for key, seq := range rcv.perObj {
		var v int
		fmt.Sscanf(seq[len(seq)-1], "%08d", &v)
		if v != cur[key] {
			bad++
			if bad < 5 {
				t.Errorf("object %s: last delivery has version %d, current is %d (%v)", key, v, cur[key], seq)
			}
		}
	}
	skipped := e.count(`SELECT count(*) FROM item`) - e.count(`SELECT count(*) FROM walhook.deliveries WHERE seq < 0`)
	rcv.mu.Unlock()
	if bad > 0 {
		t.Fatalf("%d objects received a stale state last", bad)
	}
	t.Logf("%d objects, %d deliveries, every object's current version delivered last; %d backfill rows left out for a newer live change", n, total, skipped)
	p.stop(t)
}

func TestBackfillWhere(t *testing.T) {
	e := newEnv(t, fmt.Sprintf(backfillSchema, 3000))
	e.writeConfig(backfillConfig("127.0.0.1:9"))
	out, code := e.backfill("--model", "Item", "--where", "status = 'active' AND id <= 2000", "--event", "updated")
	if code != 0 {
		t.Fatalf("backfill exited %d:\n%s", code, out)
	}
	if got, want := e.count(`SELECT count(*) FROM walhook.deliveries WHERE event = 'updated'`), e.count(`SELECT count(*) FROM item WHERE status = 'active' AND id <= 2000`); got != want || got == 0 {
		t.Fatalf("--where enqueued %d rows, want %d", got, want)
	}
	if got := e.count(`SELECT count(*) FROM walhook.deliveries WHERE body::jsonb->'data'->>'status' <> 'active'`); got != 0 {
		t.Fatalf("%d rows not matching --where", got)
	}
	// Bad SQL: a clear error, exit 2, nothing written.
	for _, bad := range []string{"statuz = 'active'", "status = ", "true); DELETE FROM item; SELECT (1"} {
		out, code = e.backfill("--model", "Item", "--where", bad)
		if code != 2 || !strings.Contains(out, "--where") || strings.Contains(out, "goroutine") {
			t.Fatalf("--where %q: exit %d, want 2 with a message naming --where:\n%s", bad, code, out)
		}
		t.Logf("--where %q: %s", bad, strings.TrimSpace(out))
	}
	if got := e.count(`SELECT count(*) FROM item`); got != 3000 {
		t.Fatalf("item has %d rows", got)
	}
	// Usage errors.
	for _, args := range [][]string{{"--model", "Nope"}, {}, {"--model", "Item", "--webhook", "off"}, {"--model", "Item", "--event", "deleted"}} {
		if out, code := e.backfill(args...); code != 2 {
			t.Fatalf("%v: exit %d, want 2:\n%s", args, code, out)
		}
	}
}

// TestBackfillRendersLikeCapture compares the body of a backfilled row with
// the one capture rendered for the same row's INSERT.
func TestBackfillRendersLikeCapture(t *testing.T) {
	e := newEnv(t, `
CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE TABLE region (id int PRIMARY KEY, name text);
INSERT INTO region VALUES (1, 'Europe');
CREATE TABLE site (id bigint PRIMARY KEY, name text, region_id int REFERENCES region, status text, at timestamptz, d date,
  n numeric(12,3), f float8, j jsonb, tags text[], b bytea, m mood, ip inet, u uuid, nothing text, secret text);`)
	rcv := newOrderReceiver(t)
	e.writeConfig(fmt.Sprintf(`models:
  - table: site
    model: Site
    exclude: [secret]
    rename: {nothing: empty}
    url: /api/sites/{id}/
    relations:
      region_id: {field: region, table: region, columns: [id, name]}
    computed:
      twice: {sql: "SELECT $1::bigint * 2", args: [id]}
    choices:
      status: {active: Active}
webhooks:
  - name: one
    url: http://%s/
    events: [created]
  - name: tpl
    url: http://%s/tpl
    events: [created]
    body_template: '{"name": {{ json .data.name }}, "region": {{ json .data.region.name }}}'
    conditions: {attr: data.status.value, value: active}
dispatch:
  poll_interval: 100ms`, rcv.addr, rcv.addr))
	p := e.start("run")
	e.waitStreaming()
	e.exec(`INSERT INTO site VALUES
	  (1, 'a"b', 1, 'active', '2024-02-03 04:05:06.789+02', '2024-01-02', 123.450, 1.5, '{"k": [1, null]}', '{x,"y z"}', '\x00ff', 'sad', '10.0.0.1/8', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL, 's'),
	  (2, 'plain', NULL, 'planned', NULL, NULL, NULL, 'NaN', 'null', '{}', NULL, 'ok', NULL, NULL, NULL, 's')`)
	e.waitFor("capture", 30*time.Second, func() bool { return e.count(`SELECT count(*) FROM walhook.deliveries`) == 3 })
	out, code := e.backfill("--model", "Site")
	if code != 0 {
		t.Fatalf("backfill exited %d:\n%s", code, out)
	}
	rows, err := e.db.Query(context.Background(), `SELECT webhook, object_key, seq < 0, body FROM walhook.deliveries ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	bodies := map[string][2]string{}
	for rows.Next() {
		var hook, key, body string
		var bf bool
		if err := rows.Scan(&hook, &key, &bf, &body); err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
		delete(m, "signal_received_timestamp")
		b, _ := json.Marshal(m)
		k := hook + "/" + key
		cur := bodies[k]
		if bf {
			cur[1] = string(b)
		} else {
			cur[0] = string(b)
		}
		bodies[k] = cur
	}
	rows.Close()
	if len(bodies) != 3 {
		t.Fatalf("bodies: %v", bodies)
	}
	for k, b := range bodies {
		if b[0] != b[1] {
			t.Errorf("%s: capture rendered\n%s\nbackfill rendered\n%s", k, b[0], b[1])
		}
	}
	t.Logf("capture and backfill bodies identical: %v", bodies["one/1"][0])
	p.stop(t)
}

var backfillRateRows = flag.Int("backfill-rate-rows", 0, "measure the backfill rate on this many rows (0: skip)")

// TestBackfillRate measures rows/s with capture running: go test ./test
// -run BackfillRate -backfill-rate-rows 100000
func TestBackfillRate(t *testing.T) {
	if *backfillRateRows == 0 {
		t.Skip("pass -backfill-rate-rows N")
	}
	n := *backfillRateRows
	e := newEnv(t, fmt.Sprintf(backfillSchema, n))
	e.writeConfig(backfillConfig("127.0.0.1:9"))
	p := e.start("run", "--capture-only")
	e.waitStreaming()
	for _, ps := range []string{"1000", "5000"} {
		start := time.Now()
		out, code := e.backfill("--model", "Item", "--restart", "--page-size", ps)
		took := time.Since(start)
		if code != 0 {
			t.Fatalf("backfill exited %d:\n%s", code, out)
		}
		t.Logf("backfill of %d rows, page size %s, capture running: %v, %.0f rows/s", n, ps, took.Round(time.Millisecond), float64(n)/took.Seconds())
	}
	p.stop(t)
}
