package test

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// secretReceiver answers 500 while failing is set, 204 otherwise, and
// records which of its secrets signed each request, in order.
type secretReceiver struct {
	*httptest.Server
	secrets []string
	failing atomic.Bool
	mu      sync.Mutex
	signers []string // per request: the secret that verifies it, or "?"
}

func newSecretReceiver(t *testing.T, secrets ...string) *secretReceiver {
	r := &secretReceiver{secrets: secrets}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		signer := "?"
		for _, s := range r.secrets {
			mac := hmac.New(sha512.New, []byte(s))
			mac.Write(body)
			if req.Header.Get("X-Hook-Signature") == hex.EncodeToString(mac.Sum(nil)) {
				signer = s
			}
		}
		r.mu.Lock()
		r.signers = append(r.signers, signer)
		r.mu.Unlock()
		if r.failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *secretReceiver) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.signers...)
}

// rewriteConfig replaces the file of writeWebConfig, keeping its path.
func (e *env) rewriteConfig(text string) {
	e.t.Helper()
	if err := os.WriteFile(e.cfg, []byte(text), 0o600); err != nil {
		e.t.Fatal(err)
	}
}

// logLines returns the process's JSON log lines whose message starts with
// prefix.
func logLines(p *proc, prefix string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.output()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil {
			if m, _ := line["message"].(string); strings.HasPrefix(m, prefix) {
				out = append(out, line)
			}
		}
	}
	return out
}

// Under a continuous write load, SIGHUP and POST /-/reload change the
// running configuration: a rotated secret signs the next attempt, an added
// webhook gets every change from the logged commit LSN on and none before;
// a reload with a mistake, or one changing a key that needs a restart, is
// refused, keeps the old configuration and sets the metric to 0.
func TestReloadUnderLoad(t *testing.T) {
	e := newEnv(t, `CREATE TABLE site (id bigserial PRIMARY KEY, name text)`)
	a := newSecretReceiver(t, "s1", "s2")
	b := newSecretReceiver(t, "s2")
	const token = "reload-test-token"
	hooks := func(secret string, withB bool, aURL string) string {
		s := fmt.Sprintf(`models:
  - table: site
    model: Site
webhooks:
  - name: a
    url: %s/hook
    secret: %s
    retry: {max_attempts: 50, initial_interval: 500ms, max_interval: 500ms}`, aURL, secret)
		if withB {
			s += fmt.Sprintf(`
  - name: b
    url: %s/hook
    secret: s2`, b.URL)
		}
		return s
	}
	e.writeWebConfig(hooks("s1", false, a.URL), token)
	configText := func(body string) string {
		return fmt.Sprintf("database:\n  dsn: %s\n  slot: %s\n%s\nhttp:\n  listen: 127.0.0.1:0\n  token: %q\nlog:\n  level: info\n", e.dsn, e.slot, body, token)
	}
	p := e.start("run")
	base := e.httpAddr(p)
	e.waitStreaming()

	// One change that keeps failing, signed with s1.
	a.failing.Store(true)
	e.exec(`INSERT INTO site (name) VALUES ('first')`)
	e.waitFor("a first attempt", 30*time.Second, func() bool { return len(a.requests()) > 0 })
	if got := a.requests()[0]; got != "s1" {
		t.Fatalf("first attempt signed with %q, want s1", got)
	}

	// A continuous write load from here on.
	stop := make(chan struct{})
	var wrote atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := e.db.Exec(context.Background(), `INSERT INTO site (name) VALUES ($1)`, fmt.Sprint("n", i)); err != nil {
				t.Errorf("load: %v", err)
				return
			}
			wrote.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(500 * time.Millisecond)

	// Rotate a's secret and add webhook b, by SIGHUP.
	e.rewriteConfig(configText(hooks("s2", true, a.URL)))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var reloaded map[string]any
	e.waitFor("the reload", 30*time.Second, func() bool {
		ls := logLines(p, "configuration reloaded")
		if len(ls) > 0 {
			reloaded = ls[0]
		}
		return reloaded != nil
	})
	t.Logf("reload: %v", reloaded)
	// Attempts the old dispatcher started before the reload may still be
	// on their way to the receiver for a moment.
	time.Sleep(200 * time.Millisecond)
	n0 := len(a.requests())
	from, err := pglogrepl.ParseLSN(fmt.Sprint(reloaded["from_commit_lsn"]))
	if err != nil {
		t.Fatalf("reload log line without from_commit_lsn: %v", reloaded)
	}
	if msg := fmt.Sprint(reloaded["message"]); !strings.Contains(msg, "webhooks added: b") || !strings.Contains(msg, "webhooks changed: a") || strings.Contains(msg, "s2") {
		t.Errorf("reload log line: %q", msg)
	}
	// The next attempts are signed with the new secret.
	e.waitFor("two attempts after the reload", 30*time.Second, func() bool { return len(a.requests()) >= n0+2 })
	for i, s := range a.requests()[n0:] {
		if s != "s2" {
			t.Fatalf("attempt %d after the reload signed with %q, want s2", i, s)
		}
	}
	a.failing.Store(false)
	time.Sleep(500 * time.Millisecond)

	// A mistake: refused, the old configuration stays, the metric is 0.
	e.rewriteConfig(configText(hooks("s2", true, "not a url")))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the refused reload", 30*time.Second, func() bool { return len(logLines(p, "configuration reload failed")) == 1 })
	if msg := fmt.Sprint(logLines(p, "configuration reload failed")[0]["message"]); !strings.Contains(msg, "walhook.yaml:") || !strings.Contains(msg, "url") {
		t.Errorf("refused reload's log line names no file:line: %q", msg)
	}
	metric := func() string {
		_, body := get(t, base+"/metrics", token)
		for _, l := range strings.Split(body, "\n") {
			if strings.HasPrefix(l, "walhook_config_last_reload_successful ") {
				return strings.TrimPrefix(l, "walhook_config_last_reload_successful ")
			}
		}
		return "missing"
	}
	if v := metric(); v != "0" {
		t.Errorf("walhook_config_last_reload_successful = %s after a refused reload", v)
	}

	// A key that needs a restart, over HTTP: refused by name.
	moved := strings.Replace(configText(hooks("s2", true, a.URL)), "slot: "+e.slot, "slot: "+e.slot+"_other", 1)
	e.rewriteConfig(moved)
	req, _ := http.NewRequest("POST", base+"/-/reload", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "database.slot") {
		t.Errorf("reload changing the slot: %s %s", resp.Status, body)
	}

	// The same file as running, over HTTP: fine again.
	e.rewriteConfig(configText(hooks("s2", true, a.URL)))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("reload of the running configuration: %s %s", resp.Status, body)
	}
	if v := metric(); v != "1" {
		t.Errorf("walhook_config_last_reload_successful = %s after a good reload", v)
	}

	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	total := int(wrote.Load()) + 1
	e.waitFor("every change delivered to a", 60*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE webhook = 'a' AND state = 'delivered'`) == total
	})
	e.waitFor("b's deliveries delivered", 60*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE webhook = 'b' AND state <> 'delivered'`) == 0
	})
	if n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE webhook = 'a'`); n != total {
		t.Errorf("webhook a has %d rows for %d changes", n, total)
	}
	before := e.count(fmt.Sprintf(`SELECT count(*) FROM walhook.deliveries WHERE webhook = 'b' AND commit_lsn < '%s'`, from))
	missing := e.count(fmt.Sprintf(`SELECT count(*) FROM walhook.deliveries x WHERE webhook = 'a' AND commit_lsn >= '%s'
		AND NOT EXISTS (SELECT 1 FROM walhook.deliveries y WHERE y.webhook = 'b' AND y.commit_lsn = x.commit_lsn AND y.seq = x.seq)`, from))
	after := e.count(fmt.Sprintf(`SELECT count(*) FROM walhook.deliveries WHERE webhook = 'a' AND commit_lsn >= '%s'`, from))
	if before != 0 || missing != 0 || after == 0 || after == total {
		t.Errorf("webhook b: %d rows before %s, %d changes after it missing (of %d after, %d in all)", before, from, missing, after, total)
	}
	p.stop(t)
}

// Twenty reloads by SIGHUP during a burst, each adding or removing webhook
// x and changing a model's rendering: the unchanged webhook's receiver
// gets every change exactly once (each reload replaces the dispatcher and
// switches capture at a commit LSN).
func TestTwentyReloadsDuringBurstDeliverEachChangeOnce(t *testing.T) {
	e := newEnv(t, `CREATE TABLE item (id int PRIMARY KEY, v text)`)
	rcv := newReceiver(t, "s3cret")
	x := newReceiver(t, "x")
	body := func(i int) string {
		s := fmt.Sprintf(`models:
  - table: item
    model: Item%s
webhooks:
  - name: a
    url: %s/hook
    secret: s3cret`, map[bool]string{true: "\n    exclude: [v]", false: ""}[i%3 == 1], rcv.URL)
		if i%2 == 1 {
			s += fmt.Sprintf(`
  - name: x
    url: %s/hook
    secret: x`, x.URL)
		}
		return s
	}
	e.writeConfig(body(0))
	cfgText, err := os.ReadFile(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := e.start("run")
	e.waitStreaming()
	// A burst from before the first reload until after the last.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i += 2 {
				select {
				case <-stop:
					return
				default:
				}
				time.Sleep(3 * time.Millisecond)
				id := w*10_000_000 + i
				if _, err := e.db.Exec(context.Background(), `INSERT INTO item VALUES ($1, 'v'), ($1 + 1, 'v')`, id); err != nil {
					t.Errorf("burst: %v", err)
					return
				}
			}
		}()
	}
	for i := 1; i <= 20; i++ {
		time.Sleep(100 * time.Millisecond)
		e.rewriteConfig(strings.Replace(string(cfgText), body(0), body(i), 1))
		if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		e.waitFor(fmt.Sprintf("reload %d", i), 30*time.Second, func() bool { return len(logLines(p, "configuration reloaded")) == i })
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	total := e.count(`SELECT count(*) FROM item`)
	if n := len(logLines(p, "configuration reload failed")); n != 0 {
		t.Fatalf("%d reloads failed", n)
	}
	e.waitFor("every change delivered to a", 90*time.Second, func() bool { return rcv.distinct() == total })
	time.Sleep(500 * time.Millisecond)
	rcv.mu.Lock()
	dups := 0
	for _, n := range rcv.got {
		if n != 1 {
			dups++
		}
	}
	got := len(rcv.got)
	rcv.mu.Unlock()
	if got != total || dups != 0 || rcv.bad.Load() != 0 {
		t.Fatalf("webhook a: %d distinct deliveries of %d changes, %d sent more than once, %d bad signatures", got, total, dups, rcv.bad.Load())
	}
	if n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE webhook = 'a'`); n != total {
		t.Fatalf("webhook a has %d outbox rows for %d changes", n, total)
	}
	t.Logf("%d changes, 20 reloads, webhook x got %d", total, x.distinct())
	p.stop(t)
}
