package test

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
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
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/walhook/walhook/internal/tracecontext"
	"github.com/walhook/walhook/test/pgtest"
)

// opsResult is the outcome of one short walhook command.
type opsResult struct {
	stdout, stderr string
	code           int
}

func (r opsResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// opsRun runs walhook with args and -c cfg and waits for it.
func opsRun(t *testing.T, cfg string, args ...string) opsResult {
	t.Helper()
	return opsRunEnv(t, nil, cfg, args...)
}

// opsRunEnv is opsRun with extra environment variables (NAME=value).
func opsRunEnv(t *testing.T, env []string, cfg string, args ...string) opsResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "-c", cfg)...)
	cmd.Env = append(os.Environ(), env...)
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
	for _, s := range []string{r.stdout, r.stderr} {
		if strings.Contains(s, "goroutine ") || strings.Contains(s, "panic:") {
			t.Fatalf("walhook %v crashed:\n%s", args, r)
		}
	}
	return r
}

// checkLine returns the output line of check name, which must exist.
func checkLine(t *testing.T, out, name string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^(OK|WARN|FAIL)\s+` + regexp.QuoteMeta(name) + `\s.*$`)
	line := re.FindString(out)
	if line == "" {
		t.Fatalf("no line for check %q in:\n%s", name, out)
	}
	return line
}

// fixOf returns the fix (or tip) lines printed under check name, each
// trimmed.
func fixOf(out, name string) string {
	head := regexp.MustCompile(`^(OK|WARN|FAIL)\s+` + regexp.QuoteMeta(name) + `\s`)
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if !head.MatchString(l) {
			continue
		}
		var fix []string
		for _, next := range lines[i+1:] {
			if !strings.HasPrefix(next, "      ") {
				break
			}
			next = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(next), "fix:"), "tip:")
			fix = append(fix, strings.TrimSpace(next))
		}
		return strings.Join(fix, "\n")
	}
	return ""
}

type checkJSON struct {
	OK     bool `json:"ok"`
	Checks []struct {
		Name   string `json:"name"`
		Status string `json:"status"`
		Detail string `json:"detail"`
		Fix    string `json:"fix"`
	} `json:"checks"`
}

func TestCheckWalLevelReplicaFailsWithTheFix(t *testing.T) {
	ctx := context.Background()
	cl, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	dsn, err := cl.CreateDB(ctx, "walreplica")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE site (id int PRIMARY KEY, name text)"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	cfg := filepath.Join(t.TempDir(), "walhook.yaml")
	os.WriteFile(cfg, fmt.Appendf(nil, "database:\n  dsn: %s\nmodels:\n  - table: site\nwebhooks:\n  - name: r\n    url: http://127.0.0.1:1/\nhttp:\n  listen: \"\"\n", dsn), 0o600)

	r := opsRun(t, cfg, "check")
	if r.code != 1 {
		t.Fatalf("want exit 1:\n%s", r)
	}
	if line := checkLine(t, r.stdout, "wal_level"); !strings.HasPrefix(line, "FAIL") || !strings.Contains(line, `"replica"`) {
		t.Errorf("wal_level line: %s", line)
	}
	if fix := fixOf(r.stdout, "wal_level"); !strings.HasPrefix(fix, "ALTER SYSTEM SET wal_level = logical;") || !strings.Contains(fix, "restart") {
		t.Errorf("wal_level fix %q\n%s", fix, r.stdout)
	}
	if !strings.Contains(r.stderr, "check failed") || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 {
		t.Errorf("stderr: %q", r.stderr)
	}

	// The fix applied, PostgreSQL not restarted yet: check says so instead
	// of printing the same ALTER SYSTEM again (a superuser sees the file).
	if conn, err = pgx.Connect(ctx, dsn); err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "ALTER SYSTEM SET wal_level = logical"); err != nil {
		t.Fatal(err)
	}
	r = opsRun(t, cfg, "check")
	if line := checkLine(t, r.stdout, "wal_level"); r.code != 1 || !strings.HasPrefix(line, "FAIL") || !strings.Contains(line, "takes effect only when PostgreSQL restarts") {
		t.Errorf("wal_level line after ALTER SYSTEM: %s", line)
	}
	if fix := fixOf(r.stdout, "wal_level"); !strings.HasPrefix(fix, "-- set; restart PostgreSQL") || strings.Contains(fix, "ALTER SYSTEM") {
		t.Errorf("wal_level fix after ALTER SYSTEM %q", fix)
	}
}

func TestCheckNamesTheReplicaIdentityFix(t *testing.T) {
	e := newEnv(t, `CREATE TABLE nopk (a int, b text); CREATE TABLE site (id int PRIMARY KEY, name text)`)
	e.writeConfig("models:\n  - table: nopk\n  - table: site\nwebhooks:\n  - name: r\n    url: http://127.0.0.1:1/")
	r := opsRun(t, e.cfg, "check")
	if r.code != 1 {
		t.Fatalf("want exit 1:\n%s", r)
	}
	if line := checkLine(t, r.stdout, "replica identity public.nopk"); !strings.HasPrefix(line, "FAIL") || !strings.Contains(line, "no primary key") {
		t.Errorf("nopk: %s", line)
	}
	if fix := fixOf(r.stdout, "replica identity public.nopk"); !strings.HasPrefix(fix, `ALTER TABLE "public"."nopk" REPLICA IDENTITY FULL;`) {
		t.Errorf("nopk fix %q", fix)
	}
	if line := checkLine(t, r.stdout, "replica identity public.site"); !strings.HasPrefix(line, "WARN") || !strings.Contains(line, "only the primary key (id)") {
		t.Errorf("site: %s", line)
	}
	if fix := fixOf(r.stdout, "replica identity public.site"); !strings.HasPrefix(fix, `ALTER TABLE "public"."site" REPLICA IDENTITY FULL;`) {
		t.Errorf("site fix %q", fix)
	}
	if n := strings.Count(r.stdout, "\nFAIL"); n != 1 {
		t.Errorf("%d FAIL lines, want 1:\n%s", n, r.stdout)
	}

	// The same as JSON; and after the fix the check passes with a warning.
	r = opsRun(t, e.cfg, "check", "--json")
	var rep checkJSON
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 1 || rep.OK {
		t.Fatalf("check --json: %v\n%s", err, r)
	}
	e.exec(`ALTER TABLE nopk REPLICA IDENTITY FULL`)
	r = opsRun(t, e.cfg, "check")
	if r.code != 0 || !strings.Contains(r.stdout, "Ready to run (1 warning).") {
		t.Fatalf("after the fix:\n%s", r)
	}
}

func TestCheckGoodSetupPasses(t *testing.T) {
	e := newEnv(t, `CREATE TABLE site (id int PRIMARY KEY, name text, comments text); ALTER TABLE site REPLICA IDENTITY FULL`)
	// An HTTPS receiver with a certificate from its own CA: check makes
	// one TLS handshake with it (and sends no request).
	receiver := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		t.Error("check sent a request to the receiver")
	}))
	t.Cleanup(receiver.Close)
	caFile := filepath.Join(t.TempDir(), "receiver-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: receiver.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	e.writeConfig(`models:
  - table: public.site
    model: Site
    exclude: [comments]
webhooks:
  - name: inventory
    url: ` + receiver.URL + `/netbox
    secret: s3cret
    tls: {ca_file: ` + caFile + `}`)
	r := opsRun(t, e.cfg, "check")
	if r.code != 0 || strings.Contains(r.stdout, "FAIL") || strings.Contains(r.stdout, "WARN") || !strings.HasSuffix(r.stdout, "Ready to run.\n") {
		t.Fatalf("want every check OK:\n%s", r)
	}
	for _, name := range []string{"config", "source database", "wal_level", "replication privilege", "max_replication_slots",
		"max_wal_senders", "table public.site", "SELECT on public.site", "replica identity public.site", "columns of public.site",
		"publication walhook", "slot " + e.slot, "outbox schema walhook", "webhook inventory", "webhook inventory tls"} {
		checkLine(t, r.stdout, name)
	}
	r = opsRun(t, e.cfg, "check", "--json")
	var rep checkJSON
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 0 || !rep.OK || len(rep.Checks) < 14 {
		t.Fatalf("check --json: %v\n%s", err, r)
	}
}

// With the outbox in the source database, check says (an OK line with a
// tip, exit 0) that the walsender decodes walhook's own outbox writes, and
// shows the two lines that put it in another database of the same server;
// those lines, pasted after the CREATE DATABASE it names, pass check.
func TestCheckTipsTheOutboxInAnotherDatabase(t *testing.T) {
	e := newEnv(t, `CREATE TABLE site (id int PRIMARY KEY, name text); ALTER TABLE site REPLICA IDENTITY FULL`)
	const body = "models:\n  - table: site\nwebhooks:\n  - name: inventory\n    url: http://127.0.0.1:1/netbox\n    secret: s3cret"
	e.writeConfig(body)
	r := opsRun(t, e.cfg, "check")
	if r.code != 0 || strings.Contains(r.stdout, "WARN") || !strings.HasSuffix(r.stdout, "Ready to run.\n") {
		t.Fatalf("want every check OK:\n%s", r)
	}
	src, _, _ := strings.Cut(e.dsn[strings.LastIndex(e.dsn, "/")+1:], "?")
	line := checkLine(t, r.stdout, "outbox database")
	for _, want := range []string{"OK ", "in the source database " + src + ", so the walsender decodes walhook's own outbox writes", "another database of the same server", "database.outbox_dsn"} {
		if !strings.Contains(line, want) {
			t.Errorf("outbox database line lacks %q: %s", want, line)
		}
	}
	if !strings.Contains(r.stdout, "      tip: # optional, after CREATE DATABASE") {
		t.Errorf("no tip under the outbox database line:\n%s", r.stdout)
	}
	base, _, _ := strings.Cut(e.dsn, "?")
	outboxDSN := base + "_walhook"
	tip := fixOf(r.stdout, "outbox database")
	if want := "database:\ndsn: " + base + "  # unchanged\noutbox_dsn: " + outboxDSN + "  # dsn with another database"; !strings.Contains(tip, want) {
		t.Errorf("the tip lacks the two lines\n%s\nin:\n%s", want, r.stdout)
	}

	// Follow the tip: the outbox in that database passes check, with no tip.
	create := regexp.MustCompile(`CREATE DATABASE [^;]+;`).FindString(tip)
	if create == "" {
		t.Fatalf("no CREATE DATABASE in the tip:\n%s", tip)
	}
	e.exec(create)
	t.Cleanup(func() {
		_, _ = e.db.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{src + "_walhook"}.Sanitize()+" WITH (FORCE)")
	})
	e.cfg = e.writeConfigFile("outbox.yaml", fmt.Sprintf("  dsn: %s\n  outbox_dsn: %s\n  slot: %s", base, outboxDSN, e.slot), body)
	r = opsRun(t, e.cfg, "check")
	if r.code != 0 || strings.Contains(r.stdout, "WARN") || strings.Contains(r.stdout, "tip:") || !strings.HasSuffix(r.stdout, "Ready to run.\n") {
		t.Fatalf("with the tip's outbox_dsn, want every check OK and no tip:\n%s", r)
	}
	if line := checkLine(t, r.stdout, "outbox database"); !strings.Contains(line, "database "+src+"_walhook") {
		t.Errorf("outbox database line: %s", line)
	}
}

// The shipped config.example.yaml passes every check against the schema
// docker-compose.yml loads, with the environment docker-compose.yml sets.
func TestCheckExampleConfigAgainstComposeSchema(t *testing.T) {
	schema, err := os.ReadFile("../examples/compose/netbox.sql")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, string(schema))
	env := []string{"WALHOOK_DSN=" + e.dsn, "INVENTORY_URL=http://receiver:8080/netbox", "INVENTORY_SECRET=change-me"}
	r := opsRunEnv(t, env, "../config.example.yaml", "check")
	if r.code != 0 || strings.Contains(r.stdout, "FAIL") {
		t.Fatalf("walhook check -c config.example.yaml:\n%s", r)
	}
	if line := checkLine(t, r.stdout, "webhook inventory"); !strings.Contains(line, "http://receiver:8080/netbox; signed") {
		t.Errorf("webhook line: %s", line)
	}
}

func TestCheckInvalidConfigExits2(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(cfg, []byte("database:\n  dsn: postgres://x@127.0.0.1:1/db\nmodels:\n  - table: site\n    colour: blue\nwebhooks:\n  - name: a\n    url: not a url\n"), 0o600)
	r := opsRun(t, cfg, "check")
	if r.code != 2 {
		t.Fatalf("want exit 2:\n%s", r)
	}
	for _, want := range []string{`bad.yaml:5: unknown key "colour"`, `bad.yaml:8: webhook "a": url`} {
		if line := checkLine(t, r.stdout, "config"); !strings.HasPrefix(line, "FAIL") || !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks FAIL config line %q:\n%s", want, r.stdout)
		}
	}
	r = opsRun(t, filepath.Join(t.TempDir(), "missing.yaml"), "check")
	if r.code != 2 || !strings.Contains(r.stdout, "not found") {
		t.Errorf("missing config:\n%s", r)
	}
}

type statusJSON struct {
	Webhooks []struct {
		Name   string `json:"name"`
		Counts struct {
			Pending, Delivering, Delivered, Failed int
		} `json:"counts"`
		OldestPendingAgeSeconds *float64 `json:"oldest_pending_age_seconds"`
		LastError               *struct {
			DeliveryID int64      `json:"delivery_id"`
			Status     *int       `json:"status"`
			Error      string     `json:"error"`
			At         *time.Time `json:"at"`
		} `json:"last_error"`
	} `json:"webhooks"`
	Slot struct {
		Name         string `json:"name"`
		Exists       bool   `json:"exists"`
		Active       bool   `json:"active"`
		ActivePID    *int   `json:"active_pid"`
		ConfirmedLSN string `json:"confirmed_lsn"`
		LagBytes     *int64 `json:"lag_bytes"`
	} `json:"slot"`
	Capture struct {
		CheckpointLSN string `json:"checkpoint_lsn"`
		BehindBytes   *int64 `json:"behind_bytes"`
	} `json:"capture"`
}

type deliveryJSON struct {
	ID         int64   `json:"id"`
	Webhook    string  `json:"webhook"`
	Event      string  `json:"event"`
	Model      string  `json:"model"`
	ObjectKey  string  `json:"object_key"`
	State      string  `json:"state"`
	Attempts   int     `json:"attempts"`
	LastStatus *int    `json:"last_status"`
	LastError  *string `json:"last_error"`
	Body       *string `json:"body"`
}

func TestStatusAndDeliveriesAfterSuccessesAndFailures(t *testing.T) {
	e := newEnv(t, `CREATE TABLE site (id int PRIMARY KEY, name text); CREATE TABLE device (id int PRIMARY KEY, name text)`)
	// The receiver accepts odd ids and answers 500 for even ones.
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p struct {
			Data struct{ ID int } `json:"data"`
		}
		body, _ := io.ReadAll(r.Body)
		json.Unmarshal(body, &p)
		if p.Data.ID%2 == 0 {
			http.Error(w, "no even ids here", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()
	e.writeConfig(fmt.Sprintf(`models:
  - table: site
    model: Site
  - table: device
    model: Device
webhooks:
  - name: inventory
    url: %s/hook
    retry: {max_attempts: 1, initial_interval: 10ms, max_interval: 10ms}
  - name: idle
    url: http://127.0.0.1:1/
    enabled: false
dispatch:
  poll_interval: 50ms`, rcv.URL))

	// Before anything ran: no outbox yet, no slot.
	r := opsRun(t, e.cfg, "status", "--json")
	var st statusJSON
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 0 || st.Slot.Exists {
		t.Fatalf("status before run: %v\n%s", err, r)
	}

	p := e.start("run")
	e.waitStreaming()
	e.exec(`INSERT INTO site VALUES (1, 'ams1'), (2, 'fra1'), (3, 'lon1')`)
	e.exec(`INSERT INTO device VALUES (4, 'sw4'), (5, 'sw5')`)
	e.waitFor("5 deliveries settled", 20*time.Second, func() bool {
		return e.count(`SELECT count(*) FROM walhook.deliveries WHERE state IN ('delivered', 'failed')`) == 5
	})

	// While running: check says walhook holds the slot, status shows it active.
	r = opsRun(t, e.cfg, "check")
	if line := checkLine(t, r.stdout, "slot "+e.slot); r.code != 0 || !strings.HasPrefix(line, "OK") || !strings.Contains(line, "in use by a running walhook, pid ") {
		t.Errorf("check while running:\n%s", r)
	}
	r = opsRun(t, e.cfg, "status", "--json")
	st = statusJSON{}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || !st.Slot.Active || st.Slot.ActivePID == nil {
		t.Errorf("status while running: %v\n%s", err, r)
	}
	p.stop(t)

	r = opsRun(t, e.cfg, "status", "--json")
	st = statusJSON{}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || r.code != 0 {
		t.Fatalf("status --json: %v\n%s", err, r)
	}
	if len(st.Webhooks) != 2 || st.Webhooks[0].Name != "inventory" || st.Webhooks[1].Name != "idle" {
		t.Fatalf("webhooks: %+v", st.Webhooks)
	}
	inv := st.Webhooks[0]
	if c := inv.Counts; c.Delivered != 3 || c.Failed != 2 || c.Pending != 0 || c.Delivering != 0 {
		t.Errorf("inventory counts %+v, want 3 delivered and 2 failed", c)
	}
	if inv.OldestPendingAgeSeconds != nil {
		t.Errorf("oldest pending age %v with nothing pending", *inv.OldestPendingAgeSeconds)
	}
	if le := inv.LastError; le == nil || le.Status == nil || *le.Status != 500 || !strings.Contains(le.Error, "no even ids here") || le.At == nil {
		t.Errorf("last error %+v", le)
	}
	if c := st.Webhooks[1].Counts; c.Delivered+c.Failed+c.Pending != 0 {
		t.Errorf("disabled webhook has deliveries: %+v", c)
	}
	if !st.Slot.Exists || st.Slot.Active || st.Slot.Name != e.slot || st.Slot.ConfirmedLSN == "" || st.Slot.LagBytes == nil {
		t.Errorf("slot %+v", st.Slot)
	}
	if st.Capture.CheckpointLSN == "" || st.Capture.BehindBytes == nil || *st.Capture.BehindBytes < 0 {
		t.Errorf("capture %+v", st.Capture)
	}
	r = opsRun(t, e.cfg, "status")
	if r.code != 0 || !regexp.MustCompile(`(?m)^inventory\s+enabled\s+0\s+0\s+3\s+2\s+-\s+\S+ ago, #\d+: HTTP 500`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^idle\s+disabled\s+0\s+0\s+0\s+0\s`).MatchString(r.stdout) || !strings.Contains(r.stdout, e.slot+"  ") {
		t.Errorf("status table:\n%s", r)
	}

	// deliveries: newest first, filters bound as parameters.
	list := func(args ...string) []deliveryJSON {
		t.Helper()
		r := opsRun(t, e.cfg, append([]string{"deliveries", "--json"}, args...)...)
		var ds []deliveryJSON
		if err := json.Unmarshal([]byte(r.stdout), &ds); err != nil || r.code != 0 {
			t.Fatalf("deliveries %v: %v\n%s", args, err, r)
		}
		return ds
	}
	all := list()
	if len(all) != 5 {
		t.Fatalf("%d deliveries, want 5", len(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID >= all[i-1].ID {
			t.Errorf("not newest first: %d after %d", all[i].ID, all[i-1].ID)
		}
	}
	failed := list("--state", "failed")
	if len(failed) != 2 || failed[0].ObjectKey != "4" || failed[1].ObjectKey != "2" || failed[0].Attempts != 1 || *failed[0].LastStatus != 500 {
		t.Errorf("failed deliveries: %+v", failed)
	}
	if ds := list("--model", "Site", "--state", "delivered"); len(ds) != 2 || ds[0].ObjectKey != "3" || ds[1].ObjectKey != "1" {
		t.Errorf("delivered sites: %+v", ds)
	}
	if ds := list("--model", "Device", "--limit", "1"); len(ds) != 1 || ds[0].ObjectKey != "5" {
		t.Errorf("--limit 1: %+v", ds)
	}
	if ds := list("--webhook", "idle"); len(ds) != 0 {
		t.Errorf("idle webhook: %+v", ds)
	}
	if ds := list("--webhook", "x' OR '1'='1"); len(ds) != 0 {
		t.Errorf("a quote in a filter matched rows: %+v", ds)
	}
	if all[0].Body != nil {
		t.Errorf("the list carries bodies")
	}
	r = opsRun(t, e.cfg, "deliveries", "--state", "failed")
	if r.code != 0 || !regexp.MustCompile(`(?m)^ID\s+WEBHOOK\s+EVENT\s+MODEL\s+OBJECT\s+STATE\s+ATTEMPTS\s+STATUS`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^\d+\s+inventory\s+created\s+Device\s+4\s+failed\s+1\s+500\s`).MatchString(r.stdout) {
		t.Errorf("deliveries table:\n%s", r)
	}
	if r := opsRun(t, e.cfg, "deliveries", "--state", "lost"); r.code != 2 {
		t.Errorf("--state lost:\n%s", r)
	}

	// deliveries show: the fields, the pretty body, the last error.
	id := fmt.Sprint(failed[0].ID)
	r = opsRun(t, e.cfg, "deliveries", "show", id)
	for _, want := range []string{"state            failed", "last_status      500", "last_error:\n  HTTP 500", "no even ids here",
		"retry it with: walhook retry --id " + id, "body:\n{\n  \"event\": \"created\",", `    "name": "sw4"`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("deliveries show lacks %q:\n%s", want, r)
		}
	}
	// The attempt history: one attempt, its status and the response body
	// (http.Error ends it with a newline).
	if !strings.Contains(r.stdout, "attempts (the last 20 are kept):") ||
		!regexp.MustCompile(`(?m)^\s+#\s+STARTED\s+TOOK\s+STATUS\s+ERROR OR RESPONSE\n\s+1\s+20\d\d-\d\d-\d\dT[0-9:.]+Z\s+[0-9.]+[mµ]?s\s+500\s+no even ids here\s*\n\nbody:`).MatchString(r.stdout) {
		t.Errorf("deliveries show lacks the attempt history:\n%s", r)
	}
	trace := tracecontext.ForDelivery(failed[0].Webhook, failed[0].ID).String()
	if !strings.Contains(r.stdout, "trace_id         "+trace) {
		t.Errorf("deliveries show lacks trace id %s:\n%s", trace, r)
	}
	r = opsRun(t, e.cfg, "deliveries", "show", id, "--json")
	var one deliveryJSON
	if err := json.Unmarshal([]byte(r.stdout), &one); err != nil || one.Body == nil || !strings.Contains(*one.Body, `"model":"Device"`) || one.LastError == nil {
		t.Errorf("deliveries show --json: %v\n%s", err, r)
	}
	var withTrace struct {
		TraceID string `json:"trace_id"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &withTrace); err != nil || withTrace.TraceID != trace {
		t.Errorf("deliveries show --json: trace_id %q, want %s (%v)", withTrace.TraceID, trace, err)
	}
	var history struct {
		Attempts []struct {
			Attempt    int       `json:"attempt"`
			StartedAt  time.Time `json:"started_at"`
			DurationMS float64   `json:"duration_ms"`
			Status     *int      `json:"status"`
			Error      *string   `json:"error"`
			Response   *string   `json:"response"`
		} `json:"attempt_history"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &history); err != nil || len(history.Attempts) != 1 {
		t.Errorf("deliveries show --json: attempt_history %+v (%v)\n%s", history, err, r)
	} else if a := history.Attempts[0]; a.Attempt != 1 || a.StartedAt.IsZero() || a.DurationMS <= 0 || a.Status == nil ||
		*a.Status != 500 || a.Error != nil || a.Response == nil || *a.Response != "no even ids here\n" {
		t.Errorf("deliveries show --json: attempt %+v", a)
	}
	if r := opsRun(t, e.cfg, "deliveries", "show", "999999"); r.code != 1 || !strings.Contains(r.stderr, "delivery 999999 not found") {
		t.Errorf("show missing id:\n%s", r)
	}
}

func TestConnectionErrorsAreOneLineWithWhatToDo(t *testing.T) {
	dir := t.TempDir()
	cfgFor := func(name, dsn string) string {
		cfg := filepath.Join(dir, name+".yaml")
		os.WriteFile(cfg, fmt.Appendf(nil, "database:\n  dsn: %s\nmodels:\n  - table: site\nwebhooks:\n  - name: r\n    url: http://127.0.0.1:1/\nhttp:\n  listen: \"\"\n", dsn), 0o600)
		return cfg
	}
	// A role that must give a password (the harness trusts everyone else).
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	role := fmt.Sprintf("pw_%d", os.Getpid())
	if _, err := conn.Exec(ctx, "CREATE ROLE "+role+" LOGIN PASSWORD 'right-password'"); err != nil {
		t.Fatal(err)
	}
	defer conn.Exec(ctx, "DROP ROLE "+role)
	hba := filepath.Join(pg.Dir, "data", "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hba, append([]byte("host all "+role+" 127.0.0.1/32 scram-sha-256\n"), old...), 0o600); err != nil {
		t.Fatal(err)
	}
	defer func() {
		os.WriteFile(hba, old, 0o600)
		conn.Exec(ctx, "SELECT pg_reload_conf()")
	}()
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the postmaster reloads asynchronously

	wrongPassword := fmt.Sprintf("postgres://%s:bad-secret-1@127.0.0.1:%d/postgres?sslmode=disable", role, pg.Port)
	for _, tc := range []struct {
		name, dsn, want string
	}{
		{"refused", "postgres://walhook:secret-pw@127.0.0.1:1/app?sslmode=disable", "connection refused at 127.0.0.1:1: is PostgreSQL running and listening there?"},
		{"missing-database", fmt.Sprintf("postgres://postgres:secret-pw@127.0.0.1:%d/no_such_db?sslmode=disable", pg.Port), `database "no_such_db" does not exist at 127.0.0.1:`},
		{"missing-role", fmt.Sprintf("postgres://no_such_role:secret-pw@127.0.0.1:%d/postgres?sslmode=disable", pg.Port), `role "no_such_role" does not exist at 127.0.0.1:`},
		{"wrong-password", wrongPassword, "password authentication failed at 127.0.0.1:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := cfgFor(tc.name, tc.dsn)
			for _, cmd := range [][]string{{"status"}, {"deliveries"}, {"migrate"}} {
				r := opsRun(t, cfg, cmd...)
				msg := strings.TrimSpace(r.stderr)
				if r.code != 1 || !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") || strings.Contains(msg, "password@") ||
					strings.Contains(msg, "secret-pw") || strings.Contains(msg, "bad-secret-1") {
					t.Errorf("walhook %s: want exit 1 and one line containing %q, without the password:\n%s", cmd[0], tc.want, r)
				}
			}
			r := opsRun(t, cfg, "check")
			if line := checkLine(t, r.stdout, "source database"); r.code != 1 || !strings.HasPrefix(line, "FAIL") || !strings.Contains(line, tc.want) ||
				strings.Contains(r.stdout, "secret-pw") || strings.Contains(r.stdout, "bad-secret-1") {
				t.Errorf("check:\n%s", r)
			}
		})
	}
}

// walhook retry says so before it would send a change older than one of the
// same object already delivered, and --skip-superseded / --include-superseded
// choose.
func TestRetryWarnsAboutSupersededDeliveries(t *testing.T) {
	e := newEnv(t, `CREATE TABLE site (id int PRIMARY KEY)`)
	e.writeConfig("models:\n  - table: site\nwebhooks:\n  - name: w\n    url: http://127.0.0.1:1/\n")
	if r := opsRun(t, e.cfg, "migrate"); r.code != 0 {
		t.Fatalf("migrate: %s", r)
	}
	e.exec(`INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body, state, attempts,
			last_attempt_at, delivered_at)
		VALUES ('w', 'updated', 'site', '1', '0/100', 0, now(), '{}', 'failed', 8, now(), NULL),
		       ('w', 'updated', 'site', '1', '0/200', 0, now(), '{}', 'delivered', 1, now(), now()),
		       ('w', 'updated', 'site', '2', '0/150', 0, now(), '{}', 'failed', 8, now(), NULL)`)
	r := opsRun(t, e.cfg, "retry", "--all-failed")
	if r.code != 2 || !strings.Contains(r.stderr, "1 of these deliveries are older than a change of the same object that was already delivered") {
		t.Fatalf("retry --all-failed with a superseded row: %s", r)
	}
	if n := e.count(`SELECT count(*) FROM walhook.deliveries WHERE state = 'failed'`); n != 2 {
		t.Fatalf("%d failed rows after a refused retry, want 2", n)
	}
	if r := opsRun(t, e.cfg, "retry", "--all-failed", "--skip-superseded"); r.code != 0 || !strings.Contains(r.stdout, "re-queued 1 deliveries") {
		t.Fatalf("retry --skip-superseded: %s", r)
	}
	if r := opsRun(t, e.cfg, "retry", "--all-failed", "--include-superseded"); r.code != 0 || !strings.Contains(r.stdout, "re-queued 1 deliveries") {
		t.Fatalf("retry --include-superseded: %s", r)
	}
}
