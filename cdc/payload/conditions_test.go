package payload

import (
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/config"
)

// condPayload is a decoded payload as templates and conditions see it.
func condPayload(t testing.TB) map[string]any {
	t.Helper()
	p, err := NewTemplater().Payload(`{"event":"updated","signal_received_timestamp":1700000000.123456,"model":"Site","data":{
		"id":7,"name":"ams1","status":{"value":"active","label":"Active"},"latitude":52.370216,"big":123456789012345678901234567890,
		"asn":null,"enabled":true,"region":{"id":1,"slug":"europe"},"tenant":null,
		"tags":[{"id":1,"slug":"alpha","color":"ff0000"},{"id":2,"slug":"beta","color":"00ff00"}],
		"vids":[10,20],"custom_fields":{"owner":"ops","rack_count":3},"empty":[]}}`,
		[]byte(`{"id":7,"name":"ams0","status":{"value":"planned","label":"Planned"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEvalCondition(t *testing.T) {
	payload := condPayload(t)
	for _, tc := range []struct {
		name    string
		cond    string // ConditionSet JSON
		want    bool
		wantErr string
	}{
		{"empty set matches", `{}`, true, ""},
		{"eq string", `{"attr": "data.status.value", "value": "active"}`, true, ""},
		{"eq string false", `{"attr": "data.status.value", "value": "planned"}`, false, ""},
		{"eq default op explicit", `{"attr": "data.name", "op": "eq", "value": "ams1"}`, true, ""},
		{"eq number", `{"attr": "data.id", "value": 7}`, true, ""},
		{"eq number as float", `{"attr": "data.id", "value": 7.0}`, true, ""},
		{"eq big numeric exact", `{"attr": "data.big", "value": 123456789012345678901234567890}`, true, ""},
		{"eq big numeric differs", `{"attr": "data.big", "value": 123456789012345678901234567891}`, false, ""},
		{"eq string is not number", `{"attr": "data.id", "value": "7"}`, false, ""},
		{"eq null", `{"attr": "data.asn", "value": null}`, true, ""},
		{"eq null false", `{"attr": "data.name", "value": null}`, false, ""},
		{"eq bool", `{"attr": "data.enabled", "value": true}`, true, ""},
		{"eq list", `{"attr": "data.vids", "value": [10, 20]}`, true, ""},
		{"eq list order matters", `{"attr": "data.vids", "value": [20, 10]}`, false, ""},
		{"negate", `{"attr": "data.status.value", "value": "active", "negate": true}`, false, ""},
		{"gt", `{"attr": "data.id", "op": "gt", "value": 6}`, true, ""},
		{"gt equal", `{"attr": "data.id", "op": "gt", "value": 7}`, false, ""},
		{"gte", `{"attr": "data.id", "op": "gte", "value": 7}`, true, ""},
		{"lt", `{"attr": "data.latitude", "op": "lt", "value": 52.4}`, true, ""},
		{"lte", `{"attr": "data.latitude", "op": "lte", "value": 52.370216}`, true, ""},
		{"lte false", `{"attr": "data.latitude", "op": "lte", "value": 52.37}`, false, ""},
		{"gt on a string", `{"attr": "data.name", "op": "gt", "value": 1}`, false, "cannot compare a string"},
		{"gt on null", `{"attr": "data.asn", "op": "gt", "value": 1}`, false, "cannot compare null"},
		{"in", `{"attr": "data.status.value", "op": "in", "value": ["planned", "active"]}`, true, ""},
		{"in false", `{"attr": "data.status.value", "op": "in", "value": ["planned"]}`, false, ""},
		{"in numbers", `{"attr": "data.id", "op": "in", "value": [1, 7]}`, true, ""},
		{"contains substring", `{"attr": "data.name", "op": "contains", "value": "ms"}`, true, ""},
		{"contains substring false", `{"attr": "data.name", "op": "contains", "value": "x"}`, false, ""},
		{"contains list item", `{"attr": "data.vids", "op": "contains", "value": 20}`, true, ""},
		{"contains object key", `{"attr": "data.custom_fields", "op": "contains", "value": "owner"}`, true, ""},
		{"contains on number", `{"attr": "data.id", "op": "contains", "value": 7}`, false, "contains needs"},
		{"contains number in string", `{"attr": "data.name", "op": "contains", "value": 1}`, false, "only contain a string"},
		{"regex anchored at start", `{"attr": "data.name", "op": "regex", "value": "ams\\d"}`, true, ""},
		{"regex not a search", `{"attr": "data.name", "op": "regex", "value": "ms1"}`, false, ""},
		{"regex on number", `{"attr": "data.id", "op": "regex", "value": "7"}`, false, "regex needs a string"},
		{"list maps over items", `{"attr": "data.tags.slug", "op": "contains", "value": "beta"}`, true, ""},
		{"list maps, eq whole list", `{"attr": "data.tags.id", "value": [1, 2]}`, true, ""},
		{"list maps, in", `{"attr": "data.tags.color", "op": "contains", "value": "0000ff"}`, false, ""},
		{"empty list maps to empty", `{"attr": "data.empty.slug", "value": []}`, true, ""},
		{"NetBox relative attr", `{"attr": "status.value", "value": "active"}`, true, ""},
		{"top-level key", `{"attr": "event", "value": "updated"}`, true, ""},
		{"model", `{"attr": "model", "op": "in", "value": ["Site", "Device"]}`, true, ""},
		{"old row", `{"attr": "old.status.value", "value": "planned"}`, true, ""},
		{"missing key", `{"attr": "data.nope", "value": 1}`, false, `no key "nope"`},
		{"through null", `{"attr": "data.tenant.slug", "value": "x"}`, false, "null"},
		{"through a string", `{"attr": "data.name.x", "value": "x"}`, false, "not an object"},
		{"and all true", `{"and": [{"attr": "data.id", "value": 7}, {"attr": "data.enabled", "value": true}]}`, true, ""},
		{"and one false", `{"and": [{"attr": "data.id", "value": 7}, {"attr": "data.enabled", "value": false}]}`, false, ""},
		{"and short-circuits", `{"and": [{"attr": "data.id", "value": 8}, {"attr": "data.nope", "value": 1}]}`, false, ""},
		{"or one true", `{"or": [{"attr": "data.id", "value": 8}, {"attr": "data.enabled", "value": true}]}`, true, ""},
		{"or none true", `{"or": [{"attr": "data.id", "value": 8}, {"attr": "data.enabled", "value": false}]}`, false, ""},
		{"or error", `{"or": [{"attr": "data.id", "value": 8}, {"attr": "data.nope", "value": 1}]}`, false, "nope"},
		{"empty and", `{"and": []}`, true, ""},
		{"empty or", `{"or": []}`, false, ""},
		{"logic is case-insensitive", `{"AND": [{"attr": "data.id", "value": 7}]}`, true, ""},
		{"nested", `{"and": [{"attr": "data.region.slug", "value": "europe"}, {"or": [{"attr": "data.status.value", "value": "planned"}, {"and": [{"attr": "data.tags.slug", "op": "contains", "value": "alpha"}, {"attr": "data.id", "op": "lt", "value": 10, "negate": true}]}]}]}`, false, ""},
		{"nested true", `{"and": [{"attr": "data.region.slug", "value": "europe"}, {"or": [{"attr": "data.status.value", "value": "planned"}, {"and": [{"attr": "data.tags.slug", "op": "contains", "value": "alpha"}, {"attr": "data.id", "op": "lt", "value": 10}]}]}]}`, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := config.ParseConditions(tc.cond)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			got, err := EvalCondition(c, payload)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if got != tc.want {
				t.Errorf("= %v, want %v", got, tc.want)
			}
		})
	}
}

// FuzzConditions checks that parsing and evaluating any condition set on any
// payload never panics.
func FuzzConditions(f *testing.F) {
	f.Add(`{"and": [{"attr": "data.status.value", "value": "active"}, {"or": [{"attr": "data.tags.slug", "op": "contains", "value": "a"}]}]}`,
		`{"event":"created","model":"Site","data":{"status":{"value":"active"},"tags":[{"slug":"a"},null]}}`)
	f.Add(`{"attr": "data.n", "op": "gte", "value": 1e5}`, `{"data":{"n":1e400}}`)
	f.Add(`{"attr": "a.b.c", "op": "regex", "value": "(x|y)+"}`, `{"a":[{"b":[{"c":"x"}]}]}`)
	f.Add(`{"attr": "x", "op": "in", "value": [1, "1", null, [1]]}`, `{"data":{"x":[1]}}`)
	f.Fuzz(func(t *testing.T, cond, payload string) {
		c, err := config.ParseConditions(cond)
		if err != nil {
			return
		}
		tp := NewTemplater()
		v, err := tp.decode([]byte(payload))
		if err != nil {
			return
		}
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		_, _ = EvalCondition(c, m)
	})
}
