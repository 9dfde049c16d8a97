package cdc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/config"
)

// fixtureSQL is the cut-down NetBox-like schema of testdata/netbox.sql.
func fixtureSQL(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("testdata/netbox.sql")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// lookupCounter counts relation and computed-field queries on the source pool.
type lookupCounter struct{ n atomic.Int64 }

func (c *lookupCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.Contains(d.SQL, "WITH ORDINALITY") || strings.HasPrefix(d.SQL, "SELECT 1, to_json(") {
		c.n.Add(1)
	}
	return ctx
}

func (c *lookupCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// traceSource replaces the source pool by one whose queries c counts.
func (b *bundle) traceSource(c *lookupCounter) {
	b.T.Helper()
	pc, err := pgxpool.ParseConfig(b.DSN)
	if err != nil {
		b.T.Fatal(err)
	}
	for k, v := range cdc.SessionParams {
		pc.ConnConfig.RuntimeParams[k] = v
	}
	pc.ConnConfig.Tracer = c
	if b.Source, err = pgxpool.NewWithConfig(context.Background(), pc); err != nil {
		b.T.Fatal(err)
	}
	b.T.Cleanup(b.Source.Close)
}

// dataOf returns the raw "data" object of a default body.
func dataOf(t *testing.T, raw string) string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatalf("body %s: %v", raw, err)
	}
	return string(m["data"])
}

func TestRelations(t *testing.T) {
	t.Parallel()
	b := setup(t, fixtureSQL(t), `
  - table: dcim_site
    model: Site
    exclude: [comments, created, last_updated]
    rename: {custom_field_data: custom_fields}
    url: /api/dcim/sites/{id}/
    relations:
      region_id: {table: dcim_region, columns: [id, name AS display, name, slug, active], url: "/api/dcim/regions/{id}/"}
      tenant_id: {table: tenancy_tenant, columns: [id, name, slug]}
  - table: dcim_interface
    model: Interface
    exclude: [device_id]
    relations:
      "vlan_site_id, vlan_vid": {field: vlan, table: ipam_vlan, columns: [vid, name]}
      tenant_slug: {field: tenant, table: tenancy_tenant, key: [slug], columns: [id, slug]}`)
	b.Start()
	b.Exec(`INSERT INTO dcim_site (name, slug, region_id, tenant_id, custom_field_data, comments) VALUES ('ams1', 'ams1', 1, 9, '{"cf": 1}', 'x')`)
	b.Exec(`INSERT INTO dcim_site (name, slug, status, region_id, tenant_id) VALUES ('sin1', 'sin1', 'planned', NULL, 1)`)
	b.Exec(`BEGIN;
		INSERT INTO ipam_vlan VALUES (1, 100, 'mgmt');
		INSERT INTO dcim_interface (name, vlan_site_id, vlan_vid, tenant_slug) VALUES ('eth0', 1, 100, 'globex'), ('eth1', NULL, NULL, NULL), ('eth2', 1, NULL, 'acme');
		COMMIT`)
	b.Exec(`UPDATE dcim_site SET region_id = 2 WHERE id = 1`)
	b.Exec(`DELETE FROM dcim_site WHERE id = 2`)
	b.WaitRows(2 + 2 + 3*2 + 1 + 2)
	europe := `{"id":1,"url":"/api/dcim/regions/1/","display":"Europe","name":"Europe","slug":"europe","active":true}`
	asia := `{"id":2,"url":"/api/dcim/regions/2/","display":"Asia","name":"Asia","slug":"asia","active":false}`
	ds := b.Deliveries("webhook = 'a'")
	for i, tc := range []struct {
		name, event, data string
	}{
		{"dangling id renders null", "created", `{"id":1,"url":"/api/dcim/sites/1/","custom_fields":{"cf": 1},"name":"ams1","slug":"ams1","status":"active","region":` + europe + `,"tenant":null}`},
		{"null FK renders null", "created", `{"id":2,"url":"/api/dcim/sites/2/","custom_fields":{},"name":"sin1","slug":"sin1","status":"planned","region":null,"tenant":{"id":1,"name":"Acme","slug":"acme"}}`},
		{"composite key and key option", "created", `{"id":1,"name":"eth0","vlan":{"vid":100,"name":"mgmt"},"tenant":{"id":2,"slug":"globex"}}`},
		{"all null", "created", `{"id":2,"name":"eth1","vlan":null,"tenant":null}`},
		{"part of a composite key null", "created", `{"id":3,"name":"eth2","vlan":null,"tenant":{"id":1,"slug":"acme"}}`},
		{"related row read after commit", "updated", `{"id":1,"url":"/api/dcim/sites/1/","custom_fields":{"cf": 1},"name":"ams1","slug":"ams1","status":"active","region":` + asia + `,"tenant":null}`},
		{"delete with keys only", "deleted", `{"id":2,"url":"/api/dcim/sites/2/"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if i >= len(ds) {
				t.Fatalf("only %d deliveries", len(ds))
			}
			if ds[i].Event != tc.event {
				t.Errorf("event %s, want %s", ds[i].Event, tc.event)
			}
			if got := dataOf(t, ds[i].Raw); got != tc.data {
				t.Errorf("data\n got %s\nwant %s", got, tc.data)
			}
		})
	}
}

func TestComputed(t *testing.T) {
	t.Parallel()
	b := setup(t, fixtureSQL(t), `
  - table: dcim_site
    model: Site
    exclude: [created, last_updated, custom_field_data, comments, region_id, tenant_id, slug]
    on_lookup_error: omit
    computed:
      device_count: {sql: "SELECT count(*) FROM dcim_device WHERE site_id = $1 AND status = $2", args: [id, status]}
      tags:
        sql: |
          SELECT coalesce(json_agg(json_build_object('id', t.id, 'name', t.name, 'slug', t.slug, 'color', t.color) ORDER BY t.name), '[]')
          FROM extras_taggeditem ti JOIN extras_tag t ON t.id = ti.tag_id
          WHERE ti.content_type_id = 1 AND ti.object_id = $1 -- a comment with $9 and 'quotes'
        args: [id]
      broken: {sql: "SELECT 1 / (length($1) - length($1))", args: [name]}
      region_total: {sql: "SELECT count(*) FROM dcim_region;"}`)
	b.Start()
	b.Exec(`BEGIN;
		INSERT INTO dcim_site (id, name, slug) VALUES (1, 'ams1', 'ams1');
		INSERT INTO dcim_device (name, site_id, status) VALUES ('d1', 1, 'active'), ('d2', 1, 'active'), ('d3', 1, 'planned');
		INSERT INTO extras_taggeditem (object_id, content_type_id, tag_id) VALUES (1, 1, 2), (1, 1, 1), (1, 2, 1);
		COMMIT`)
	b.WaitRows(2) // computed fields are read after commit: let it be read before the delete
	b.Exec(`BEGIN; DELETE FROM dcim_device; DELETE FROM extras_taggeditem; DELETE FROM dcim_site; COMMIT`)
	b.WaitRows(4)
	ds := b.Deliveries("webhook = 'a'")
	tags := `[{"id" : 1, "name" : "Alpha", "slug" : "alpha", "color" : "ff0000"}, {"id" : 2, "name" : "Beta", "slug" : "beta", "color" : "00ff00"}]`
	for i, want := range []string{
		// Two arguments; json kept as written; a failing query leaves its field out.
		`{"id":1,"name":"ams1","status":"active","device_count":2,"tags":` + tags + `,"region_total":2}`,
		// Keys only: a field whose arguments are not all keys is left out.
		`{"id":1,"tags":[],"region_total":2}`,
	} {
		if got := dataOf(t, ds[i].Raw); got != want {
			t.Errorf("%s data\n got %s\nwant %s", ds[i].Event, got, want)
		}
	}
}

func TestChoicesAndIgnoreChanges(t *testing.T) {
	t.Parallel()
	b := setup(t, fixtureSQL(t)+`; ALTER TABLE dcim_site REPLICA IDENTITY FULL`, `
  - table: dcim_site
    model: Site
    exclude: [created, custom_field_data, comments, region_id, tenant_id, slug]
    choices:
      status: {active: Active, planned: Planned}
    ignore_changes: [last_updated, comments]`)
	b.Start()
	b.Exec(`INSERT INTO dcim_site (id, name, slug, status, last_updated) VALUES (1, 'a', 'a', 'planned', '2024-01-01'), (2, 'b', 'b', 'decommissioning', '2024-01-01')`)
	sent := 0
	for i, tc := range []struct {
		name, sql string
		sends     bool
	}{
		{"only ignored columns", `UPDATE dcim_site SET last_updated = '2024-02-02', comments = 'c' WHERE id = 1`, false},
		{"no change at all", `UPDATE dcim_site SET name = name WHERE id = 1`, false},
		{"a watched column too", `UPDATE dcim_site SET last_updated = '2024-03-03', status = 'active' WHERE id = 1`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b.Exec(tc.sql)
			// A change that is always sent, committed after: once it is in
			// the outbox, so is anything from tc.sql.
			b.Exec(`UPDATE dcim_site SET name = name || '.' WHERE id = 2`)
			if tc.sends {
				sent++
			}
			b.WaitRows(4 + i + 1 + sent)
			if got := b.Count("event = 'updated' AND object_key = '1'"); got != sent {
				t.Errorf("%d updates sent for site 1, want %d", got, sent)
			}
		})
	}
	ds := b.Deliveries("webhook = 'a' AND event = 'created'")
	for i, want := range []string{`"status":{"value":"planned","label":"Planned"}`, `"status":{"value":"decommissioning","label":"decommissioning"}`} {
		if !strings.Contains(ds[i].Raw, want) {
			t.Errorf("body %s lacks %s", ds[i].Raw, want)
		}
	}
	if upd := b.Deliveries("event = 'updated' AND object_key = '1'"); len(upd) == 1 && !strings.Contains(upd[0].Raw, `"status":{"value":"active","label":"Active"}`) {
		t.Errorf("update body %s", upd[0].Raw)
	}
}

func TestBodyTemplate(t *testing.T) {
	t.Parallel()
	b := setup(t, fixtureSQL(t)+`; ALTER TABLE dcim_site REPLICA IDENTITY FULL`, "  - table: dcim_site")
	b.Reconfigure(`
  - table: dcim_site
    model: Site
    exclude: [created, last_updated, custom_field_data, comments, tenant_id]
    relations:
      region_id: {table: dcim_region, columns: [id, slug]}`, `
  - name: plain
    url: http://127.0.0.1:1/p
  - name: tmpl
    url: http://127.0.0.1:1/t
    content_type: application/json
    body_template: |
      {"kind": "{{.event}}", "model": "{{.model}}", "name": {{json .data.name}}, "region": {{json .data.region.slug}},
       "was": {{with .old}}{{json .region.slug}}{{else}}null{{end}}, "at": {{.timestamp}}, "data": {{json .data}}}
  - name: bad
    url: http://127.0.0.1:1/b
    body_template: '{{.data.name.first}}'`)
	b.Start()
	b.Exec(`INSERT INTO dcim_site (id, name, slug, region_id) VALUES (1, 'ams1', 'ams1', 1)`)
	b.Exec(`UPDATE dcim_site SET region_id = 2 WHERE id = 1`)
	b.WaitRows(6)
	plain := b.Deliveries("webhook = 'plain'")
	tmpl := b.Deliveries("webhook = 'tmpl'")
	for i, want := range []struct{ kind, region, was string }{{"created", "europe", "<nil>"}, {"updated", "asia", "europe"}} {
		body := tmpl[i].Body
		if body["kind"] != want.kind || body["model"] != "Site" || body["name"] != "ams1" || body["region"] != want.region || fmt.Sprint(body["was"]) != want.was {
			t.Errorf("template body %s", tmpl[i].Raw)
		}
		if body["at"] != plain[i].Body["signal_received_timestamp"] {
			t.Errorf("timestamp %v, want %v", body["at"], plain[i].Body["signal_received_timestamp"])
		}
		// json writes .data exactly as the default body has it.
		if !strings.Contains(tmpl[i].Raw, `"data": `+dataOf(t, plain[i].Raw)+`}`) {
			t.Errorf("template data differs from the default body:\n%s\n%s", tmpl[i].Raw, plain[i].Raw)
		}
	}
	// A template that fails at render time: stored failed, with the error
	// and the default body.
	rows, err := b.DB.Query(context.Background(), `SELECT state, coalesce(last_error, ''), attempts, body FROM walhook.deliveries WHERE webhook = 'bad' ORDER BY commit_lsn, seq`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var state, lastErr, body string
		var attempts int
		if err := rows.Scan(&state, &lastErr, &attempts, &body); err != nil {
			t.Fatal(err)
		}
		if state != "failed" || attempts != 0 || !strings.HasPrefix(lastErr, "body_template: ") || !strings.Contains(lastErr, "first") || body != plain[n].Raw {
			t.Errorf("bad template row: state %s attempts %d error %q body %s", state, attempts, lastErr, body)
		}
		n++
	}
	if rows.Err() != nil || n != 2 {
		t.Errorf("%d rows for the failing template (%v)", n, rows.Err())
	}
	if c := b.Count("webhook <> 'bad' AND state <> 'pending'"); c != 0 {
		t.Errorf("%d other rows are not pending", c)
	}
	// A large transaction (written with COPY, the small ones above with
	// INSERT): rows stored failed get last_attempt_at, the change's commit
	// time, so that dispatch.failed_retention deletes them (issue 24: they
	// were kept forever), and no other row does.
	b.Exec(`INSERT INTO dcim_site (id, name, slug, region_id) SELECT g, 's' || g, 's' || g, 1 FROM generate_series(10, 79) AS g`)
	b.WaitRows(6 + 3*70)
	if c := b.Count("webhook = 'bad' AND last_attempt_at IS DISTINCT FROM committed_at"); c != 0 {
		t.Errorf("%d rows failed at capture without last_attempt_at = committed_at", c)
	}
	if c := b.Count("webhook <> 'bad' AND last_attempt_at IS NOT NULL"); c != 0 {
		t.Errorf("%d rows not failed have a last_attempt_at", c)
	}
}

func TestConditionsFilterDeliveries(t *testing.T) {
	t.Parallel()
	b := setup(t, fixtureSQL(t), "  - table: dcim_site")
	b.Reconfigure(`
  - table: dcim_site
    model: Site
    exclude: [created, last_updated, custom_field_data, comments, tenant_id]
    choices: {status: {active: Active, planned: Planned}}
    relations:
      region_id: {table: dcim_region, columns: [id, slug]}`, `
  - name: all
    url: http://127.0.0.1:1/a
  - name: active_regional
    url: http://127.0.0.1:1/b
    conditions:
      and:
        - {attr: data.status.value, value: active}
        - {attr: data.region.slug, op: in, value: [europe, asia]}
  - name: netbox_style
    url: http://127.0.0.1:1/c
    conditions: '{"or": [{"attr": "status.value", "value": "planned"}, {"attr": "name", "op": "regex", "value": "^x"}]}'`)
	b.Start()
	b.Exec(`INSERT INTO dcim_site (id, name, slug, status, region_id) VALUES (1, 'a', 'a', 'active', 1), (2, 'b', 'b', 'active', NULL), (3, 'c', 'c', 'planned', 2), (4, 'xyz', 'x', 'offline', NULL)`)
	b.Exec(`DELETE FROM dcim_site WHERE id = 1`) // keys only: the attrs are missing, nothing is sent
	b.WaitRows(5 + 1 + 2)
	for hook, want := range map[string]string{"active_regional": "1", "netbox_style": "3,4"} {
		var keys string
		if err := b.DB.QueryRow(context.Background(), `SELECT string_agg(object_key, ',' ORDER BY object_key) FROM walhook.deliveries WHERE webhook = $1`, hook).Scan(&keys); err != nil {
			t.Fatal(err)
		}
		if keys != want {
			t.Errorf("webhook %s got keys %s, want %s", hook, keys, want)
		}
	}
}

func TestLookupsAreBatched(t *testing.T) {
	t.Parallel()
	b := setup(t, fixtureSQL(t), `
  - table: dcim_site
    model: Site
    relations:
      region_id: {table: dcim_region, columns: [id, slug]}
      tenant_id: {table: tenancy_tenant, columns: [id, slug]}
    computed:
      device_count: {sql: "SELECT count(*) FROM dcim_device WHERE site_id = $1", args: [id]}`)
	var qc lookupCounter
	b.traceSource(&qc)
	b.Start()
	qc.n.Store(0) // start-up checks run each query once
	// One transaction of 1,200 rows: chunks of 500, 500 and 200, each with
	// one query per relation and one for the computed field.
	b.Exec(`INSERT INTO dcim_site (id, name, slug, region_id, tenant_id) SELECT g, 's' || g, 's' || g, 1 + g % 2, 1 + g % 2 FROM generate_series(1, 1200) g`)
	b.WaitRows(2400)
	if n := qc.n.Load(); n != 9 {
		t.Errorf("%d lookup queries for 1,200 rows in one transaction, want 9 (3 chunks x 3)", n)
	}
	// Single-row transactions: one query per field each; a null FK needs none.
	qc.n.Store(0)
	for i := 0; i < 3; i++ {
		b.Exec(`INSERT INTO dcim_site (id, name, slug, region_id) VALUES ($1, 'x', 'x', 1)`, 2000+i)
	}
	b.WaitRows(2406)
	if n := qc.n.Load(); n != 6 {
		t.Errorf("%d lookup queries for 3 single-row transactions, want 6", n)
	}
	last := b.Deliveries("webhook = 'a' AND object_key = '1200'")
	if len(last) != 1 || !strings.Contains(last[0].Raw, `"region":{"id":1,"slug":"europe"},"tenant":{"id":1,"slug":"acme"},"device_count":0}`) {
		t.Errorf("row 1200: %v", last)
	}
}

func TestLookupProblemsAreConfigErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, fixtureSQL(t), `
  - table: dcim_site
    relations:
      region_id: {table: dcim_region, columns: [id, nope]}
      tenant_id: {table: tenancy_missing, columns: [id]}
      slug: {field: name, table: dcim_region, columns: [id]}
    computed:
      bad_sql: {sql: "SELEC 1", args: [id]}
      bad_arg: {sql: "SELECT $2", args: [id]}
      no_col: {sql: "SELECT 1", args: [nope]}
      status: {sql: "SELECT 1"}
    snapshot:
      exclude: [nope]
      computed:
        name: {sql: "SELECT 1", args: [id]}`)
	c, err := cdc.New(cdc.Options{Config: b.Cfg, Source: b.Source, Outbox: b.DB})
	if err != nil {
		t.Fatal(err)
	}
	err = c.Prepare(context.Background())
	var ce *config.Error
	if !asConfigError(err, &ce) {
		t.Fatalf("Prepare = %v, want config problems", err)
	}
	msg := err.Error()
	for _, want := range []string{
		`test.yaml:9: model dcim_site: relation region_id: unknown column "nope" of public.dcim_region`,
		`test.yaml:10: model dcim_site: relation tenant_id: table public.tenancy_missing does not exist`,
		`test.yaml:11: model dcim_site: relation slug renders as "name", like column name`,
		`test.yaml:13: model dcim_site: computed field bad_sql: sql: syntax error`,
		`test.yaml:14: model dcim_site: computed field bad_arg: sql uses $2 but args lists 1 column(s)`,
		`test.yaml:15: model dcim_site: computed field no_col: args names unknown column "nope"`,
		`test.yaml:16: model dcim_site: computed field status clashes with column status`,
		`test.yaml:7: model dcim_site: snapshot.exclude names unknown column "nope" of public.dcim_site`,
		`test.yaml:7: model dcim_site: in snapshots column slug renders as "name", like column name`,
		`test.yaml:20: model dcim_site: snapshot computed field name clashes with column slug: exclude or rename it in snapshot`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q:\n%s", want, msg)
		}
	}
	if len(ce.Problems) != 10 {
		t.Errorf("%d problems, want 10:\n%s", len(ce.Problems), msg)
	}
}
