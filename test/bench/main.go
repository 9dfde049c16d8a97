// Command bench measures walhook on a throwaway PostgreSQL and prints a
// table (and writes the same figures as JSON): capture rate next to
// pg_recvlogical on the same WAL, dispatch rate to a local receiver,
// commit-to-receipt latency at a steady rate, and peak memory per phase;
// with -scale also the scale-out phase: 1, 2 and 4 `walhook run
// --dispatch-only` processes draining the same backlog of one outbox.
//
//	go run ./test/bench [-rows 100000] [-out bench-results.json]
//	go run ./test/bench -phases scale [-scale-rows 200000] [-scale-procs 1,2,4]
//	go run ./test/bench -phases burst -outbox-database  # the outbox in another database of the cluster
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/walhook/walhook/test/pgtest"
)

// Result is one measured figure.
type Result struct {
	Phase  string  `json:"phase"`
	Metric string  `json:"metric"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
}

// Phase selection and the scale phase's settings (flags).
var (
	want       map[string]bool
	scaleRows  int
	scaleProcs string
	scaleConc  int

	backlogRows int
	prebuilt    string
	statements  bool
	autoExplain string
	// outboxDatabase puts the burst phase's outbox in another database of
	// the same cluster (database.outbox_dsn).
	outboxDatabase bool
)

type bench struct {
	ctx     context.Context
	cl      *pgtest.Cluster
	bin     string
	dir     string
	results []Result
	n       int
}

func main() {
	rows := flag.Int("rows", 100000, "changes for the capture and dispatch phases")
	huge := flag.Int("huge", 1000000, "rows in the one-transaction memory phase (0 skips)")
	rate := flag.Int("rate", 1000, "rows/s in the latency phase")
	dur := flag.Duration("latency-for", 10*time.Second, "length of the latency phase")
	out := flag.String("out", "bench-results.json", "where to write the JSON results")
	phases := flag.String("phases", "capture,dispatch,latency,huge,burst,tracing,backlog,claims,outage,hang", "phases to run, comma-separated (capture, dispatch, latency, huge, burst, tracing, backlog, claims, outage, hang, scale)")
	flag.IntVar(&backlogRows, "backlog-rows", 1000000, "rows captured into the outbox in the backlog phase")
	flag.StringVar(&prebuilt, "bin", "", "measure this walhook binary instead of building ./cmd/walhook (e.g. an older version, for a before/after comparison)")
	flag.BoolVar(&statements, "statements", false, "load pg_stat_statements and print, after the burst and its steady load, the statements that took most time")
	flag.StringVar(&autoExplain, "auto-explain", "", "with -statements, also log the plans (ANALYZE, BUFFERS) of statements slower than this (e.g. 2ms) to <out>.server.log")
	flag.BoolVar(&outboxDatabase, "outbox-database", false, "in the burst phase, keep the outbox in another database of the same cluster (database.outbox_dsn); its figures are labelled "+strconv.Quote(outboxElsewhere))
	scale := flag.Bool("scale", false, "also run the scale phase (several dispatch-only processes on one outbox)")
	flag.IntVar(&scaleRows, "scale-rows", 200000, "backlog drained in the scale phase")
	flag.StringVar(&scaleProcs, "scale-procs", "1,2,4", "numbers of dispatch-only processes in the scale phase")
	flag.IntVar(&scaleConc, "scale-concurrency", 32, "dispatch.concurrency of each process in the scale phase")
	flag.Parse()
	want = map[string]bool{}
	for _, p := range strings.Split(*phases, ",") {
		want[strings.TrimSpace(p)] = true
	}
	if *scale {
		want["scale"] = true
	}
	if err := run(*rows, *huge, *rate, *dur, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(rows, huge, rate int, dur time.Duration, out string) error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "walhook-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b := &bench{ctx: ctx, dir: dir, bin: filepath.Join(dir, "walhook")}
	fmt.Fprintln(os.Stderr, "building walhook and starting PostgreSQL (fsync on)...")
	if prebuilt != "" {
		b.bin = prebuilt
	} else if out, err := exec.Command("go", "build", "-o", b.bin, "./cmd/walhook").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %w: %s", err, out)
	}
	settings := map[string]string{"fsync": "on", "synchronous_commit": "on"}
	if statements {
		settings["shared_preload_libraries"] = "pg_stat_statements"
		settings["pg_stat_statements.track"] = "all"
		if autoExplain != "" {
			settings["shared_preload_libraries"] = "'pg_stat_statements,auto_explain'"
			settings["auto_explain.log_min_duration"] = autoExplain
			settings["auto_explain.log_analyze"] = "on"
			settings["auto_explain.log_buffers"] = "on"
			settings["auto_explain.log_nested_statements"] = "on"
		}
	}
	b.cl, err = pgtest.Start(ctx, pgtest.Options{Settings: settings})
	if err != nil {
		return err
	}
	defer b.cl.Close()
	if statements && autoExplain != "" {
		defer func() { _ = exec.Command("cp", filepath.Join(b.cl.Dir, "server.log"), out+".server.log").Run() }()
	}
	if want["capture"] {
		if err := b.capture(rows); err != nil {
			return fmt.Errorf("capture: %w", err)
		}
	}
	if want["dispatch"] {
		if err := b.dispatch(rows); err != nil {
			return fmt.Errorf("dispatch: %w", err)
		}
	}
	if want["latency"] {
		if err := b.latency(rate, dur); err != nil {
			return fmt.Errorf("latency: %w", err)
		}
	}
	if huge > 0 && want["huge"] {
		if err := b.hugeTx(huge); err != nil {
			return fmt.Errorf("huge transaction: %w", err)
		}
	}
	for _, ph := range []struct {
		name string
		run  func() error
	}{{"burst", b.burst}, {"tracing", func() error { return b.tracingPhase(rows) }}, {"backlog", b.backlogPhase}, {"claims", b.claims}, {"outage", func() error { return b.outage(false) }}, {"hang", func() error { return b.outage(true) }}} {
		if want[ph.name] {
			if err := ph.run(); err != nil {
				return fmt.Errorf("%s: %w", ph.name, err)
			}
		}
	}
	if want["scale"] {
		if err := b.scale(); err != nil {
			return fmt.Errorf("scale: %w", err)
		}
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "phase\tmetric\tvalue\tunit")
	for _, r := range b.results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Phase, r.Metric, strconv.FormatFloat(r.Value, 'f', -1, 64), r.Unit)
	}
	tw.Flush()
	b.printGoals()
	j, _ := json.MarshalIndent(map[string]any{"machine": machine(), "results": b.results}, "", "  ")
	return os.WriteFile(out, append(j, '\n'), 0o644)
}

func machine() map[string]any {
	host, _ := os.Hostname()
	cpu := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return map[string]any{"host": host, "cpu": cpu, "cpus": runtime.NumCPU(), "date": time.Now().UTC().Format(time.RFC3339)}
}

func (b *bench) add(phase, metric string, v float64, unit string) {
	v, _ = strconv.ParseFloat(strconv.FormatFloat(v, 'f', 2, 64), 64)
	b.results = append(b.results, Result{phase, metric, v, unit})
	fmt.Fprintf(os.Stderr, "  %s %s: %v %s\n", phase, metric, v, unit)
}

// db creates a database with schema and writes a config for it.
func (b *bench) db(schema, webhookURL, extra string) (*pgxpool.Pool, string, string, error) {
	b.n++
	dsn, err := b.cl.CreateDB(b.ctx, fmt.Sprintf("bench%d", b.n))
	if err != nil {
		return nil, "", "", err
	}
	pool, err := pgxpool.New(b.ctx, dsn)
	if err != nil {
		return nil, "", "", err
	}
	if _, err := pool.Exec(b.ctx, schema); err != nil {
		return nil, "", "", err
	}
	if webhookURL == "" {
		webhookURL = "http://127.0.0.1:1/"
	}
	cfg := filepath.Join(b.dir, fmt.Sprintf("walhook%d.yaml", b.n))
	text := fmt.Sprintf("database: {dsn: %q, slot: bench%d}\nmodels: [{table: item}]\nwebhooks:\n  - {name: w, url: %q, secret: bench-secret}\n%shttp: {listen: ''}\nlog: {level: warn}\n", dsn, b.n, webhookURL, extra)
	return pool, dsn, cfg, os.WriteFile(cfg, []byte(text), 0o600)
}

// outboxElsewhere ends the name of a phase run with -outbox-database.
const outboxElsewhere = " (outbox in another database)"

// moveOutbox creates another database in the cluster and points the
// database.outbox_dsn of the bench config cfg (written by db) at it.
func (b *bench) moveOutbox(cfg string) (*pgxpool.Pool, error) {
	dsn, err := b.cl.CreateDB(b.ctx, fmt.Sprintf("bench%d_outbox", b.n))
	if err != nil {
		return nil, err
	}
	text, err := os.ReadFile(cfg)
	if err != nil {
		return nil, err
	}
	s, found := strings.CutPrefix(string(text), "database: {")
	if !found {
		return nil, fmt.Errorf("unexpected bench config %s", cfg)
	}
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("database: {outbox_dsn: %q, ", dsn)+s), 0o600); err != nil {
		return nil, err
	}
	return pgxpool.New(b.ctx, dsn)
}

const itemSchema = `CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL, price numeric(10,2), updated timestamptz NOT NULL DEFAULT now())`

// proc runs walhook and samples its peak RSS.
type proc struct {
	cmd *exec.Cmd
	out strings.Builder
	mu  sync.Mutex
}

func (b *bench) start(cfg string, args ...string) (*proc, error) {
	p := &proc{cmd: exec.Command(b.bin, append(args, "-c", cfg)...)}
	p.cmd.Stdout, p.cmd.Stderr = (*lockedBuilder)(p), (*lockedBuilder)(p)
	return p, p.cmd.Start()
}

// startStreaming starts walhook with args and waits until it streams from
// its slot (30 s at most).
func (b *bench) startStreaming(cfg string, pool *pgxpool.Pool, args ...string) (*proc, error) {
	p, err := b.start(cfg, args...)
	if err != nil {
		return nil, err
	}
	if err := waitFor(30*time.Second, 20*time.Millisecond, func() bool {
		return count(b.ctx, pool, `SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name LIKE 'bench%'`) == 1
	}); err != nil {
		p.stop()
		return nil, fmt.Errorf("walhook did not start streaming: %s", p.out.String())
	}
	return p, nil
}

type lockedBuilder proc

func (l *lockedBuilder) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.out.Write(b)
}

// migrate runs `walhook migrate -c cfg`.
func (b *bench) migrate(cfg string) error {
	if out, err := exec.Command(b.bin, "migrate", "-c", cfg).CombinedOutput(); err != nil {
		return fmt.Errorf("migrate: %w: %s", err, out)
	}
	return nil
}

// stop ends the process and returns its peak RSS in MB.
func (p *proc) stop() float64 {
	rss := peakRSS(p.cmd.Process.Pid)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Wait() // it exits on SIGTERM; the status says nothing more
	return rss
}

func peakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.Atoi(f[1])
			return float64(kb) / 1024
		}
	}
	return 0
}

func count(ctx context.Context, pool *pgxpool.Pool, sql string) int {
	var n int
	if err := pool.QueryRow(ctx, sql).Scan(&n); err != nil {
		return -1
	}
	return n
}

func waitFor(timeout time.Duration, every time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v", timeout)
		}
		time.Sleep(every)
	}
	return nil
}

// capture: rows committed inserts (transactions of 1,000) wait in the WAL for
// two slots created at the same moment: pg_recvlogical streams one to
// /dev/null, then walhook --capture-only enqueues the other.
func (b *bench) capture(rows int) error {
	pool, dsn, cfg, err := b.db(itemSchema, "", "")
	if err != nil {
		return err
	}
	defer pool.Close()
	slot := fmt.Sprintf("bench%d", b.n)
	if _, err := pool.Exec(b.ctx, `CREATE PUBLICATION walhook FOR TABLE item WITH (publish = 'insert, update, delete')`); err != nil {
		return err
	}
	if _, err := pool.Exec(b.ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput'), pg_create_logical_replication_slot('recv_' || $1, 'pgoutput')`, slot); err != nil {
		return err
	}
	if err := b.migrate(cfg); err != nil {
		return err
	}
	for i := 0; i < rows; i += 1000 {
		if _, err := pool.Exec(b.ctx, `INSERT INTO item (id, name, qty, price) SELECT g, 'item ' || g, g % 100, g * 0.25 FROM generate_series($1::int, $2::int) g`, i+1, min(i+1000, rows)); err != nil {
			return err
		}
	}
	var end string
	if err := pool.QueryRow(b.ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&end); err != nil {
		return err
	}
	recv := filepath.Join(b.cl.BinDir, "pg_recvlogical")
	start := time.Now()
	cmd := exec.Command(recv, "-d", dsn, "--slot", "recv_"+slot, "--start", "--endpos", end, "-f", "/dev/null",
		"-o", "proto_version=1", "-o", "publication_names=walhook", "--no-loop")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_recvlogical: %w: %s", err, out)
	}
	recvRate := float64(rows) / time.Since(start).Seconds()
	b.add("capture", "pg_recvlogical", recvRate, "changes/s")

	start = time.Now()
	p, err := b.start(cfg, "run", "--capture-only")
	if err != nil {
		return err
	}
	err = waitFor(5*time.Minute, 10*time.Millisecond, func() bool {
		return count(b.ctx, pool, `SELECT count(*) FROM walhook.checkpoints WHERE lsn >= '`+end+`'`) == 1
	})
	el := time.Since(start)
	rss := p.stop()
	if err != nil {
		return fmt.Errorf("%w: %s", err, p.out.String())
	}
	if n := count(b.ctx, pool, `SELECT count(*) FROM walhook.deliveries`); n != rows {
		return fmt.Errorf("%d deliveries, want %d", n, rows)
	}
	b.add("capture", "walhook run --capture-only", float64(rows)/el.Seconds(), "changes/s")
	b.add("capture", "walhook / pg_recvlogical", float64(rows)/el.Seconds()/recvRate, "x")
	b.add("capture", "walhook peak RSS", rss, "MB")
	return nil
}

// receiver answers 204 at once and reports each request's body.
func receiver(onBody func([]byte)) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if onBody != nil {
			onBody(body)
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(ln) }() // returns when closed
	return "http://" + ln.Addr().String() + "/hook", func() { srv.Close() }, nil
}

// dispatch: rows pending deliveries are sent, signed, to a local receiver.
func (b *bench) dispatch(rows int) error {
	rate, rss, err := b.drainBacklog(rows, "")
	if err != nil {
		return err
	}
	b.add("dispatch", "signed deliveries (concurrency 32)", rate, "deliveries/s")
	b.add("dispatch", "walhook peak RSS", rss, "MB")
	return nil
}

// drainBacklog enqueues rows pending deliveries (as capture leaves them)
// and returns the rate at which one `run --dispatch-only` with extra
// configuration sends them, and its peak RSS.
func (b *bench) drainBacklog(rows int, extra string) (rate, rss float64, err error) {
	url, closeRecv, err := receiver(func(body []byte) {})
	if err != nil {
		return 0, 0, err
	}
	defer closeRecv()
	pool, _, cfg, err := b.db(itemSchema, url, "dispatch: {concurrency: 32}\n"+extra)
	if err != nil {
		return 0, 0, err
	}
	defer pool.Close()
	if err := b.migrate(cfg); err != nil {
		return 0, 0, err
	}
	if err := b.backlog(pool, rows); err != nil {
		return 0, 0, err
	}
	start := time.Now()
	p, err := b.start(cfg, "run", "--dispatch-only")
	if err != nil {
		return 0, 0, err
	}
	err = waitFor(5*time.Minute, 20*time.Millisecond, func() bool {
		return count(b.ctx, pool, `SELECT count(*) FROM (SELECT 1 FROM walhook.deliveries WHERE state IN ('pending', 'parked', 'delivering') LIMIT 1) AS x`) == 0
	})
	el := time.Since(start)
	rss = p.stop()
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %s", err, p.out.String())
	}
	return float64(rows) / el.Seconds(), rss, nil
}

// tracingPhase: the dispatch backlog drained with tracing off, then with a
// span per attempt exported over OTLP/HTTP to an in-process collector that
// accepts and counts the export requests.
func (b *bench) tracingPhase(rows int) error {
	var exports atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		exports.Add(1)
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	})}
	go func() { _ = srv.Serve(ln) }() // returns when closed
	defer srv.Close()
	off, _, err := b.drainBacklog(rows, "")
	if err != nil {
		return err
	}
	on, rss, err := b.drainBacklog(rows, fmt.Sprintf("tracing: {otlp_endpoint: \"http://%s\"}\n", ln.Addr()))
	if err != nil {
		return err
	}
	b.add("tracing", "dispatch, tracing off", off, "deliveries/s")
	b.add("tracing", "dispatch, a span per attempt to an in-process OTLP collector", on, "deliveries/s")
	b.add("tracing", "on / off", on/off, "x")
	b.add("tracing", "OTLP export requests received", float64(exports.Load()), "requests")
	b.add("tracing", "walhook peak RSS with tracing", rss, "MB")
	return nil
}

// latency: single-row transactions at a steady rate through walhook run;
// commit-to-receipt is the receipt time minus the commit time in the body.
func (b *bench) latency(rate int, dur time.Duration) error {
	var mu sync.Mutex
	var lat []float64
	url, closeRecv, err := receiver(func(body []byte) {
		if ms, ok := commitToReceipt(body, time.Now()); ok {
			mu.Lock()
			lat = append(lat, ms)
			mu.Unlock()
		}
	})
	if err != nil {
		return err
	}
	defer closeRecv()
	pool, _, cfg, err := b.db(itemSchema, url, "dispatch: {concurrency: 16}\n")
	if err != nil {
		return err
	}
	defer pool.Close()
	p, err := b.startStreaming(cfg, pool, "run")
	if err != nil {
		return err
	}
	total := int(float64(rate) * dur.Seconds())
	tick := time.NewTicker(time.Second / time.Duration(rate))
	for i := 1; i <= total; i++ {
		<-tick.C
		if _, err := pool.Exec(b.ctx, `INSERT INTO item (id, name, qty) VALUES ($1, 'x', 1)`, i); err != nil {
			p.stop()
			return err
		}
	}
	tick.Stop()
	err = waitFor(time.Minute, 20*time.Millisecond, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(lat) >= total
	})
	rss := p.stop()
	if err != nil {
		return err
	}
	p50, p99, _ := percentiles(lat)
	b.add("latency", fmt.Sprintf("commit-to-receipt p50 at %d rows/s", rate), p50, "ms")
	b.add("latency", fmt.Sprintf("commit-to-receipt p99 at %d rows/s", rate), p99, "ms")
	// Where the time goes, from the outbox rows: the source commit to the
	// start of the outbox transaction that holds the row (created_at), to
	// the claim (last_attempt_at), to the outcome (delivered_at, written
	// after the receiver answered).
	for _, st := range []struct{ name, from, to string }{
		{"source commit to outbox transaction start", "d.committed_at", "d.created_at"},
		{"outbox transaction start to claim", "d.created_at", "d.last_attempt_at"},
		{"claim to request start", "d.last_attempt_at", "a.started_at"},
		{"request", "a.started_at", "a.started_at + a.duration"},
		{"request end to outcome written", "a.started_at + a.duration", "d.delivered_at"},
	} {
		var q50, q99 float64
		if err := pool.QueryRow(b.ctx, `SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)
			FROM (SELECT extract(epoch FROM `+st.to+` - `+st.from+`) * 1000 AS ms
				FROM walhook.deliveries AS d JOIN walhook.attempts AS a ON a.delivery_id = d.id
				WHERE d.state = 'delivered') AS x`).Scan(&q50, &q99); err != nil {
			return err
		}
		b.add("latency", st.name+", p50 / p99", q50, fmt.Sprintf("ms / %.2f ms", q99))
	}
	b.add("latency", "walhook peak RSS", rss, "MB")
	return nil
}

// hugeTx: one transaction of n inserts through walhook --capture-only.
func (b *bench) hugeTx(n int) error {
	pool, _, cfg, err := b.db(itemSchema, "", "")
	if err != nil {
		return err
	}
	defer pool.Close()
	p, err := b.startStreaming(cfg, pool, "run", "--capture-only")
	if err != nil {
		return err
	}
	start := time.Now()
	if _, err := pool.Exec(b.ctx, `INSERT INTO item (id, name, qty, price) SELECT g, 'item ' || g, g % 100, g * 0.25 FROM generate_series(1, $1::int) g`, n); err != nil {
		p.stop()
		return err
	}
	var end string
	if err := pool.QueryRow(b.ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&end); err != nil {
		return err
	}
	err = waitFor(10*time.Minute, 50*time.Millisecond, func() bool {
		return count(b.ctx, pool, `SELECT count(*) FROM walhook.checkpoints WHERE lsn >= '`+end+`'`) == 1
	})
	el := time.Since(start)
	rss := p.stop()
	if err != nil {
		return err
	}
	b.add("huge transaction", fmt.Sprintf("%d rows in one transaction, commit to enqueued", n), float64(n)/el.Seconds(), "changes/s")
	b.add("huge transaction", "walhook peak RSS", rss, "MB")
	return nil
}

// backlog fills the outbox with rows pending deliveries, one per object, as
// they are after capture wrote them: never vacuumed or analyzed by hand.
func (b *bench) backlog(pool *pgxpool.Pool, rows int) error {
	if _, err := pool.Exec(b.ctx, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
		SELECT 'w', 'created', 'item', g::text, '0/1'::pg_lsn + g, 0, now(),
			'{"event":"created","signal_received_timestamp":1700000000.000001,"model":"item","data":{"id":' || g || ',"name":"item ' || g || '","qty":1,"price":0.25}}'
		FROM generate_series(1, $1::int) g`, rows); err != nil {
		return err
	}
	return nil
}

// scale: for each number of processes n, n `walhook run --dispatch-only`
// processes on one outbox drain the same backlog of signed deliveries to
// one local receiver, which counts each delivery id (exactly once is
// expected: nobody is killed).
func (b *bench) scale() error {
	var counts []int
	for _, f := range strings.Split(scaleProcs, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("bad -scale-procs %q", scaleProcs)
		}
		counts = append(counts, n)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		seen[r.Header.Get("X-Walhook-Delivery")]++
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(ln) }() // returns when closed
	defer srv.Close()
	url := "http://" + ln.Addr().String() + "/hook"
	var base float64
	for _, n := range counts {
		mu.Lock()
		clear(seen)
		mu.Unlock()
		pool, _, cfg, err := b.db(itemSchema, url, fmt.Sprintf("dispatch: {concurrency: %d, poll_interval: 200ms}\n", scaleConc))
		if err != nil {
			return err
		}
		if err := b.migrate(cfg); err != nil {
			pool.Close()
			return err
		}
		if err := b.backlog(pool, scaleRows); err != nil {
			pool.Close()
			return err
		}
		fmt.Fprintf(os.Stderr, "scale: %d dispatch-only processes draining %d deliveries...\n", n, scaleRows)
		load := loadAvg()
		busy0, total0 := machineCPU()
		start := time.Now()
		var ps []*proc
		for i := 0; i < n; i++ {
			p, err := b.start(cfg, "run", "--dispatch-only")
			if err != nil {
				pool.Close()
				return err
			}
			ps = append(ps, p)
		}
		received := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(seen)
		}
		// Watch the receiver (cheap) first, then the outbox until every
		// outcome is written.
		err = waitFor(10*time.Minute, 20*time.Millisecond, func() bool { return received() >= scaleRows })
		if err == nil {
			err = waitFor(time.Minute, 20*time.Millisecond, func() bool {
				return count(b.ctx, pool, `SELECT count(*) FROM (SELECT 1 FROM walhook.deliveries WHERE state IN ('pending', 'parked', 'delivering') LIMIT 1) AS x`) == 0
			})
		}
		el := time.Since(start)
		busy1, total1 := machineCPU()
		var rss, walhookCPU float64
		var outs []string
		for _, p := range ps {
			walhookCPU += procCPU(p.cmd.Process.Pid)
			rss = max(rss, p.stop())
			outs = append(outs, p.out.String())
		}
		pool.Close()
		if err != nil {
			return fmt.Errorf("%d processes: %w: %s", n, err, strings.Join(outs, "\n"))
		}
		mu.Lock()
		dupes := 0
		for _, c := range seen {
			dupes += c - 1
		}
		mu.Unlock()
		rate := float64(scaleRows) / el.Seconds()
		if base == 0 {
			base = rate
		}
		b.add("scale", fmt.Sprintf("%d dispatch-only processes (concurrency %d each)", n, scaleConc), rate, "deliveries/s")
		b.add("scale", fmt.Sprintf("%d processes: speed-up over %d", n, counts[0]), rate/base, "x")
		b.add("scale", fmt.Sprintf("%d processes: requests sent twice", n), float64(dupes), "requests")
		b.add("scale", fmt.Sprintf("%d processes: peak RSS of one process", n), rss, "MB")
		if total1 > total0 {
			cores := float64(runtime.NumCPU())
			b.add("scale", fmt.Sprintf("%d processes: machine CPU busy", n), cores*(busy1-busy0)/(total1-total0), fmt.Sprintf("of %d cores", runtime.NumCPU()))
			b.add("scale", fmt.Sprintf("%d processes: walhook CPU (all processes)", n), walhookCPU/el.Seconds(), "cores")
		}
		// Other work on the machine skews these figures: say how busy it was.
		b.add("scale", fmt.Sprintf("%d processes: load average before", n), load, "")
	}
	return nil
}

// procCPU returns the CPU seconds (user + system) a process used so far.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseFloat(f[11], 64)
	stime, _ := strconv.ParseFloat(f[12], 64)
	return (utime + stime) / 100 // USER_HZ
}

// machineCPU returns the busy and total jiffies of all CPUs so far.
func machineCPU() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		if i >= 7 { // steal is counted, guest and guest_nice are in user already
			if i == 7 {
				total += x
				busy += x
			}
			continue
		}
		total += x
		if i != 3 && i != 4 { // idle, iowait
			busy += x
		}
	}
	return busy, total
}

// loadAvg returns the one-minute load average.
func loadAvg() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
