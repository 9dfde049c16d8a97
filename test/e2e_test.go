package test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/test/pgtest"
)

var (
	pg  *pgtest.Cluster
	bin string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "walhook-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "walhook")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/walhook").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build walhook: %v\n%s", err, out)
		os.Exit(1)
	}
	code := pgtest.Main(m, &pg)
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's database, config file and helpers.
type env struct {
	t    *testing.T
	dsn  string
	db   *pgxpool.Pool
	cfg  string
	slot string
}

func newEnv(t *testing.T, schemaSQL string) *env {
	t.Helper()
	e := &env{t: t, dsn: pg.NewDB(t)}
	db := e.dsn[strings.LastIndex(e.dsn, "/")+1:]
	db, _, _ = strings.Cut(db, "?")
	e.slot = "s_" + db
	var err error
	if e.db, err = pgxpool.New(context.Background(), e.dsn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = e.db.Exec(context.Background(), "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", e.slot)
		e.db.Close()
	})
	e.exec(schemaSQL)
	return e
}

// writeConfig writes a config with the test's DSN and slot; body holds the
// models and webhooks sections.
func (e *env) writeConfig(body string) {
	e.t.Helper()
	e.cfg = filepath.Join(e.t.TempDir(), "walhook.yaml")
	text := fmt.Sprintf("database:\n  dsn: %s\n  slot: %s\n%s\nhttp:\n  listen: \"\"\nlog:\n  level: info\n", e.dsn, e.slot, body)
	if err := os.WriteFile(e.cfg, []byte(text), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

func (e *env) count(sql string) int {
	e.t.Helper()
	var n int
	if err := e.db.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// proc is a running walhook process.
type proc struct {
	cmd *exec.Cmd
	out *bytes.Buffer
	mu  *sync.Mutex
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (e *env) start(args ...string) *proc {
	e.t.Helper()
	p := &proc{out: &bytes.Buffer{}, mu: &sync.Mutex{}}
	p.cmd = exec.Command(bin, append(args, "-c", e.cfg)...)
	p.cmd.Stdout = lockedWriter{p.mu, p.out}
	p.cmd.Stderr = lockedWriter{p.mu, p.out}
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
		if e.t.Failed() {
			e.t.Logf("walhook output:\n%s", p.output())
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("walhook exited with %v:\n%s", err, p.output())
		}
	case <-time.After(30 * time.Second):
		p.kill()
		t.Fatalf("walhook did not stop within 30s of SIGTERM:\n%s", p.output())
	}
}

func (e *env) waitFor(what string, timeout time.Duration, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) waitStreaming() {
	e.t.Helper()
	e.waitFor("the slot to become active", 30*time.Second, func() bool {
		// Held by a walsender: a slot is active too while a backend
		// creates it, before it decodes anything.
		return e.count(fmt.Sprintf("SELECT count(*) FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = '%s'", e.slot)) == 1
	})
}

func TestConfigWithSeveralMistakesNamesThemAll(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bad.yaml")
	os.WriteFile(cfg, []byte(`database:
  dsn: postgres://x@127.0.0.1:1/db
  slot: my-slot
models:
  - table: public.dcim_site
    model: Site
    colour: blue
webhooks:
  - name: a
    url: not a url
    models: [Device]
    timeout: ten seconds
  - name: a
    url: https://example.com/
    retry: {max_attempts: 0}
`), 0o600)
	cmd := exec.Command(bin, "run", "-c", cfg)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit = %v, want status 2; output:\n%s", err, out)
	}
	for _, want := range []string{
		`bad.yaml:3: database.slot "my-slot" is not a valid name`,
		`bad.yaml:7: unknown key "colour" in models[0]`,
		`bad.yaml:10: webhook "a": url`,
		`bad.yaml:11: webhook "a" names unknown model "Device"`,
		`bad.yaml:12: webhooks[0].timeout: invalid duration "ten seconds"`,
		`bad.yaml:13: duplicate webhook name "a"`,
		`bad.yaml:15: webhook "a": retry.max_attempts must be positive`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "goroutine") {
		t.Errorf("stack trace in output:\n%s", out)
	}
}

// receiver is an httptest server that verifies signatures and records
// deliveries by X-Walhook-Delivery.
type receiver struct {
	*httptest.Server
	secret string
	mu     sync.Mutex
	got    map[string]int
	bodies []string
	bad    atomic.Int64
}

func newReceiver(t *testing.T, secret string) *receiver {
	r := &receiver{secret: secret, got: map[string]int{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		mac := hmac.New(sha512.New, []byte(secret))
		mac.Write(body)
		if req.Header.Get("X-Hook-Signature") != hex.EncodeToString(mac.Sum(nil)) {
			r.bad.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		r.mu.Lock()
		r.got[req.Header.Get("X-Walhook-Delivery")]++
		r.bodies = append(r.bodies, string(body))
		r.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) distinct() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

func TestRunDeliversSignedWebhooksAndStopsCleanly(t *testing.T) {
	e := newEnv(t, `CREATE TABLE site (id int PRIMARY KEY, name text)`)
	rcv := newReceiver(t, "s3cret")
	e.writeConfig(fmt.Sprintf(`models:
  - table: site
    model: Site
webhooks:
  - name: r
    url: %s/hook
    secret: s3cret`, rcv.URL))
	p := e.start("run")
	e.waitStreaming()
	e.exec(`INSERT INTO site VALUES (1, 'a'), (2, 'b')`)
	e.exec(`UPDATE site SET name = 'c' WHERE id = 1`)
	e.exec(`DELETE FROM site WHERE id = 2`)
	e.waitFor("4 webhooks", 30*time.Second, func() bool { return rcv.distinct() == 4 })
	p.stop(t)
	if n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE state <> 'delivered'`); n != 0 {
		t.Errorf("%d deliveries not delivered after a clean stop", n)
	}
	if rcv.bad.Load() != 0 {
		t.Errorf("%d bad signatures", rcv.bad.Load())
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	want := `{"event":"created","signal_received_timestamp":`
	found := false
	for _, b := range rcv.bodies {
		if strings.HasPrefix(b, want) && strings.HasSuffix(b, `,"model":"Site","data":{"id":1,"name":"a"}}`) {
			found = true
		}
	}
	if !found {
		t.Errorf("no body creating Site 1 among %q", rcv.bodies)
	}
}

// writers runs n goroutines committing transactions of rowsPerTx inserts
// until total rows are committed, pausing between transactions, and retries
// a transaction until it is committed.
func writers(t *testing.T, dsn string, n, total, rowsPerTx int, pause time.Duration) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
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
			for {
				first := next.Add(int64(rowsPerTx)) - int64(rowsPerTx)
				if first >= int64(total) {
					return
				}
				time.Sleep(pause)
				for {
					_, err := pool.Exec(ctx, `INSERT INTO item SELECT g, 'v' FROM generate_series($1::int, $2::int) g`, first+1, first+int64(rowsPerTx))
					if err == nil {
						break
					}
					if strings.Contains(err.Error(), "duplicate key") { // committed before the error reached us
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
}

func TestSigkillDuringBurstLosesAndDuplicatesNothing(t *testing.T) {
	e := newEnv(t, `CREATE TABLE item (id int PRIMARY KEY, v text)`)
	e.writeConfig(`models:
  - table: item
webhooks:
  - name: one
    url: http://127.0.0.1:1/
  - name: two
    url: http://127.0.0.1:1/
    events: [created]`)
	const total = 10000
	p := e.start("run", "--capture-only")
	e.waitStreaming() // changes committed before the slot exists are not captured
	done := make(chan struct{})
	kills := 0
	go func() {
		defer close(done)
		writers(t, e.dsn, 4, total, 2, 3*time.Millisecond) // 5,000 transactions
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-time.After(time.Duration(100+rand.IntN(300)) * time.Millisecond):
			p.kill()
			kills++
			p = e.start("run", "--capture-only")
		}
	}
	want := 2 * total
	e.waitFor(fmt.Sprintf("%d outbox rows (have %d)", want, e.count(`SELECT count(*) FROM walhook.deliveries`)), 60*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries`) >= want
	})
	time.Sleep(500 * time.Millisecond)
	if n := e.count(`SELECT count(*) FROM walhook.deliveries`); n != want {
		t.Fatalf("%d outbox rows, want %d; missing ids: %d", n, want, e.count(`SELECT count(*) FROM item i WHERE NOT EXISTS (SELECT 1 FROM walhook.deliveries d WHERE d.object_key = i.id::text)`))
	}
	if n := e.count(`SELECT count(DISTINCT (webhook, object_key)) FROM walhook.deliveries`); n != want {
		t.Fatalf("%d distinct (webhook, object) rows, want %d: some change is missing or doubled", n, want)
	}
	t.Logf("%d transactions, %d SIGKILLs, %d rows, each change exactly once per webhook", total/2, kills, want)
	p.stop(t)
}

func TestPostgresCrashMidStream(t *testing.T) {
	e := newEnv(t, `CREATE TABLE item (id int PRIMARY KEY, v text)`)
	e.writeConfig(`models:
  - table: item
webhooks:
  - name: one
    url: http://127.0.0.1:1/`)
	p := e.start("run", "--capture-only")
	e.waitStreaming()
	const total = 6000
	done := make(chan struct{})
	go func() {
		defer close(done)
		writers(t, e.dsn, 3, total, 10, 5*time.Millisecond)
	}()
	time.Sleep(300 * time.Millisecond)
	if err := pg.Stop(true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := pg.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		t.Fatal("the writers finished before the crash; slow them down")
	default:
	}
	<-done
	e.db.Reset()
	committed := e.count(`SELECT count(*) FROM item`)
	if committed != total {
		t.Fatalf("%d rows committed, want %d", committed, total)
	}
	e.waitFor("outbox to catch up", 90*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries`) >= total
	})
	time.Sleep(500 * time.Millisecond)
	if n := e.count(`SELECT count(*) FROM walhook.deliveries`); n != total {
		t.Fatalf("%d outbox rows, want %d", n, total)
	}
	if n := e.count(`SELECT count(DISTINCT object_key) FROM walhook.deliveries`); n != total {
		t.Fatalf("%d distinct objects, want %d", n, total)
	}
	if p.cmd.ProcessState != nil {
		t.Fatal("walhook exited during the PostgreSQL crash")
	}
	p.stop(t)
}

func TestDemoOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "demo", "--once").CombinedOutput()
	if err != nil {
		t.Fatalf("walhook demo --once: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "signature verified"); n != 5 {
		t.Errorf("%d verified webhooks printed, want 5:\n%s", n, out)
	}
	if !strings.Contains(string(out), "all 5 webhooks delivered and verified") {
		t.Errorf("no final line:\n%s", out)
	}
}
