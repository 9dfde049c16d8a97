package config

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestParseConditions(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      any
		want    string // Condition.String(), "" for nil
		wantErr string
	}{
		{"nil", nil, "", ""},
		{"empty string", " ", "", ""},
		{"empty mapping", map[string]any{}, "", ""},
		{"single condition, default op", map[string]any{"attr": "data.status.value", "value": "active"}, `{"attr":"data.status.value","op":"eq","value":"active","negate":false}`, ""},
		{"set from YAML", map[string]any{"and": []any{map[string]any{"attr": "data.id", "op": "GT", "value": 5, "negate": true}}}, `{"and":[{"attr":"data.id","op":"gt","value":5,"negate":true}]}`, ""},
		{"set from JSON", `{"or": [{"attr": "a", "value": 1.5}, {"and": [{"attr": "b", "op": "in", "value": [1, "x", null]}]}]}`, `{"or":[{"attr":"a","op":"eq","value":1.5,"negate":false},{"and":[{"attr":"b","op":"in","value":[1,"x",null],"negate":false}]}]}`, ""},
		{"map[any]any", map[any]any{"or": []any{map[any]any{"attr": "a", "value": true}}}, `{"or":[{"attr":"a","op":"eq","value":true,"negate":false}]}`, ""},
		{"bad JSON", `{"and": [}`, "", "not valid ConditionSet JSON"},
		{"JSON with trailing text", `{} {}`, "", "text after the value"},
		{"not a mapping", []any{1}, "", "expected a condition set"},
		{"two logic keys", map[string]any{"and": []any{}, "or": []any{}}, "", `exactly one key, "and" or "or" (found and, or)`},
		{"logic with a condition key", map[string]any{"and": []any{}, "attr": "x"}, "", "exactly one key"},
		{"set of a non-list", map[string]any{"and": map[string]any{}}, "", "and: expected a list"},
		{"item not a mapping", map[string]any{"and": []any{"x"}}, "", "and[0]: expected a condition"},
		{"missing attr", map[string]any{"or": []any{map[string]any{"value": 1}}}, "", `or[0].attr: a condition needs "attr"`},
		{"empty path segment", map[string]any{"attr": "data..x", "value": 1}, "", "empty path segment"},
		{"missing value", map[string]any{"attr": "a"}, "", `needs a "value"`},
		{"unknown key", map[string]any{"attr": "a", "value": 1, "operator": "eq"}, "", `operator: unknown key "operator"`},
		{"unknown op", map[string]any{"attr": "a", "value": 1, "op": "ne"}, "", "op ne is not one of eq, gt, gte, lt, lte, in, contains, regex"},
		{"negate not bool", map[string]any{"attr": "a", "value": 1, "negate": "yes"}, "", "negate must be true or false"},
		{"gt with a string", map[string]any{"attr": "a", "value": "x", "op": "gt"}, "", "op gt cannot be used with a string value"},
		{"in with a string", map[string]any{"attr": "a", "value": "x", "op": "in"}, "", "op in cannot be used with a string value"},
		{"regex with a number", map[string]any{"attr": "a", "value": 1, "op": "regex"}, "", "op regex cannot be used with a number value"},
		{"null only eq", map[string]any{"attr": "a", "value": nil, "op": "contains"}, "", "op contains cannot be used with a null value"},
		{"bool contains", map[string]any{"attr": "a", "value": true, "op": "contains"}, `{"attr":"a","op":"contains","value":true,"negate":false}`, ""},
		{"mapping value", map[string]any{"attr": "a", "value": map[string]any{"x": 1}}, "", "not a mapping"},
		{"bad regex", map[string]any{"attr": "a", "value": "(?<=x)", "op": "regex"}, "", "invalid regular expression"},
		{"infinite number", map[string]any{"attr": "a", "value": math.Inf(1)}, "", "not a finite number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConditions(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if c != nil {
				got = c.String()
			}
			if got != tc.want {
				t.Errorf("= %s, want %s", got, tc.want)
			}
		})
	}
	c, err := ParseConditions(`{"attr": "n", "value": 12345678901234567890123}`)
	if err != nil || c.Value != json.Number("12345678901234567890123") {
		t.Errorf("big number = %#v, %v: want it exact", c, err)
	}
}

func TestConditionsAndTemplatesInConfig(t *testing.T) {
	src := minimal + `    conditions:
      and:
        - {attr: data.status.value, value: active}
        - or:
            - {attr: data.id, op: gt, value: x}
  - name: json
    url: https://h/
    conditions: '{"and": [{"attr": "a", "op": "bogus", "value": 1}]}'
  - name: tmpl
    url: https://h/
    body_template: |
      {"a": 1,
       "b": {{ .data.x }
  - name: ok
    url: https://h/
    conditions: {or: [{attr: data.x, value: [1, 2], op: in}]}
    body_template: '{{json .data}}'
`
	_, e := parseErr(t, y(src), nil)
	var got []string
	for _, p := range e.Problems {
		got = append(got, p.String())
	}
	want := []string{
		`walhook.yaml:12: webhook "inventory": conditions: and[1].or[0].op: op gt cannot be used with a string value`,
		`walhook.yaml:15: webhook "json": conditions: and[0].op: op bogus is not one of`,
		`walhook.yaml:20: webhook "tmpl": body_template: unexpected "}" in operand`,
	}
	if len(got) != len(want) {
		t.Fatalf("problems:\n%s", strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %s\nwant prefix %s", i, got[i], want[i])
		}
	}
	ok := minimal + "    conditions: {or: [{attr: data.x, value: [1, 2], op: in}]}\n"
	c, err := Parse("test.yaml", y(ok), nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Webhooks[0].Condition.String(); s != `{"or":[{"attr":"data.x","op":"in","value":[1,2],"negate":false}]}` {
		t.Errorf("compiled condition = %s", s)
	}
}

func TestRelationsAndComputedInConfig(t *testing.T) {
	src := `
database: {dsn: "postgres://h/db"}
models:
  - table: dcim_site
    relations:
      region_id: {table: dcim_region, columns: [id, name AS display, "a b c"]}
      "vlan_site, vlan_vid": {table: ipam_vlan, columns: [vid], key: [site_id]}
      tenant: {table: tenancy_tenant, columns: [id, id AS id]}
      group_id: {field: region, table: dcim_sitegroup, columns: [id]}
    computed:
      region: {sql: "SELECT 1"}
      n: {sql: "SELECT $1", args: [id, ""]}
webhooks:
  - name: w
    url: https://h/
`
	_, e := parseErr(t, y(src), nil)
	var got []string
	for _, p := range e.Problems {
		got = append(got, p.String())
	}
	want := []string{
		`walhook.yaml:5: relation region_id: column "a b c": write a column name, "name AS key" to render it under another key, or "<sql expression over r> AS key"`,
		`walhook.yaml:6: relation "vlan_site, vlan_vid" (a composite key) needs a field`,
		`walhook.yaml:6: relation vlan_site, vlan_vid: key names 1 columns for 2 foreign-key columns`,
		`walhook.yaml:7: relation tenant: key "id" is rendered twice in the nested object`,
		`walhook.yaml:8: relation group_id renders as "region", which relation region_id also uses`,
		`walhook.yaml:10: computed field region has the name of relation region_id`,
		`walhook.yaml:11: computed field n: args are column names of public.dcim_site`,
	}
	if len(got) != len(want) {
		t.Fatalf("problems:\n%s", strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %s\nwant prefix %s", i, got[i], want[i])
		}
	}
	c, err := Parse("test.yaml", y(`
database: {dsn: "postgres://h/db"}
models:
  - table: dcim_site
    relations:
      region_id: {table: dcim_region, columns: [id]}
      tenant: {table: tenancy_tenant, columns: [id]}
    computed:
      zeta: {sql: "SELECT 1"}
      alpha: {sql: "SELECT 2"}
webhooks:
  - name: w
    url: https://h/
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := c.Models[0]
	if m.Relations["region_id"].Field != "region" || m.Relations["tenant"].Field != "tenant" || m.Relations["tenant"].Line != 6 {
		t.Errorf("relation defaults: %+v", m.Relations)
	}
	if strings.Join(m.ComputedOrder, ",") != "zeta,alpha" {
		t.Errorf("computed order %v, want the file's", m.ComputedOrder)
	}
}

func TestParseRelationColumn(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    RelationColumn
		wantErr bool
	}{
		{in: "name", want: RelationColumn{Column: "name", As: "name"}},
		{in: "name AS display", want: RelationColumn{Column: "name", As: "display"}},
		{in: " level as _depth ", want: RelationColumn{Column: "level", As: "_depth"}},
		{in: "0 AS site_count", want: RelationColumn{Expr: "0", As: "site_count"}},
		{in: "coalesce(r.label, '#' || r.id) AS display", want: RelationColumn{Expr: "coalesce(r.label, '#' || r.id)", As: "display"}},
		{in: "(SELECT json_build_object('a', 1)\n  FROM t WHERE t.id = r.x) AS nested", want: RelationColumn{Expr: "(SELECT json_build_object('a', 1)\n  FROM t WHERE t.id = r.x)", As: "nested"}},
		{in: "a b c", wantErr: true},
		{in: "r.name", wantErr: true},
		{in: "", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseRelationColumn(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err == nil && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
