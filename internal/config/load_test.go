package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// minimal is the smallest valid configuration; every other key defaults.
const minimal = `
database:
  dsn: postgres://walhook@localhost:5432/app
models:
  - table: dcim_site
webhooks:
  - name: inventory
    url: https://hooks.example.com/netbox
`

// y trims the leading newline of a raw-string YAML literal so that the
// first line of the literal is line 1.
func y(s string) []byte { return []byte(strings.TrimPrefix(s, "\n")) }

// envOf returns a lookup function over m.
func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

// parseErr parses and returns the *Error, failing if the error is of another
// type or if a config was returned alongside it.
func parseErr(t *testing.T, src []byte, env map[string]string) (*Config, *Error) {
	t.Helper()
	c, err := Parse("walhook.yaml", src, envOf(env))
	if err == nil {
		if c == nil {
			t.Fatal("Parse returned neither a config nor an error")
		}
		return c, nil
	}
	if c != nil {
		t.Fatalf("Parse returned both a config and an error: %v", err)
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("Parse error is %T, want *config.Error: %v", err, err)
	}
	if len(ce.Problems) == 0 {
		t.Fatal("Parse returned an *Error without problems")
	}
	return nil, ce
}

// checkProblems matches got against want, given as "line: substring"; every
// problem must be matched by exactly one want and problems must be sorted by
// line.
func checkProblems(t *testing.T, e *Error, want []string) {
	t.Helper()
	if e == nil {
		t.Fatalf("got a valid config, want problems %q", want)
	}
	for i := 1; i < len(e.Problems); i++ {
		if e.Problems[i].Line < e.Problems[i-1].Line {
			t.Errorf("problems are not sorted by line:\n%v", e)
			break
		}
	}
	used := make([]bool, len(e.Problems))
	for _, w := range want {
		ls, sub, ok := strings.Cut(w, ": ")
		line, err := strconv.Atoi(ls)
		if !ok || err != nil {
			t.Fatalf("bad want %q: use \"line: substring\"", w)
		}
		found := false
		for i, p := range e.Problems {
			if !used[i] && p.Line == line && strings.Contains(p.Msg, sub) {
				used[i], found = true, true
				break
			}
		}
		if !found {
			t.Errorf("missing problem %q", w)
		}
	}
	for i, p := range e.Problems {
		if !used[i] {
			t.Errorf("unexpected problem %d: %s", p.Line, p.Msg)
		}
		if p.File != "walhook.yaml" {
			t.Errorf("problem %q has file %q", p.Msg, p.File)
		}
	}
	if t.Failed() {
		t.Logf("all problems:\n%v", e)
	}
}

func TestParseDefaults(t *testing.T) {
	c, e := parseErr(t, y(minimal), nil)
	if e != nil {
		t.Fatalf("minimal config rejected:\n%v", e)
	}
	if c.File != "walhook.yaml" {
		t.Errorf("File = %q", c.File)
	}
	db := c.Database
	if db.DSN != "postgres://walhook@localhost:5432/app" || db.OutboxDSN != "" {
		t.Errorf("database = %+v", db)
	}
	if db.Schema != "walhook" || db.Slot != "walhook" || db.Publication != "walhook" {
		t.Errorf("schema/slot/publication = %q/%q/%q, want walhook", db.Schema, db.Slot, db.Publication)
	}
	if len(c.Models) != 1 {
		t.Fatalf("models = %+v", c.Models)
	}
	m := c.Models[0]
	if m.Schema != "public" || m.Name != "dcim_site" || m.Model != "dcim_site" || m.QualifiedTable() != "public.dcim_site" || m.Line != 4 {
		t.Errorf("model = %+v", m)
	}
	if len(c.Webhooks) != 1 {
		t.Fatalf("webhooks = %+v", c.Webhooks)
	}
	w := c.Webhooks[0]
	checks := []struct {
		name      string
		got, want any
	}{
		{"line", w.Line, 6},
		{"http_method", w.HTTPMethod, "POST"},
		{"content_type", w.ContentType, "application/json"},
		{"timeout", w.Timeout.D(), 10 * time.Second},
		{"retry.max_attempts", w.Retry.MaxAttempts, 8},
		{"retry.initial_interval", w.Retry.InitialInterval.D(), 5 * time.Second},
		{"retry.max_interval", w.Retry.MaxInterval.D(), time.Hour},
		{"enabled", w.IsEnabled(), true},
		{"models", len(w.Models), 0},
		{"events", len(w.Events), 0},
		{"secret", w.Secret, ""},
		{"format", w.Format, "netbox"},
		{"signature", w.Signature, "netbox"},
		{"coalesce", w.Coalesce, "none"},
		{"dispatch.concurrency", c.Dispatch.Concurrency, 16},
		{"dispatch.poll_interval", c.Dispatch.PollInterval.D(), time.Second},
		{"dispatch.retention", c.Dispatch.Retention.D(), 168 * time.Hour},
		{"http.listen", c.HTTP.ListenAddr(), "127.0.0.1:9187"},
		{"http.token", c.HTTP.Token, ""},
		{"log.level", c.Log.Level, "info"},
		{"log.format", c.Log.Format, "json"},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s = %v, want %v", ck.name, ck.got, ck.want)
		}
	}
	if got, ok := c.ModelByName("dcim_site"); !ok || got.Table != "dcim_site" {
		t.Errorf("ModelByName(dcim_site) = %v, %v", got, ok)
	}
	if _, ok := c.ModelByName("nope"); ok {
		t.Error("ModelByName(nope) found something")
	}
	if got, ok := c.WebhookByName("inventory"); !ok || got.URL != "https://hooks.example.com/netbox" {
		t.Errorf("WebhookByName(inventory) = %v, %v", got, ok)
	}
	if _, ok := c.WebhookByName("nope"); ok {
		t.Error("WebhookByName(nope) found something")
	}
}

func TestParseValues(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		env   map[string]string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "full config",
			yaml: `
database:
  dsn: postgres://walhook@db:5432/app
  outbox_dsn: postgres://walhook@db:5432/outbox
  schema: hooks
  slot: my_slot
  publication: my_pub
models:
  - table: public.dcim_site
    model: Site
    exclude: [comments]
    rename: {custom_field_data: custom_fields}
    url: /api/dcim/sites/{id}/
    relations:
      region_id: {field: region, table: public.dcim_region, columns: [id, name, slug]}
    computed:
      device_count: {sql: "SELECT count(*) FROM dcim_device WHERE site_id = $1", args: [id]}
    choices:
      status: {active: Active, planned: Planned}
    ignore_changes: [last_updated]
  - table: tenancy.tenant
webhooks:
  - name: inventory
    url: http://hooks.example.com/netbox
    models: [Site]
    events: [created, deleted]
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
    http_method: put
    content_type: application/x-www-form-urlencoded
    headers: {Authorization: "Bearer abc"}
    timeout: 2500ms
    retry: {max_attempts: 3, initial_interval: 1s, max_interval: 7d}
    enabled: false
    format: netbox-v4
    object_type: dcim.site
    signature: both
    coalesce: transaction
    body_template: '{"model": "{{.model}}"}'
dispatch:
  concurrency: 4
  poll_interval: 90m
  retention: 7d
http:
  listen: 0.0.0.0:9187
  token: tok
log:
  level: debug
  format: console
`,
			check: func(t *testing.T, c *Config) {
				want := Database{DSN: "postgres://walhook@db:5432/app", OutboxDSN: "postgres://walhook@db:5432/outbox", Schema: "hooks", Slot: "my_slot", Publication: "my_pub"}
				got := c.Database
				got.FailoverLine = 0 // where slot_failover would be (TestSlotFailover)
				if got != want {
					t.Errorf("database = %+v", c.Database)
				}
				m := c.Models[0]
				if m.Model != "Site" || m.Schema != "public" || m.Name != "dcim_site" || m.Line != 8 {
					t.Errorf("model 0 = %+v", m)
				}
				if !reflect.DeepEqual(m.Relations["region_id"], Relation{Field: "region", Table: "public.dcim_region", Columns: []string{"id", "name", "slug"}, Line: 14,
					FK: []string{"region_id"}, Schema: "public", Name: "dcim_region"}) {
					t.Errorf("relations = %+v", m.Relations)
				}
				if m.Computed["device_count"].SQL != "SELECT count(*) FROM dcim_device WHERE site_id = $1" {
					t.Errorf("computed = %+v ($1 must not be expanded)", m.Computed)
				}
				if m.Choices["status"]["planned"] != "Planned" || m.Rename["custom_field_data"] != "custom_fields" {
					t.Errorf("choices/rename = %+v %+v", m.Choices, m.Rename)
				}
				if m2 := c.Models[1]; m2.Schema != "tenancy" || m2.Name != "tenant" || m2.Model != "tenant" || m2.Line != 20 {
					t.Errorf("model 1 = %+v", m2)
				}
				w := c.Webhooks[0]
				if w.HTTPMethod != "PUT" || w.Timeout.D() != 2500*time.Millisecond || w.IsEnabled() || w.Line != 22 {
					t.Errorf("webhook = %+v", w)
				}
				if w.Retry != (Retry{3, Duration(time.Second), Duration(7 * 24 * time.Hour)}) {
					t.Errorf("retry = %+v", w.Retry)
				}
				if c.Dispatch != (Dispatch{4, Duration(90 * time.Minute), Duration(168 * time.Hour), Duration(720 * time.Hour)}) {
					t.Errorf("dispatch = %+v", c.Dispatch)
				}
				if c.HTTP.ListenAddr() != "0.0.0.0:9187" || c.Log != (Log{"debug", "console"}) {
					t.Errorf("http/log = %+v %+v", c.HTTP, c.Log)
				}
			},
		},
		{
			name: "environment expansion",
			yaml: `
database:
  dsn: ${DSN}
  slot: ${SLOT:-walhook_slot}
  publication: ${EMPTY:-pub_default}
models:
  - table: ${SCHEMA:-public}.dcim_site
webhooks:
  - name: inventory
    url: https://${HOST}/hook?a=$$1
    secret: pa$$word-${SECRET}
    headers: {Authorization: "Bearer ${TOKEN}", X-Literal: "$${NOT_EXPANDED}", X-Dollar: "$HOME $1 ${"}
http:
  token: ${WALHOOK_HTTP_TOKEN:-}
`,
			env: map[string]string{"DSN": "postgres://u:p@h/db", "HOST": "example.com", "SECRET": "x", "TOKEN": "t0k", "EMPTY": ""},
			check: func(t *testing.T, c *Config) {
				if c.Database.DSN != "postgres://u:p@h/db" || c.Database.Slot != "walhook_slot" || c.Database.Publication != "pub_default" {
					t.Errorf("database = %+v", c.Database)
				}
				if c.Models[0].Schema != "public" {
					t.Errorf("model = %+v", c.Models[0])
				}
				w := c.Webhooks[0]
				if w.URL != "https://example.com/hook?a=$1" || w.Secret != "pa$word-x" {
					t.Errorf("url/secret = %q %q", w.URL, w.Secret)
				}
				want := map[string]string{"Authorization": "Bearer t0k", "X-Literal": "${NOT_EXPANDED}", "X-Dollar": "$HOME $1 ${"}
				if !reflect.DeepEqual(w.Headers, want) {
					t.Errorf("headers = %q, want %q", w.Headers, want)
				}
				if c.HTTP.Token != "" {
					t.Errorf("token = %q", c.HTTP.Token)
				}
			},
		},
		{
			name: "env values take their YAML type unless quoted",
			yaml: `
database: {dsn: "postgres://h/db"}
webhooks: [{name: w, url: "https://h/"}]
dispatch:
  concurrency: ${C}
  retention: ${RET:-30d}
models:
  - table: t
    model: "${N}"
    url: '${N}'
    exclude:
      - ${N}
`,
			env: map[string]string{"C": "4", "N": "007"},
			check: func(t *testing.T, c *Config) {
				if c.Dispatch.Concurrency != 4 || c.Dispatch.Retention.D() != 30*24*time.Hour {
					t.Errorf("dispatch = %+v", c.Dispatch)
				}
				m := c.Models[0]
				if m.Model != "007" || m.URL != "007" || !reflect.DeepEqual(m.Exclude, []string{"007"}) {
					t.Errorf("model = %+v", m)
				}
			},
		},
		{
			name: "env bool",
			yaml: minimal + "    enabled: ${ON}\n",
			env:  map[string]string{"ON": "false"},
			check: func(t *testing.T, c *Config) {
				if c.Webhooks[0].IsEnabled() {
					t.Error("webhook enabled, want disabled")
				}
			},
		},
		{
			name: "listen disabled by an empty string",
			yaml: minimal + "http:\n  listen: \"\"\n",
			check: func(t *testing.T, c *Config) {
				if c.HTTP.ListenAddr() != "" {
					t.Errorf("listen = %q", c.HTTP.ListenAddr())
				}
			},
		},
		{
			name: "listen disabled by an env var expanding to nothing",
			yaml: minimal + "http:\n  listen: ${LISTEN:-}\n",
			check: func(t *testing.T, c *Config) {
				if c.HTTP.ListenAddr() != "" {
					t.Errorf("listen = %q, want disabled", c.HTTP.ListenAddr())
				}
			},
		},
		{
			name: "loopback listen addresses need no token",
			yaml: minimal + "http:\n  listen: ${L}\n",
			env:  map[string]string{"L": "[::1]:9000"},
			check: func(t *testing.T, c *Config) {
				if c.HTTP.ListenAddr() != "[::1]:9000" {
					t.Errorf("listen = %q", c.HTTP.ListenAddr())
				}
			},
		},
		{
			name: "localhost listen",
			yaml: minimal + "http:\n  listen: localhost:9187\n",
			check: func(t *testing.T, c *Config) {
				if c.HTTP.ListenAddr() != "localhost:9187" {
					t.Errorf("listen = %q", c.HTTP.ListenAddr())
				}
			},
		},
		{
			name: "null values mean the default",
			yaml: minimal + "    timeout:\n    retry:\n    enabled:\ndispatch:\n  concurrency:\n  poll_interval: ~\nhttp:\n  listen:\n",
			check: func(t *testing.T, c *Config) {
				w := c.Webhooks[0]
				if w.Timeout.D() != 10*time.Second || w.Retry.MaxAttempts != 8 || !w.IsEnabled() {
					t.Errorf("webhook = %+v", w)
				}
				if c.Dispatch.Concurrency != 16 || c.Dispatch.PollInterval.D() != time.Second || c.HTTP.ListenAddr() != "127.0.0.1:9187" {
					t.Errorf("dispatch/http = %+v %+v", c.Dispatch, c.HTTP)
				}
			},
		},
		{
			name: "anchors and merge keys",
			yaml: `
database: {dsn: "postgres://h/db"}
models:
  - table: a
  - table: b
webhooks:
  - &base
    name: one
    url: https://h/1
    retry: &r {max_attempts: 2, initial_interval: 2s, max_interval: 4s}
  - <<: *base
    name: two
  - name: three
    url: https://h/3
    retry: *r
`,
			check: func(t *testing.T, c *Config) {
				if len(c.Webhooks) != 3 {
					t.Fatalf("webhooks = %+v", c.Webhooks)
				}
				for _, w := range c.Webhooks {
					if w.Retry.MaxAttempts != 2 || w.Retry.MaxInterval.D() != 4*time.Second {
						t.Errorf("webhook %s retry = %+v", w.Name, w.Retry)
					}
				}
				if w := c.Webhooks[1]; w.Name != "two" || w.URL != "https://h/1" || w.Line != 10 {
					t.Errorf("merged webhook = %+v", w)
				}
			},
		},
		{
			name: "quoted and tagged expansions stay strings",
			yaml: `
database: {dsn: "postgres://h/db"}
models:
  - table: t
    model: !!str ${N}
    exclude: ["${N}", '${N}']
webhooks: [{name: "${N}", url: "https://h/"}]
`,
			env: map[string]string{"N": "1e3"},
			check: func(t *testing.T, c *Config) {
				if c.Models[0].Model != "1e3" || c.Webhooks[0].Name != "1e3" || !reflect.DeepEqual(c.Models[0].Exclude, []string{"1e3", "1e3"}) {
					t.Errorf("model = %+v, webhook = %+v", c.Models[0], c.Webhooks[0])
				}
			},
		},
		{
			name: "durations",
			yaml: minimal + "    timeout: 1m30s\n    retry: {initial_interval: 250ms, max_interval: 1.5d}\ndispatch:\n  poll_interval: 90m\n  retention: 7d\n",
			check: func(t *testing.T, c *Config) {
				w := c.Webhooks[0]
				if w.Timeout.D() != 90*time.Second || w.Retry.InitialInterval.D() != 250*time.Millisecond || w.Retry.MaxInterval.D() != 36*time.Hour {
					t.Errorf("webhook durations = %v %+v", w.Timeout.D(), w.Retry)
				}
				if w.Retry.MaxAttempts != 8 {
					t.Errorf("max_attempts = %d, want default 8", w.Retry.MaxAttempts)
				}
				if c.Dispatch.PollInterval.D() != 90*time.Minute || c.Dispatch.Retention.D() != 168*time.Hour {
					t.Errorf("dispatch = %+v", c.Dispatch)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, e := parseErr(t, y(tt.yaml), tt.env)
			if e != nil {
				t.Fatalf("rejected:\n%v", e)
			}
			tt.check(t, c)
		})
	}
}

// several is a configuration with many mistakes; every one must be listed.
const several = `
database:
  dsn: postgres://walhook@localhost/app
  slot: my-slot
  publication: Pub
  sheme: walhook
models:
  - table: dcim_site
    model: Site
  - table: dcim_device
    model: Device
    exlude: [comments]
webhooks:
  - name: inventory
    url: https://hooks.example.com/x
    models: [Site, Rack]
    events: [created, removed]
    http_method: GET
    timeout: 10 seconds
    retry: {max_attempts: 0, initial_interval: -5s, max_interval: 0s}
  - name: inventory
    url: hooks.example.com/y
    timout: 5s
dispatch:
  concurrency: 0
  poll_interval: soon
http:
  listen: 0.0.0.0:9187
`

func TestParseProblems(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		want []string // "line: substring"
	}{
		{
			name: "several mistakes",
			yaml: several,
			want: []string{
				`3: database.slot "my-slot" is not a valid name`,
				`4: database.publication "Pub" is not a valid name`,
				`5: unknown key "sheme" in database (did you mean "schema"?)`,
				`11: unknown key "exlude" in models[1] (did you mean "exclude"?)`,
				`15: webhook "inventory" names unknown model "Rack"`,
				`16: unknown event "removed"`,
				`17: http_method "GET" must be POST, PUT or PATCH`,
				`18: invalid duration "10 seconds"`,
				`19: retry.max_attempts must be positive`,
				`19: retry.initial_interval must be positive`,
				`19: retry.max_interval must be positive`,
				`20: duplicate webhook name "inventory"`,
				`21: url "hooks.example.com/y" is not an http(s) URL`,
				`22: unknown key "timout" in webhooks[1] (did you mean "timeout"?)`,
				`24: dispatch.concurrency must be positive`,
				`25: invalid duration "soon"`,
				`27: http.listen "0.0.0.0:9187" is not a loopback address`,
			},
		},
		{
			name: "unset variable",
			yaml: `
database:
  dsn: ${DSN}
models: [{table: t}]
webhooks:
  - name: w
    url: https://h/
    secret: ${SECRET}
    headers:
      Authorization: Bearer ${TOKEN:-}${TOKEN2}
`,
			want: []string{
				"2: environment variable DSN is not set",
				"7: environment variable SECRET is not set (use ${SECRET:-default}",
				"9: environment variable TOKEN2 is not set",
			},
		},
		{
			name: "unset variable in an int key",
			yaml: minimal + "dispatch:\n  concurrency: ${C}\n",
			want: []string{"9: environment variable C is not set"},
		},
		{
			name: "env var with a non-number for an int key",
			yaml: minimal + "dispatch:\n  concurrency: ${C}\n",
			env:  map[string]string{"C": "many"},
			want: []string{`9: dispatch.concurrency: "many" is not a whole number`},
		},
		{
			name: "unknown keys at every level",
			yaml: `
databse: {}
database:
  dsn: postgres://h/db
  slots: s
models:
  - table: t
    Model: T
webhooks:
  - name: w
    url: https://h/
    retry:
      max_attempt: 3
      maxInterval: 1h
      backoff: 2
    event: [created]
dispatch:
  concurency: 3
http:
  tokn: x
log:
  LEVEL: info
extra: 1
`,
			want: []string{
				`1: unknown key "databse" in the top level (did you mean "database"?)`,
				`4: unknown key "slots" in database (did you mean "slot"?)`,
				`7: unknown key "Model" in models[0] (did you mean "model"?)`,
				`12: unknown key "max_attempt" in webhooks[0].retry (did you mean "max_attempts"?)`,
				`13: unknown key "maxInterval" in webhooks[0].retry (did you mean "max_interval"?)`,
				`14: unknown key "backoff" in webhooks[0].retry (known keys: max_attempts, initial_interval, max_interval)`,
				`15: unknown key "event" in webhooks[0] (did you mean "events"?)`,
				`17: unknown key "concurency" in dispatch (did you mean "concurrency"?)`,
				`19: unknown key "tokn" in http (did you mean "token"?)`,
				`21: unknown key "LEVEL" in log (did you mean "level"?)`,
				`22: unknown key "extra" in the top level (known keys: database, models, webhooks, dispatch, http, log, tracing)`,
			},
		},
		{
			name: "unknown key inside a merged mapping",
			yaml: `
database: {dsn: "postgres://h/db"}
models: [{table: t}]
webhooks:
  - &base
    name: one
    url: https://h/1
  - <<: [*base, {secrett: x}]
    name: two
`,
			want: []string{`7: unknown key "secrett" in webhooks[1] (did you mean "secret"?)`},
		},
		{
			name: "invalid YAML syntax",
			yaml: "database:\n  dsn: [unclosed\nmodels: []\n",
			want: []string{"2: invalid YAML: did not find expected ',' or ']' (in a [...] list: is a ']' missing?"},
		},
		{
			name: "tab indentation",
			yaml: "database:\n\tdsn: x\n",
			want: []string{"2: found character that cannot start any token"},
		},
		{
			name: "empty file",
			yaml: "",
			want: []string{"0: the file is empty"},
		},
		{
			name: "only comments",
			yaml: "# walhook\n\n# nothing yet\n",
			want: []string{"0: the file is empty"},
		},
		{
			name: "empty document",
			yaml: "---\n",
			want: []string{"0: the file is empty"},
		},
		{
			name: "not a mapping",
			yaml: "- database\n- models\n",
			want: []string{"1: the configuration must be a mapping"},
		},
		{
			name: "two documents",
			yaml: minimal + "---\nlog: {level: debug}\n",
			want: []string{"8: only one YAML document"},
		},
		{
			name: "required sections",
			yaml: "log:\n  level: info\n",
			want: []string{
				"0: database.dsn is required",
				"0: models: at least one table",
				"0: webhooks: at least one webhook",
			},
		},
		{
			name: "empty sections",
			yaml: "database:\n  dsn: \"\"\nmodels: []\nwebhooks: []\n",
			want: []string{
				"2: database.dsn is required",
				"3: models: at least one table",
				"4: webhooks: at least one webhook",
			},
		},
		{
			name: "wrong kinds",
			yaml: `
database: postgres://h/db
models: dcim_site
webhooks:
  - name: [a, b]
    url: https://h/
    retry: 5
    enabled: maybe
    headers: [a]
dispatch:
  concurrency: lots
  retention: {days: 7}
log:
  level: 3
`,
			want: []string{
				"1: database: expected a mapping, got a scalar",
				"2: models: expected a list, got a scalar",
				"4: webhooks[0].name: expected a string, got a list",
				"6: webhooks[0].retry: expected a mapping, got a scalar",
				`7: webhooks[0].enabled: "maybe" is not true or false`,
				"8: webhooks[0].headers: expected a mapping, got a list",
				`10: dispatch.concurrency: "lots" is not a whole number`,
				"11: dispatch.retention: expected a duration, got a mapping",
				`13: log.level "3" must be debug, info, warn or error`,
			},
		},
		{
			name: "null list items keep their index",
			yaml: `
database: {dsn: "postgres://h/db"}
models:
  -
  - table: b
    model: B
webhooks:
  - name: w
    url: https://h/
    models: [B, ~, C]
    events:
      -
      - created
`,
			want: []string{
				`3: models[0].table "": give a table`,
				`9: unknown model ""`,
				`9: unknown model "C"`,
				`11: unknown event ""`,
			},
		},
		{
			name: "wrong list item kinds keep their index",
			yaml: `
database: {dsn: "postgres://h/db"}
models:
  - just_a_name
  - table: b
  - table: c
    model: b
webhooks:
  - name: w
    url: https://h/
    models: [b, {x: 1}, c]
`,
			want: []string{
				"3: models[0]: expected a mapping, got a scalar",
				`6: model name "b" is used twice`,
				"10: webhooks[0].models[1]: expected a string, got a mapping",
				`10: unknown model "c"`,
			},
		},
		{
			name: "explicit zero values",
			yaml: minimal + "    timeout: 0s\n    retry: {max_attempts: -1}\ndispatch:\n  poll_interval: 0s\n  retention: -1h\n",
			want: []string{
				"8: timeout must be positive",
				"9: retry.max_attempts must be positive",
				"11: dispatch.poll_interval must be positive",
				"12: dispatch.retention must be positive",
			},
		},
		{
			name: "webhook concurrency and rate limit",
			yaml: minimal + "    concurrency: 0\n    rate_limit: fast\ndispatch:\n  concurrency: 4\n  failed_retention: 0s\n",
			want: []string{
				"8: concurrency must be positive",
				`9: rate_limit "fast": write a positive number of requests per second, minute or hour`,
				"12: dispatch.failed_retention must be positive",
			},
		},
		{
			name: "headers",
			yaml: minimal + "    headers:\n      \"Bad Name\": x\n      X-Hook-Signature: forged\n      host: other\n      X-Ok: \"a\\r\\nInjected: 1\"\n      X-Fine: \"tab\\tok\"\n",
			want: []string{
				`9: "Bad Name" is not a valid header name`,
				"10: header X-Hook-Signature is set by walhook",
				"11: header host is set by walhook",
				"12: the value of header X-Ok contains a line break",
			},
		},
		{
			name: "webhook concurrency above the total",
			yaml: minimal + "    concurrency: 5\ndispatch:\n  concurrency: 4\n",
			want: []string{"8: concurrency 5 is more than dispatch.concurrency (4)"},
		},
		{
			name: "max_interval shorter than initial_interval",
			yaml: minimal + "    retry:\n      initial_interval: 1m\n      max_interval: 30s\n",
			want: []string{"10: retry.max_interval is shorter than initial_interval"},
		},
		{
			name: "duration overflow",
			yaml: minimal + "dispatch:\n  retention: 200000d\n",
			want: []string{`9: invalid duration "200000d"`},
		},
		{
			name: "duration without unit",
			yaml: minimal + "    timeout: 10\n",
			want: []string{`8: invalid duration "10"`},
		},
		{
			name: "duplicate key",
			yaml: minimal + "    url: https://other/\n",
			want: []string{`8: webhooks[0]: key "url" is repeated (first at line 7)`},
		},
		{
			name: "bad tables and models",
			yaml: `
database: {dsn: "postgres://h/db"}
models:
  - table: a.b.c
  - model: X
  - table: public.t
  - table: t
    model: T2
  - table: u
    relations:
      owner_id: {field: owner}
    computed:
      n: {args: [id]}
webhooks:
  - name: w
    url: https://h/
    models: [t2]
`,
			want: []string{
				`3: models[0].table "a.b.c"`,
				`4: models[1].table ""`,
				`6: table public.t is configured twice (also at line 5)`,
				"10: relation owner_id needs a table",
				"10: relation owner_id needs columns",
				"12: computed field n needs sql",
				`16: unknown model "t2" (did you mean "T2"?`,
			},
		},
		{
			name: "webhook options",
			yaml: `
database: {dsn: "postgres://h/db"}
models: [{table: t}]
webhooks:
  - url: ftp://h/
    headers: {"Bad Header": x, "X-Ok": y}
    format: netbox-v9
    signature: hmac
    coalesce: always
    body_template: "{{ .model "
`,
			want: []string{
				"4: webhooks[0] needs a name",
				`4: url "ftp://h/" is not an http(s) URL`,
				`5: "Bad Header" is not a valid header name`,
				`6: format "netbox-v9" must be netbox or netbox-v4`,
				`7: signature "hmac" must be netbox, standard-webhooks or both`,
				`8: coalesce "always" must be none or transaction`,
				"9: body_template:",
			},
		},
		{
			name: "url password is redacted",
			yaml: minimal + "  - name: other\n    url: ftp://user:hunter2@h/\n",
			want: []string{`9: url "ftp://user:xxxxx@h/" is not an http(s) URL`},
		},
		{
			name: "listen",
			yaml: minimal + "http:\n  listen: ${L}\n",
			env:  map[string]string{"L": ":9187"},
			want: []string{`9: http.listen ":9187" is not a loopback address: set http.token`},
		},
		{
			name: "listen without port",
			yaml: minimal + "http:\n  listen: localhost\n",
			want: []string{`9: http.listen "localhost": address localhost: missing port`},
		},
		{
			name: "duplicate key does not hide later list items",
			yaml: `
database: {dsn: "postgres://h/db"}
models: [{table: t}]
webhooks:
  - name: a
    url: https://h/
    name: b
  - name: c
    url: ftp://h/
`,
			want: []string{
				`6: webhooks[0]: key "name" is repeated (first at line 4)`,
				`8: webhook "c": url "ftp://h/" is not an http(s) URL`,
			},
		},
		{
			name: "a key reached through an alias is reported once",
			yaml: `
database: {dsn: "postgres://h/db"}
models: [{table: t}]
webhooks:
  - name: a
    url: https://h/
    retry: &r {max_attempts: 2, jitter: yes}
  - name: b
    url: https://h/
    retry: *r
`,
			want: []string{`6: unknown key "jitter" in webhooks[0].retry`},
		},
		{
			name: "merge cycle",
			yaml: "database: &d {dsn: x, <<: *d}\nmodels: [{table: t}]\nwebhooks: [{name: a, url: 'https://h/'}]\n",
			want: []string{"1: database: a merge (<<) includes the mapping it is in"},
		},
		{
			name: "merge of a scalar",
			yaml: minimal + "    <<: 5\n",
			want: []string{"8: webhooks[0]: a merge (<<) needs a mapping or a list of mappings, not a scalar"},
		},
		{
			name: "unknown anchor",
			yaml: minimal + "    secret: *nope\n",
			want: []string{"8: invalid YAML: alias *nope refers to no anchor &nope"},
		},
		{
			name: "control character",
			yaml: minimal + "    secret: a\x01b\n",
			want: []string{"8: invalid YAML: control characters are not allowed"},
		},
		{
			name: "invalid UTF-8",
			yaml: minimal + "    secret: a\xffb\n",
			want: []string{"8: invalid YAML: invalid leading UTF-8 octet"},
		},
		{
			name: "syntax error at line 1",
			yaml: "database: [\n",
			want: []string{"2: invalid YAML: did not find expected node content"},
		},
		{
			name: "bad indentation",
			yaml: "database:\n  dsn: x\n slot: y\n",
			want: []string{"3: invalid YAML: did not find expected key (in a mapping: check the indentation"},
		},
		{
			name: "syntax error in a second document",
			yaml: minimal + "---\nlog: [\n",
			want: []string{"10: invalid YAML: did not find expected node content"},
		},
		{
			name: "unset variable in a literal block",
			yaml: minimal[:len(minimal)-len("    url: https://hooks.example.com/netbox\n")] + "    url: https://h/\n    body_template: |\n      {\"a\": 1,\n       \"b\": \"${B}\"}\n",
			want: []string{"10: environment variable B is not set"},
		},
		{
			name: "aliases that multiply nodes",
			yaml: func() string {
				var b strings.Builder
				b.WriteString("database: {dsn: x}\nwebhooks: [{name: a, url: 'https://h/'}]\ncols: &c [" + strings.Repeat("id, ", 500) + "id]\n")
				b.WriteString("rel: &r {table: t, columns: *c}\nrels: &rs {")
				for i := range 500 {
					fmt.Fprintf(&b, "c%d: *r, ", i)
				}
				b.WriteString("x: *r}\nmodels: [" + strings.Repeat("{table: t, relations: *rs}, ", 500) + "{table: u}]\n")
				return b.String()
			}(),
			want: []string{
				`3: unknown key "cols"`,
				`4: unknown key "rel"`,
				`5: unknown key "rels"`,
				"3: the configuration is too large or expands too many aliases",
			},
		},
		{
			name: "log",
			yaml: minimal + "log:\n  level: verbose\n  format: text\n",
			want: []string{`9: log.level "verbose"`, `10: log.format "text" must be json or console`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, e := parseErr(t, y(tt.yaml), tt.env)
			checkProblems(t, e, tt.want)
		})
	}
}

func TestBadIdentifiers(t *testing.T) {
	for _, name := range []string{"my-slot", "Slot", "1slot", "slot.x", `"slot"`, "", strings.Repeat("s", 64), "sl ot", "ſlot"} {
		t.Run(name, func(t *testing.T) {
			src := strings.Replace(minimal, "  dsn:", "  slot: '"+strings.ReplaceAll(name, "'", "''")+"'\n  publication: '"+strings.ReplaceAll(name, "'", "''")+"'\n  dsn:", 1)
			_, e := parseErr(t, y(src), nil)
			if name == "" {
				// An empty name means the default.
				if e != nil {
					t.Fatalf("rejected:\n%v", e)
				}
				return
			}
			checkProblems(t, e, []string{
				`2: database.slot ` + strconv.Quote(name) + ` is not a valid name`,
				`3: database.publication ` + strconv.Quote(name) + ` is not a valid name`,
			})
		})
	}
	for _, name := range []string{"walhook", "_x", "slot_2", strings.Repeat("s", 63)} {
		if !ValidIdentifier(name) {
			t.Errorf("ValidIdentifier(%q) = false", name)
		}
	}
}

func TestErrorFormat(t *testing.T) {
	_, err := Parse("conf/walhook.yaml", y(minimal+"bogus: 1\ndispatch: {concurrency: 0}\n"), envOf(nil))
	want := "conf/walhook.yaml:8: unknown key \"bogus\" in the top level (known keys: database, models, webhooks, dispatch, http, log, tracing)\n" +
		"conf/walhook.yaml:9: dispatch.concurrency must be positive"
	if err == nil || err.Error() != want {
		t.Errorf("Error() =\n%v\nwant\n%s", err, want)
	}
	_, err = Parse("x.yaml", nil, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "x.yaml: the file is empty") {
		t.Errorf("empty: %v", err)
	}
	for _, tt := range []struct {
		p    Problem
		want string
	}{
		{Problem{"f.yaml", 3, "m"}, "f.yaml:3: m"},
		{Problem{"f.yaml", 0, "m"}, "f.yaml: m"},
		{Problem{"", 3, "m"}, "line 3: m"},
		{Problem{"", 0, "m"}, "m"},
	} {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.p, got, tt.want)
		}
	}
}

func TestParseNilLookupUsesEnvironment(t *testing.T) {
	t.Setenv("WALHOOK_TEST_DSN", "postgres://env/db")
	c, err := Parse("walhook.yaml", y(strings.Replace(minimal, "postgres://walhook@localhost:5432/app", "${WALHOOK_TEST_DSN}", 1)), nil)
	if err != nil || c.Database.DSN != "postgres://env/db" {
		t.Fatalf("Parse = %+v, %v", c, err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "walhook.yaml")
	if err := os.WriteFile(path, y(minimal+"    secret: ${WALHOOK_TEST_SECRET}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WALHOOK_TEST_SECRET", "from-env")
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.File != path || c.Webhooks[0].Secret != "from-env" {
		t.Errorf("config = %+v", c)
	}

	_, err = Load(filepath.Join(dir, "missing.yaml"))
	var ce *Error
	if err == nil || errors.As(err, &ce) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, y(minimal+"nope: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	if !errors.As(err, &ce) || ce.Error() != bad+`:8: unknown key "nope" in the top level (known keys: database, models, webhooks, dispatch, http, log, tracing)` {
		t.Errorf("bad file: %v", err)
	}
}

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"10s", 10 * time.Second, true},
		{"90m", 90 * time.Minute, true},
		{"1h30m", 90 * time.Minute, true},
		{"500ms", 500 * time.Millisecond, true},
		{"7d", 7 * 24 * time.Hour, true},
		{" 7d ", 7 * 24 * time.Hour, true},
		{"1.5d", 36 * time.Hour, true},
		{"0", 0, true},
		{"-1d", -24 * time.Hour, true},
		{"106751d", 106751 * 24 * time.Hour, true},
		{"106752d", 0, false}, // overflows int64 nanoseconds
		{"200000d", 0, false},
		{"d", 0, false},
		{"7D", 0, false},
		{"1h1d", 0, false},
		{"10", 0, false},
		{"soon", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseDuration(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestWants(t *testing.T) {
	off := false
	on := true
	tests := []struct {
		name  string
		w     Webhook
		model string
		event string
		want  bool
	}{
		{"all by default", Webhook{}, "Site", "deleted", true},
		{"model listed", Webhook{Models: []string{"Site", "Rack"}}, "Rack", "created", true},
		{"model not listed", Webhook{Models: []string{"Site"}}, "Rack", "created", false},
		{"model names are case-sensitive", Webhook{Models: []string{"site"}}, "Site", "created", false},
		{"event listed", Webhook{Events: []string{"created", "updated"}}, "Site", "updated", true},
		{"event not listed", Webhook{Events: []string{"created"}}, "Site", "deleted", false},
		{"both listed", Webhook{Models: []string{"Site"}, Events: []string{"deleted"}}, "Site", "deleted", true},
		{"model ok, event not", Webhook{Models: []string{"Site"}, Events: []string{"deleted"}}, "Site", "created", false},
		{"disabled", Webhook{Enabled: &off}, "Site", "created", false},
		{"explicitly enabled", Webhook{Enabled: &on, Events: []string{"created"}}, "Site", "created", true},
	}
	for _, tt := range tests {
		if got := tt.w.Wants(tt.model, tt.event); got != tt.want {
			t.Errorf("%s: Wants(%q, %q) = %v, want %v", tt.name, tt.model, tt.event, got, tt.want)
		}
	}

	// The same filters, as parsed from YAML.
	c, e := parseErr(t, y(`
database: {dsn: "postgres://h/db"}
models: [{table: dcim_site, model: Site}, {table: dcim_rack, model: Rack}]
webhooks:
  - {name: all, url: "https://h/"}
  - {name: sites, url: "https://h/", models: [Site], events: [created, deleted]}
  - {name: off, url: "https://h/", enabled: false}
  - {name: empty, url: "https://h/", models: [], events: []}
`), nil)
	if e != nil {
		t.Fatal(e)
	}
	want := map[string][]bool{ // Site created, Site updated, Rack deleted
		"all":   {true, true, true},
		"sites": {true, false, false},
		"off":   {false, false, false},
		"empty": {true, true, true},
	}
	for _, w := range c.Webhooks {
		got := []bool{w.Wants("Site", "created"), w.Wants("Site", "updated"), w.Wants("Rack", "deleted")}
		if !reflect.DeepEqual(got, want[w.Name]) {
			t.Errorf("webhook %s: Wants = %v, want %v", w.Name, got, want[w.Name])
		}
	}
}

func TestHelpers(t *testing.T) {
	for in, want := range map[string][2]string{
		"dcim_site":        {"public", "dcim_site"},
		"app.dcim_site":    {"app", "dcim_site"},
		" app.dcim_site  ": {"app", "dcim_site"},
	} {
		if s, n := SplitTable(in); s != want[0] || n != want[1] {
			t.Errorf("SplitTable(%q) = %q, %q", in, s, n)
		}
	}
	for in, want := range map[string]string{
		"postgres://u:secret@h/db": "postgres://u:xxxxx@h/db",
		"https://h/x":              "https://h/x",
		"://bad":                   "(unparseable URL)",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr bool
	}{
		{in: "200/s", want: 200},
		{in: "600/m", want: 10},
		{in: "600 / min", want: 10},
		{in: "1800/h", want: 0.5},
		{in: "0.5/s", want: 0.5},
		{in: "200", wantErr: true},
		{in: "0/s", wantErr: true},
		{in: "-1/s", wantErr: true},
		{in: "10/d", wantErr: true},
		{in: "NaN/s", wantErr: true},
		{in: "Inf/s", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseRate(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestDefaultWebhookConcurrency(t *testing.T) {
	for _, tt := range []struct{ total, hooks, want int }{{16, 1, 16}, {16, 2, 8}, {16, 5, 8}, {1, 3, 1}, {3, 2, 1}} {
		if got := DefaultWebhookConcurrency(tt.total, tt.hooks); got != tt.want {
			t.Errorf("DefaultWebhookConcurrency(%d, %d) = %d, want %d", tt.total, tt.hooks, got, tt.want)
		}
	}
	c, e := parseErr(t, y(minimal), nil)
	if e != nil {
		t.Fatal(e)
	}
	if c.Webhooks[0].Concurrency != 16 || c.Dispatch.FailedRetention.D() != 30*24*time.Hour {
		t.Errorf("defaults: concurrency %d, failed_retention %s", c.Webhooks[0].Concurrency, c.Dispatch.FailedRetention.D())
	}
}

func TestURLTargetHidesPathAndQuery(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://hooks.example.com", "https://hooks.example.com"},
		{"https://hooks.example.com/", "https://hooks.example.com"},
		{"https://hooks.slack.com/services/T0/B0/XXXX", "https://hooks.slack.com/…"},
		{"http://u:pw@10.0.0.1:8080/?token=abc", "http://10.0.0.1:8080/…"},
		{"::", "(unparseable URL)"},
	} {
		if got := URLTarget(tc.in); got != tc.want {
			t.Errorf("URLTarget(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSlotFailover(t *testing.T) {
	f := false
	tr := true
	for _, tc := range []struct {
		name                string
		yaml                string
		want                *bool
		line                int
		num                 int
		wantOn, wantProblem bool
	}{
		{name: "default on 17", yaml: "", num: 170004, wantOn: true},
		{name: "default off on 16", yaml: "", num: 160008},
		{name: "off on 17", yaml: "  slot_failover: false\n", want: &f, line: 4, num: 170004},
		{name: "on on 18", yaml: "  slot_failover: true\n", want: &tr, line: 4, num: 180001, wantOn: true},
		{name: "on on 16 is a problem", yaml: "  slot_failover: true\n", want: &tr, line: 4, num: 160008, wantProblem: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("t.yaml", []byte("database:\n  dsn: postgres://x@y/z\n  slot: s\n"+tc.yaml+"models:\n  - table: a\nwebhooks:\n  - name: w\n    url: http://x/\n"), func(string) (string, bool) { return "", false })
			if err != nil {
				t.Fatal(err)
			}
			d := c.Database
			if (d.SlotFailover == nil) != (tc.want == nil) || (d.SlotFailover != nil && *d.SlotFailover != *tc.want) {
				t.Errorf("SlotFailover = %v, want %v", d.SlotFailover, tc.want)
			}
			if tc.line != 0 && d.FailoverLine != tc.line {
				t.Errorf("FailoverLine = %d, want %d", d.FailoverLine, tc.line)
			}
			on, problem := d.WantFailover(tc.num)
			if on != tc.wantOn || problem != tc.wantProblem {
				t.Errorf("WantFailover(%d) = %v, %v; want %v, %v", tc.num, on, problem, tc.wantOn, tc.wantProblem)
			}
		})
	}
}
