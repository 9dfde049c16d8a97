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
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/test/pgtest"
)

// The README's quick start, followed as a new user would on a server set up
// as a distribution packages it: scram-sha-256 passwords in pg_hba.conf,
// wal_level = replica, and an application role that owns its database and
// tables. Every statement and command comes from the README, from
// docs/operations.md (removal) or from what walhook check prints; the test
// changes only the host and port, the receiver's URL and http.listen.
func TestQuickStartOnAPackagedServer(t *testing.T) {
	ctx := context.Background()
	cl, err := pgtest.Start(ctx, pgtest.Options{PasswordAuth: true, Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const walhookPassword, appPassword = "walhook-pw-1", "app-pw-1"
	dsnAs := func(user, password string) string {
		return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/app?sslmode=disable", user, password, cl.Port)
	}
	connect := func(dsn string) *pgx.Conn {
		t.Helper()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(ctx) })
		return conn
	}
	exec := func(conn *pgx.Conn, sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	// The application: role app owns database app and its table.
	super := connect(cl.DSN("postgres"))
	exec(super, "CREATE ROLE app LOGIN PASSWORD '"+appPassword+"'")
	exec(super, "CREATE DATABASE app OWNER app")
	app := connect(dsnAs("app", appPassword))
	exec(app, "CREATE TABLE public.dcim_site (id serial PRIMARY KEY, name text NOT NULL, slug text)")

	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	quick := section(t, string(readme), "## Quick start", "## Commands")
	sqlBlocks := codeBlocks(quick, "sql")
	yamlBlocks := codeBlocks(quick, "yaml")
	if len(sqlBlocks) != 2 || len(yamlBlocks) != 1 {
		t.Fatalf("the quick start has %d sql and %d yaml blocks, want 2 and 1", len(sqlBlocks), len(yamlBlocks))
	}

	// Step 1, as a superuser, in database app.
	superApp := connect(cl.DSN("app"))
	for _, stmt := range statements(sqlBlocks[0]) {
		exec(superApp, strings.Replace(stmt, "PASSWORD '...'", "PASSWORD '"+walhookPassword+"'", 1))
	}

	// Step 2: walhook.yaml.
	var mu sync.Mutex
	secret := hex.EncodeToString([]byte("quick start secret, 32 bytes...."))
	receiverSecret := secret
	var lastBody []byte
	var lastSig string
	received := 0
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		mac := hmac.New(sha512.New, []byte(receiverSecret))
		mac.Write(body)
		if !hmac.Equal([]byte(hex.EncodeToString(mac.Sum(nil))), []byte(r.Header.Get("X-Hook-Signature"))) {
			http.Error(w, "bad signature", http.StatusUnauthorized) // as examples/receiver answers
			return
		}
		lastBody, lastSig = body, r.Header.Get("X-Hook-Signature")
		received++
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()
	yaml := yamlBlocks[0]
	for old, repl := range map[string]string{"localhost:5432": fmt.Sprintf("127.0.0.1:%d", cl.Port), "http://127.0.0.1:8080/hook": rcv.URL + "/hook"} {
		if !strings.Contains(yaml, old) {
			t.Fatalf("the quick start's walhook.yaml lacks %q:\n%s", old, yaml)
		}
		yaml = strings.Replace(yaml, old, repl, 1)
	}
	cfg := filepath.Join(t.TempDir(), "walhook.yaml")
	writeFile := func(text string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(text+"http:\n  listen: \"\"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(yaml)

	// Step 3. Without the password first: check says where it goes.
	noPassword := []string{"PGPASSFILE=" + filepath.Join(t.TempDir(), "no-pgpass"), "PGPASSWORD=", "WALHOOK_SECRET=" + secret}
	walhook := func(stdin string, args ...string) opsResult {
		t.Helper()
		return runWalhook(t, append(noPassword, "PGPASSWORD="+walhookPassword), stdin, args...)
	}
	r := runWalhook(t, noPassword, "", "check", "-c", cfg)
	if line := checkLine(t, r.stdout, "source database"); r.code != 1 || !strings.Contains(line, "no password was given") ||
		!strings.Contains(line, "PGPASSWORD") || !strings.Contains(line, "~/.pgpass") || !strings.Contains(line, "${WALHOOK_DSN}") {
		t.Errorf("check without a password:\n%s", r)
	}

	// With it, before PostgreSQL restarted: the ALTER SYSTEM, then (once the
	// server reloaded its files) "set; restart PostgreSQL".
	r = walhook("", "check", "-c", cfg)
	if fix := fixOf(r.stdout, "wal_level"); r.code != 1 || !strings.HasPrefix(fix, "ALTER SYSTEM SET wal_level = logical;") {
		t.Errorf("check before the restart:\n%s", r)
	}
	exec(super, "SELECT pg_reload_conf()")
	waitUntil(t, "the reload", func() bool {
		var pending bool
		return super.QueryRow(ctx, "SELECT pending_restart FROM pg_settings WHERE name = 'wal_level'").Scan(&pending) == nil && pending
	})
	r = walhook("", "check", "-c", cfg)
	if fix := fixOf(r.stdout, "wal_level"); r.code != 1 || !strings.HasPrefix(fix, "-- set; restart PostgreSQL") {
		t.Errorf("check after ALTER SYSTEM and a reload:\n%s", r)
	}
	if err := cl.Stop(false); err != nil {
		t.Fatal(err)
	}
	if err := cl.Start(ctx); err != nil {
		t.Fatal(err)
	}
	super, app, superApp = connect(cl.DSN("postgres")), connect(dsnAs("app", appPassword)), connect(cl.DSN("app"))

	// The application owns the table: check asks for the publication, with
	// the README's statement, to run as the owner.
	r = walhook("", "check", "-c", cfg)
	if r.code != 1 || strings.Count(r.stdout, "\nFAIL") != 1 {
		t.Fatalf("check after the restart: want exactly the publication to FAIL:\n%s", r)
	}
	line := checkLine(t, r.stdout, "publication walhook")
	fix := fixOf(r.stdout, "publication walhook")
	if !strings.HasPrefix(line, "FAIL") || !strings.Contains(fix, "as the tables' owner") || normalizeSQL(fix) != normalizeSQL(sqlBlocks[1]) {
		t.Fatalf("publication check %q, fix:\n%s\nwant the README's:\n%s", line, fix, sqlBlocks[1])
	}
	for _, stmt := range statements(sqlBlocks[1]) {
		exec(app, stmt)
	}
	r = walhook("", "check", "-c", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "Ready to run") ||
		!strings.Contains(checkLine(t, r.stdout, "publication walhook"), "publishes exactly the 1 configured table (") {
		t.Fatalf("check with the publication:\n%s", r)
	}

	// Run; a change is delivered, signed.
	p := startWalhook(t, append(noPassword, "PGPASSWORD="+walhookPassword), "run", "-c", cfg)
	waitSlot := func() {
		t.Helper()
		waitUntil(t, "the slot to be read", func() bool {
			var n int
			return superApp.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walhook' AND active").Scan(&n) == nil && n == 1
		})
	}
	waitSlot()
	exec(app, "INSERT INTO dcim_site (name, slug) VALUES ('ams1', 'ams1')")
	waitUntil(t, "the first delivery", func() bool { mu.Lock(); defer mu.Unlock(); return received == 1 })
	mu.Lock()
	body, sig := string(lastBody), lastSig
	mu.Unlock()
	if !strings.Contains(body, `"event":"created"`) || !strings.Contains(body, `"name":"ams1"`) {
		t.Errorf("body %s", body)
	}
	if r := walhook("", "status", "-c", cfg); r.code != 0 || !regexp.MustCompile(`(?m)^inventory\s+enabled\s+0\s+0\s+1\s+0\s`).MatchString(r.stdout) {
		t.Errorf("status after one delivery:\n%s", r)
	}
	if r := walhook(body, "verify", "-c", cfg, "--signature", sig); r.code != 0 || !strings.Contains(r.stdout, "OK") {
		t.Errorf("verify -c with the one webhook:\n%s", r)
	}

	// The failure path as the README says: retry: {max_attempts: 1}, a
	// restart, a receiver with another secret.
	p.stop(t)
	withRetry := strings.Replace(yaml, "    secret: ${WALHOOK_SECRET}", "    secret: ${WALHOOK_SECRET}\n    retry: {max_attempts: 1}", 1)
	if withRetry == yaml || !strings.Contains(quick, "`retry: {max_attempts: 1}`") {
		t.Fatal("the quick start no longer says to set retry: {max_attempts: 1}")
	}
	writeFile(withRetry)
	mu.Lock()
	receiverSecret = "another secret"
	mu.Unlock()
	p = startWalhook(t, append(noPassword, "PGPASSWORD="+walhookPassword), "run", "-c", cfg)
	waitSlot()
	exec(app, "INSERT INTO dcim_site (name, slug) VALUES ('fra1', 'fra1')")
	var failedID int64
	waitUntil(t, "the delivery to fail", func() bool {
		return superApp.QueryRow(ctx, "SELECT id FROM walhook.deliveries WHERE state = 'failed'").Scan(&failedID) == nil
	})
	if r := walhook("", "status", "-c", cfg); r.code != 0 || !regexp.MustCompile(`(?m)^inventory\s+enabled\s+0\s+0\s+1\s+1\s.*HTTP 401: bad signature`).MatchString(r.stdout) {
		t.Errorf("status after a failure:\n%s", r)
	}
	if r := walhook("", "deliveries", "-c", cfg, "--state", "failed"); r.code != 0 || !strings.Contains(r.stdout, "HTTP 401: bad signature") {
		t.Errorf("deliveries --state failed:\n%s", r)
	}
	if r := walhook("", "deliveries", "-c", cfg, "show", fmt.Sprint(failedID)); r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("walhook retry --id %d", failedID)) {
		t.Errorf("deliveries -c FILE show ID:\n%s", r)
	}
	mu.Lock()
	receiverSecret = secret
	mu.Unlock()
	if r := walhook("", "retry", "-c", cfg, "--all-failed"); r.code != 0 || !strings.Contains(r.stdout, "re-queued 1 deliveries") {
		t.Errorf("retry --all-failed:\n%s", r)
	}
	waitUntil(t, "the retried delivery", func() bool { mu.Lock(); defer mu.Unlock(); return received == 2 })

	// Removal, as docs/operations.md says: stop walhook first, then each
	// group of statements as the role it names.
	p.stop(t)
	waitUntil(t, "the slot to be released", func() bool {
		var n int
		return superApp.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE active").Scan(&n) == nil && n == 0
	})
	ops, err := os.ReadFile("../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	removal := codeBlocks(section(t, string(ops), "### Removing walhook", "\n## "), "sql")
	if len(removal) != 1 {
		t.Fatalf("docs/operations.md's removal has %d sql blocks, want 1", len(removal))
	}
	groups := regexp.MustCompile(`(?m)^-- \d\. .*$`).Split(removal[0], -1)[1:]
	if len(groups) != 3 {
		t.Fatalf("the removal has %d numbered groups, want 3:\n%s", len(groups), removal[0])
	}
	walhookConn := connect(dsnAs("walhook", walhookPassword))
	for i, conn := range []*pgx.Conn{walhookConn, app, superApp} { // as walhook; as the publication's owner; as a superuser
		for _, stmt := range statements(groups[i]) {
			exec(conn, stmt)
		}
		if i == 0 {
			walhookConn.Close(ctx) // DROP ROLE needs its sessions gone
		}
	}
	var left int
	if err := superApp.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)
		+ (SELECT count(*) FROM pg_namespace WHERE nspname = 'walhook') + (SELECT count(*) FROM pg_roles WHERE rolname = 'walhook')`).Scan(&left); err != nil || left != 0 {
		t.Errorf("after the removal %d slots, publications, schemas and roles are left (%v)", left, err)
	}
}

// section is the part of text from the line starting with start up to the
// next occurrence of end.
func section(t *testing.T, text, start, end string) string {
	t.Helper()
	i := strings.Index(text, "\n"+start)
	if i < 0 {
		t.Fatalf("no %q", start)
	}
	text = text[i+1:]
	if j := strings.Index(text[len(start):], end); j >= 0 {
		return text[:len(start)+j]
	}
	return text
}

// codeBlocks returns the fenced code blocks of language lang in text.
func codeBlocks(text, lang string) []string {
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```"+lang+"\n(.*?)```").FindAllStringSubmatch(text, -1) {
		blocks = append(blocks, m[1])
	}
	return blocks
}

// statements splits SQL into statements, without -- comments.
func statements(sql string) []string {
	var b strings.Builder
	for _, line := range strings.Split(sql, "\n") {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i]
		}
		b.WriteString(line + "\n")
	}
	var out []string
	for _, s := range strings.Split(b.String(), ";") {
		if s = strings.Join(strings.Fields(s), " "); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// normalizeSQL is sql's statements without comments, quotes around
// identifiers or extra white space.
func normalizeSQL(sql string) string {
	return strings.ReplaceAll(strings.Join(statements(sql), "; "), `"`, "")
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runWalhook runs walhook with args, the extra environment and stdin, and
// waits for it.
func runWalhook(t *testing.T, env []string, stdin string, args ...string) opsResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := opsResult{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("walhook %v: %v", args, err)
	}
	return r
}

// startWalhook starts a long-running walhook with the extra environment.
func startWalhook(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{out: &bytes.Buffer{}, mu: &sync.Mutex{}}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout = lockedWriter{p.mu, p.out}
	p.cmd.Stderr = lockedWriter{p.mu, p.out}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Signal(syscall.SIGKILL)
			_ = p.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("walhook output:\n%s", p.output())
		}
	})
	return p
}
