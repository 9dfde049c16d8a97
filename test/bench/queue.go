package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/internal/outbox"
)

// backlogPhase: backlogRows inserts (1,000 per transaction) are captured by
// `walhook run --capture-only` into a fresh outbox, then one `walhook run
// --dispatch-only` drains them. Nothing is vacuumed or analyzed by hand:
// the outbox is as capture left it.
func (b *bench) backlogPhase() error {
	url, closeRecv, err := receiver(nil)
	if err != nil {
		return err
	}
	defer closeRecv()
	pool, _, cfg, err := b.db(itemSchema, url, "dispatch: {concurrency: 32}\n")
	if err != nil {
		return err
	}
	defer pool.Close()
	capt, err := b.startStreaming(cfg, pool, "run", "--capture-only")
	if err != nil {
		return err
	}
	for i := 0; i < backlogRows; i += 1000 {
		if _, err := pool.Exec(b.ctx, `INSERT INTO item (id, name, qty, price) SELECT g, 'item ' || g, g % 100, g * 0.25 FROM generate_series($1::int + 1, $1::int + 1000) g`, i); err != nil {
			capt.stop()
			return err
		}
	}
	err = waitFor(10*time.Minute, 100*time.Millisecond, func() bool {
		return count(b.ctx, pool, `SELECT count(*) FROM walhook.deliveries`) >= backlogRows
	})
	capt.stop()
	if err != nil {
		return err
	}
	drain := func() (float64, float64, error) {
		start := time.Now()
		p, err := b.start(cfg, "run", "--dispatch-only")
		if err != nil {
			return 0, 0, err
		}
		err = waitFor(20*time.Minute, 50*time.Millisecond, func() bool {
			return count(b.ctx, pool, `SELECT count(*) FROM (SELECT 1 FROM walhook.deliveries WHERE state IN ('pending', 'parked', 'delivering') LIMIT 1) AS x`) == 0
		})
		el := time.Since(start)
		rss := p.stop()
		if err != nil {
			return 0, 0, fmt.Errorf("%w: %s", err, p.out.String())
		}
		return float64(backlogRows) / el.Seconds(), rss, nil
	}
	rate, rss, err := drain()
	if err != nil {
		return err
	}
	phase := fmt.Sprintf("backlog %d", backlogRows)
	b.add(phase, "drained by one dispatch-only (as capture left it, never analyzed)", rate, "deliveries/s")
	b.add(phase, "walhook peak RSS", rss, "MB")
	return nil
}

// claims: the latency of one claim of 64 rows with a 10,000 and a
// 1,000,000-row backlog that was never analyzed. Both backlogs begin alike:
// 100 objects whose first change is retrying (due in an hour), and among
// the due rows one in three is a later change of those objects (parked by
// the claim that meets it); 100 claims read the first 6,400 due rows.
func (b *bench) claims() error {
	var p99s []float64
	for _, n := range []int{10000, 1000000} {
		pool, _, cfg, err := b.db(itemSchema, "", "")
		if err != nil {
			return err
		}
		if err := b.migrate(cfg); err != nil {
			pool.Close()
			return err
		}
		if _, err := pool.Exec(b.ctx, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body,
				attempts, next_attempt_at)
			SELECT 'w', 'updated', 'item',
				CASE WHEN g <= 100 THEN 'r' || g WHEN g % 3 = 0 THEN 'r' || (g % 100 + 1) ELSE g::text END,
				'0/1'::pg_lsn + g, 0, now(), '{"event":"updated","model":"item","data":{"id":' || g || '}}',
				CASE WHEN g <= 100 THEN 1 ELSE 0 END,
				CASE WHEN g <= 100 THEN now() + interval '1 hour' ELSE now() END
			FROM generate_series(1, $1::int) g`, n); err != nil {
			pool.Close()
			return err
		}
		// The pool the product would use: connections prepared by outbox.
		pc := pool.Config()
		pc.AfterConnect = outbox.PrepareConn
		prepared, err := pgxpool.NewWithConfig(b.ctx, pc)
		if err != nil {
			pool.Close()
			return err
		}
		defer prepared.Close() //nolint:gocritic // one pool per plan mode (two), closed when the phase ends
		store := outbox.New(prepared, "walhook")
		var lat []float64
		for range 100 {
			start := time.Now()
			if _, err := store.Claim(b.ctx, outbox.ClaimRequest{By: "bench", Webhooks: []string{"w"},
				Limits: []int32{64}, Leases: []time.Duration{time.Minute}}); err != nil {
				pool.Close()
				return err
			}
			lat = append(lat, float64(time.Since(start).Microseconds())/1e3)
		}
		pool.Close()
		sort.Float64s(lat)
		pct := func(q float64) float64 { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
		b.add("claim latency", fmt.Sprintf("p50, 64 rows, %d-row backlog", n), pct(0.5), "ms")
		b.add("claim latency", fmt.Sprintf("p99, 64 rows, %d-row backlog", n), pct(0.99), "ms")
		p99s = append(p99s, pct(0.99))
	}
	b.add("claim latency", "p99 1,000,000 / p99 10,000", p99s[1]/p99s[0], "x")
	return nil
}

// orderRecv counts deliveries per webhook path and checks per-object order
// (the body's data.id is the object, data.v its version).
type orderRecv struct {
	mu     sync.Mutex
	last   map[string]int
	n      map[string]int
	bad    int
	status atomic.Int32 // answer for /b: 0 = 204, -1 = hang
	url    string
	close  func()
}

func newOrderRecv() (*orderRecv, error) {
	o := &orderRecv{last: map[string]int{}, n: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/b" {
			switch st := o.status.Load(); {
			case st < 0:
				<-r.Context().Done()
				return
			case st > 0:
				w.WriteHeader(int(st))
				return
			}
		}
		s := string(body)
		id, v := field(s, `"id":`), field(s, `"v":`)
		key := r.URL.Path + "/" + strconv.Itoa(id)
		o.mu.Lock()
		if prev, seen := o.last[key]; seen && v <= prev {
			o.bad++
		}
		o.last[key] = v
		o.n[r.URL.Path]++
		o.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(ln) }() // returns when closed
	o.url, o.close = "http://"+ln.Addr().String(), func() { srv.Close() }
	return o, nil
}

func field(s, name string) int {
	i := strings.Index(s, name)
	if i < 0 {
		return -1
	}
	s = s[i+len(name):]
	j := strings.IndexAny(s, ",}")
	n, _ := strconv.Atoi(s[:j])
	return n
}

// reset forgets what was received (each run re-sends the same versions).
func (o *orderRecv) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.last, o.n = map[string]int{}, map[string]int{}
}

func (o *orderRecv) count(path string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[path]
}

// outage (hang=false) or hang: two webhooks on one outbox, 2,000 objects
// changed 20 times each (40,000 deliveries per webhook, one commit order).
// First webhook a alone drains its rows; then, on a fresh copy, a drains
// while b's receiver answers 503 (outage) or never answers (hang); then b's
// receiver recovers and b drains its backlog, most rows queued behind a
// retrying change of their object. Per-object order is checked at the
// receiver.
func (b *bench) outage(hang bool) error {
	const objects, changes = 2000, 20
	total := objects * changes
	name := "outage (503)"
	bStatus := int32(503)
	if hang {
		name, bStatus = "hang (no answer, timeout 2s)", -1
	}
	rcv, err := newOrderRecv()
	if err != nil {
		return err
	}
	defer rcv.close()
	fill := func(hooks string) (*pgxpool.Pool, string, error) {
		pool, _, cfg, err := b.db(itemSchema, rcv.url+"/unused", "dispatch: {concurrency: 32}\n")
		if err != nil {
			return nil, "", err
		}
		// Replace the webhooks of the generated config.
		if err := rewriteHooks(cfg, hooks); err != nil {
			pool.Close()
			return nil, "", err
		}
		if err := b.migrate(cfg); err != nil {
			pool.Close()
			return nil, "", err
		}
		_, err = pool.Exec(b.ctx, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
			SELECT w, 'updated', 'item', (g % $1)::text, '0/1'::pg_lsn + g, 0, now(),
				'{"event":"updated","model":"item","data":{"id":' || (g % $1) || ',"v":' || (g / $1) || '}}'
			FROM generate_series(0, $2::int - 1) g, unnest(ARRAY['a', 'b']) AS w`, objects, total)
		return pool, cfg, err
	}
	hookA := fmt.Sprintf("  - {name: a, url: %q, secret: s}\n", rcv.url+"/a")
	hookB := fmt.Sprintf("  - {name: b, url: %q, secret: s, timeout: 2s}\n", rcv.url+"/b")
	drainA := func(hooks string) (float64, *pgxpool.Pool, string, *proc, error) {
		pool, cfg, err := fill(hooks)
		if err != nil {
			return 0, nil, "", nil, err
		}
		rcv.reset()
		before := 0
		start := time.Now()
		p, err := b.start(cfg, "run", "--dispatch-only")
		if err != nil {
			pool.Close()
			return 0, nil, "", nil, err
		}
		err = waitFor(5*time.Minute, 20*time.Millisecond, func() bool { return rcv.count("/a")-before >= total })
		rate := float64(total) / time.Since(start).Seconds()
		if err != nil {
			p.stop()
			pool.Close()
			return 0, nil, "", nil, fmt.Errorf("%w: %s", err, p.out.String())
		}
		return rate, pool, cfg, p, nil
	}
	alone, pool, _, p, err := drainA(hookA)
	if err != nil {
		return err
	}
	p.stop()
	pool.Close()
	rcv.status.Store(bStatus)
	during, pool, _, p, err := drainA(hookA + hookB)
	if err != nil {
		return err
	}
	defer pool.Close()
	b.add(name, "healthy webhook alone", alone, "deliveries/s")
	b.add(name, "healthy webhook while the other fails", during, "deliveries/s")
	b.add(name, "healthy during / alone", during/alone, "x")
	// Recovery: b answers again; its backlog drains once the breaker's
	// probe succeeds.
	time.Sleep(2 * time.Second)
	rcv.status.Store(0)
	start := time.Now()
	before := rcv.count("/b")
	var resumed time.Duration
	err = waitFor(5*time.Minute, 20*time.Millisecond, func() bool {
		if resumed == 0 && rcv.count("/b") > before {
			resumed = time.Since(start)
		}
		return count(b.ctx, pool, `SELECT count(*) FROM (SELECT 1 FROM walhook.deliveries WHERE webhook = 'b' AND state IN ('pending', 'parked', 'delivering') LIMIT 1) AS x`) == 0
	})
	el := time.Since(start)
	rss := p.stop()
	if err != nil {
		return fmt.Errorf("%w: %s", err, p.out.String())
	}
	got := rcv.count("/b") - before
	b.add(name, "recovering webhook: first delivery after the receiver recovered (next breaker probe)", float64(resumed.Milliseconds()), "ms")
	b.add(name, "recovering webhook's backlog drain (from recovery, probe wait included)", float64(got)/el.Seconds(), "deliveries/s")
	if el > resumed {
		b.add(name, "recovering webhook's backlog drain (from its first delivery)", float64(got)/(el-resumed).Seconds(), "deliveries/s")
	}
	b.add(name, "rows of the failing webhook marked failed", float64(count(b.ctx, pool, `SELECT count(*) FROM walhook.deliveries WHERE state = 'failed'`)), "rows")
	rcv.mu.Lock()
	bad := rcv.bad
	rcv.mu.Unlock()
	b.add(name, "deliveries out of per-object order at the receiver", float64(bad), "deliveries")
	b.add(name, "walhook peak RSS", rss, "MB")
	return nil
}

// rewriteHooks replaces the webhooks section of a bench config.
func rewriteHooks(cfg, hooks string) error {
	text, err := os.ReadFile(cfg)
	if err != nil {
		return err
	}
	s := string(text)
	i := strings.Index(s, "webhooks:\n")
	j := strings.Index(s, "dispatch:")
	if i < 0 || j < i {
		return fmt.Errorf("unexpected bench config %s", cfg)
	}
	return os.WriteFile(cfg, []byte(s[:i]+"webhooks:\n"+hooks+s[j:]), 0o600)
}

// The burst phase's name, and the names of the figures the goals read.
const (
	burstPhase       = "burst 100 x 1,000"
	restartWALMetric = "restart: WAL from the slot's restart_lsn to the new change"
	restartMetric    = "restart: start to the new change delivered"
)

// burst: `walhook run` on a fresh outbox; 100 transactions of 1,000
// inserts are committed as fast as one connection can. Reported: the rate
// from the first commit to the last delivery, the time from the first
// commit to the first delivery, and claim errors in walhook's log. With
// -outbox-database the outbox is in another database of the cluster; the
// WAL and CPU figures are the cluster's either way.
func (b *bench) burst() error {
	const txns, per = 100, 1000
	const steadyRate, steadyFor = 1000, 20 * time.Second
	var got atomic.Int64
	var first atomic.Int64 // UnixNano of the first delivery
	var last atomic.Int64
	var steady atomic.Bool // the burst is delivered: record latencies
	var mu sync.Mutex
	var lat []float64
	url, closeRecv, err := receiver(func(body []byte) {
		now := time.Now()
		if steady.Load() {
			if ms, ok := commitToReceipt(body, now); ok {
				mu.Lock()
				lat = append(lat, ms)
				mu.Unlock()
			}
		}
		first.CompareAndSwap(0, now.UnixNano())
		last.Store(now.UnixNano())
		got.Add(1)
	})
	if err != nil {
		return err
	}
	defer closeRecv()
	pool, _, cfg, err := b.db(itemSchema, url, "dispatch: {concurrency: 32}\n")
	if err != nil {
		return err
	}
	defer pool.Close()
	slot := fmt.Sprintf("bench%d", b.n) // b.db's
	phase, outboxPool := burstPhase, pool
	if outboxDatabase {
		if outboxPool, err = b.moveOutbox(cfg); err != nil {
			return err
		}
		defer outboxPool.Close()
		phase += outboxElsewhere
	}
	insert := func(table string, i int) error {
		_, err := pool.Exec(b.ctx, `INSERT INTO `+table+` (id, name, qty, price) SELECT g, 'item ' || g, g % 100, g * 0.25 FROM generate_series($1::int + 1, $1::int + $2::int) g`, i*per, per)
		return err
	}
	// The application's own WAL for the same rows, in a table walhook
	// does not capture: what is left of the burst's WAL is walhook's.
	if _, err := pool.Exec(b.ctx, `CREATE TABLE item_shadow (LIKE item INCLUDING ALL)`); err != nil {
		return err
	}
	w := walLSN(b.ctx, pool)
	for i := range txns {
		if err := insert("item_shadow", i); err != nil {
			return err
		}
	}
	appWAL := walLSN(b.ctx, pool) - w
	printStatements(b.ctx, outboxPool, "(reset)")
	p, err := b.startStreaming(cfg, pool, "run")
	if err != nil {
		return err
	}
	stop := func(err error) error {
		p.stop()
		return err
	}
	cpu0, wal0 := b.pgCPU(), walLSN(b.ctx, pool)
	var firstCommit time.Time
	for i := range txns {
		if err := insert("item", i); err != nil {
			return stop(err)
		}
		if i == 0 {
			firstCommit = time.Now()
		}
	}
	if err := waitFor(5*time.Minute, 10*time.Millisecond, func() bool { return got.Load() >= txns*per }); err != nil {
		return stop(fmt.Errorf("%w (%d delivered): %s", err, got.Load(), p.out.String()))
	}
	cpu1, wal1 := b.pgCPU(), walLSN(b.ctx, pool)
	printStatements(b.ctx, outboxPool, "statements of the burst")
	el := time.Unix(0, last.Load()).Sub(firstCommit)
	b.add(phase, "deliveries/s, first commit to last delivery (walhook run, fresh outbox)", float64(txns*per)/el.Seconds(), "deliveries/s")
	b.add(phase, "first delivery after the first commit", float64(time.Unix(0, first.Load()).Sub(firstCommit).Microseconds())/1e3, "ms")
	b.add(phase, "PostgreSQL CPU per 100,000 deliveries", (cpu1-cpu0)*100000/(txns*per), "s")

	// Right after the burst, autovacuum doing what it does: single-row
	// commits at a steady rate.
	steady.Store(true)
	total := int(steadyRate * steadyFor.Seconds())
	tick := time.NewTicker(time.Second / steadyRate)
	for i := 1; i <= total; i++ {
		<-tick.C
		if _, err := pool.Exec(b.ctx, `INSERT INTO item (id, name, qty) VALUES ($1, 'x', 1)`, txns*per+i); err != nil {
			tick.Stop()
			return stop(err)
		}
	}
	tick.Stop()
	if err := waitFor(time.Minute, 20*time.Millisecond, func() bool { return got.Load() >= int64(txns*per+total) }); err != nil {
		return stop(fmt.Errorf("%w (%d delivered): %s", err, got.Load(), p.out.String()))
	}
	printStatements(b.ctx, outboxPool, "statements of the steady load after the burst")
	mu.Lock()
	p50, p99, worst := percentiles(lat)
	mu.Unlock()
	b.add(phase, fmt.Sprintf("then %s commits/s: p50", "1,000"), p50, "ms")
	b.add(phase, fmt.Sprintf("then %s commits/s: p99", "1,000"), p99, "ms")
	b.add(phase, fmt.Sprintf("then %s commits/s: max", "1,000"), worst, "ms")

	// A restart: how much WAL capture decodes before it reaches a change
	// committed while walhook was stopped, and how long that takes.
	rss := p.stop()
	claimErrs := strings.Count(p.out.String(), "claiming deliveries failed")
	if _, err := pool.Exec(b.ctx, `INSERT INTO item (id, name, qty) VALUES ($1, 'after restart', 1)`, txns*per+total+1); err != nil {
		return err
	}
	var behind int64
	if err := pool.QueryRow(b.ctx, `SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&behind); err != nil {
		return err
	}
	started := time.Now()
	p, err = b.start(cfg, "run")
	if err != nil {
		return err
	}
	err = waitFor(5*time.Minute, 5*time.Millisecond, func() bool { return got.Load() >= int64(txns*per+total+1) })
	restart := time.Since(started)
	p.stop()
	if err != nil {
		return fmt.Errorf("after a restart: %w: %s", err, p.out.String())
	}
	b.add(phase, restartWALMetric, float64(behind)/1e6, "MB")
	b.add(phase, restartMetric, float64(restart.Microseconds())/1e3, "ms")

	purged, err := purgeAll(b.ctx, outboxPool)
	if err != nil {
		return err
	}
	b.add(phase, "walhook's WAL per delivery over its life", float64(wal1-wal0-appWAL)/(txns*per)+purged, "bytes")
	b.add(phase, "application's WAL per row (for scale)", float64(appWAL)/(txns*per), "bytes")
	b.add(phase, "claim errors in the log", float64(claimErrs), "lines")
	b.add(phase, "walhook peak RSS", rss, "MB")
	return nil
}
