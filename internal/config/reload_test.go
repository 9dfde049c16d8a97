package config

import (
	"reflect"
	"strings"
	"testing"
)

const reloadBase = `
database:
  dsn: postgres://walhook@localhost:5432/app
models:
  - table: dcim_site
    model: Site
    relations:
      region_id: {table: dcim_region, columns: [id, name]}
  - table: dcim_device
webhooks:
  - name: inventory
    url: https://hooks.example.com/netbox
    secret: s1
    conditions: {"and": [{"attr": "data.name", "op": "regex", "value": "^a"}]}
  - name: audit
    url: https://audit.example.com/
`

func TestCompare(t *testing.T) {
	cur, err := Parse("w.yaml", y(reloadBase), envOf(nil))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		edit func(string) string
		want Changes
	}{
		{"same file", func(s string) string { return s }, Changes{}},
		{"lines move", func(s string) string { return "\n# a comment\n\n" + s }, Changes{}},
		{"secret rotated", func(s string) string { return strings.Replace(s, "secret: s1", "secret: s2", 1) },
			Changes{WebhooksChanged: []string{"inventory"}}},
		{"webhook added and removed", func(s string) string {
			return strings.Replace(s, "  - name: audit\n    url: https://audit.example.com/", "  - name: crm\n    url: https://crm.example.com/", 1)
		}, Changes{WebhooksAdded: []string{"crm"}, WebhooksRemoved: []string{"audit"}}},
		{"rendering and a table", func(s string) string {
			s = strings.Replace(s, "columns: [id, name]", "columns: [id, name, slug]", 1)
			return strings.Replace(s, "  - table: dcim_device\n", "  - table: dcim_rack\n", 1)
		}, Changes{ModelsChanged: []string{"Site"}, TablesAdded: []string{"public.dcim_rack"}, TablesRemoved: []string{"public.dcim_device"}}},
		{"dispatch and log level", func(s string) string { return s + "dispatch:\n  poll_interval: 3s\nlog:\n  level: debug\n" },
			Changes{Dispatch: true, LogLevel: "debug"}},
		// The webhooks' default concurrency follows dispatch.concurrency.
		{"dispatch concurrency", func(s string) string { return s + "dispatch:\n  concurrency: 3\n" },
			Changes{Dispatch: true, WebhooksChanged: []string{"inventory", "audit"}}},
		{"restart keys", func(s string) string {
			return strings.Replace(s, "  dsn: postgres://walhook@localhost:5432/app", "  dsn: postgres://walhook@localhost:5433/app\n  slot: other", 1) +
				"http:\n  listen: 127.0.0.1:9999\n"
		}, Changes{Restart: []string{"database.dsn", "database.slot", "http.listen"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			text := tt.edit(reloadBase)
			next, err := Parse("w.yaml", y(text), envOf(nil))
			if err != nil {
				t.Fatal(err)
			}
			got := Compare(cur, next)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Compare:\n got %+v\nwant %+v", got, tt.want)
			}
			if (next.Hash == cur.Hash) != (text == reloadBase) {
				t.Errorf("hash %s vs %s: equal only for the same bytes", next.Hash, cur.Hash)
			}
		})
	}
}
