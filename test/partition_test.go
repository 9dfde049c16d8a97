package test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/walhook/walhook/test/netproxy"
)

// TestDeadNetworkPathIsReportedAndHealed reaches PostgreSQL through a proxy
// that stops moving bytes without closing anything (the replication stream,
// the outbox and source pools, LISTEN: every connection), as a NAT or a dead
// route does. /readyz must keep answering within a second and report the
// dead path within 40 s; once the path heals (the frozen connections stay
// frozen for good, new ones work), every committed row is delivered with no
// restart by hand; and a walhook stopped while the path is dead exits.
func TestDeadNetworkPathIsReportedAndHealed(t *testing.T) {
	e := newEnv(t, `CREATE TABLE item (id int PRIMARY KEY, v text)`)
	px, proxied := netproxy.ForDSN(t, e.dsn)
	rcv := newReceiver(t, "s3cret")
	e.cfg = filepath.Join(t.TempDir(), "walhook.yaml")
	cfg := fmt.Sprintf(`database:
  dsn: %s
  slot: %s
models:
  - table: item
    model: Item
webhooks:
  - name: r
    url: %s/hook
    secret: s3cret
http:
  listen: 127.0.0.1:0
log:
  level: info
`, proxied, e.slot, rcv.URL)
	if err := os.WriteFile(e.cfg, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	insert := func(from, to int) {
		for id := from; id <= to; id++ {
			e.exec("INSERT INTO item VALUES ($1, 'x')", id)
		}
	}
	probe := &http.Client{Timeout: time.Second}
	// readyz returns /readyz's status, failing the test if it does not
	// answer within a second.
	readyz := func(base string) int {
		t.Helper()
		resp, err := probe.Get(base + "/readyz")
		if err != nil {
			t.Fatalf("/readyz gave no answer within a second: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	p := e.start("run")
	base := e.httpAddr(p)
	e.waitStreaming()
	e.waitFor("/readyz to say ready", 30*time.Second, func() bool { return readyz(base) == http.StatusOK })
	insert(1, 100)
	e.waitFor("the first 100 rows delivered", 60*time.Second, func() bool { return rcv.distinct() == 100 })

	px.Freeze()
	frozenAt := time.Now()
	insert(101, 200)
	var reported time.Duration
	for reported == 0 {
		if readyz(base) == http.StatusServiceUnavailable {
			reported = time.Since(frozenAt)
			break
		}
		if time.Since(frozenAt) > 40*time.Second {
			t.Fatalf("/readyz still says ready %s after the path went dead", time.Since(frozenAt).Round(time.Second))
		}
		if resp, err := probe.Get(base + "/healthz"); err != nil {
			t.Fatalf("/healthz gave no answer within a second: %v", err)
		} else {
			resp.Body.Close()
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Stay dead a little longer: reconnection attempts run into it too.
	for time.Since(frozenAt) < reported+5*time.Second {
		if readyz(base) != http.StatusServiceUnavailable {
			t.Fatal("/readyz said ready again while the path was still dead")
		}
		time.Sleep(500 * time.Millisecond)
	}

	px.Heal()
	healedAt := time.Now()
	insert(201, 300)
	e.waitFor("all 300 rows delivered after the path healed", 150*time.Second, func() bool { return rcv.distinct() == 300 })
	delivered := time.Since(healedAt)
	e.waitFor("/readyz to say ready again", 30*time.Second, func() bool { return readyz(base) == http.StatusOK })
	if n := e.count(`SELECT count(*) FROM walhook.deliveries`); n != 300 {
		t.Errorf("%d delivery rows, want 300 (one per committed row)", n)
	}
	if rcv.bad.Load() != 0 {
		t.Errorf("%d bad signatures", rcv.bad.Load())
	}
	t.Logf("/readyz reported the dead path %s after it went dead; every row delivered %s after it healed",
		reported.Round(100*time.Millisecond), delivered.Round(100*time.Millisecond))

	// A stop while the path is dead finishes.
	px.Freeze()
	time.Sleep(2 * time.Second)
	stopAt := time.Now()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("walhook exited with %v after SIGTERM on a dead path", err)
		}
		t.Logf("stopped %s after SIGTERM on a dead path", time.Since(stopAt).Round(100*time.Millisecond))
	case <-time.After(90 * time.Second):
		p.kill()
		t.Fatalf("walhook did not stop within 90s of SIGTERM on a dead path")
	}
}
