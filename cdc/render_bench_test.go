package cdc

import (
	"testing"
	"time"

	"github.com/walhook/walhook/internal/config"
)

// BenchmarkRenderPlain renders the default body of a row of the capture
// benchmark's table (no relations or computed fields): the per-change CPU
// cost of the plain path, free of database noise.
func BenchmarkRenderPlain(b *testing.B) {
	t := &tableDesc{id: 1, schema: "public", name: "item", identity: 'd', cols: []colDesc{
		{key: true, name: "id", oid: 23}, {name: "name", oid: 25}, {name: "qty", oid: 23},
		{name: "price", oid: 1700}, {name: "tags", oid: 1009}, {name: "created", oid: 1184},
	}}
	rel := newRelation(t, &config.Model{Model: "item", URL: "/api/items/{id}/"}, []string{"id"})
	vals := row{{kind: 't', data: []byte("12345")}, {kind: 't', data: []byte("item 12345")}, {kind: 't', data: []byte("4")},
		{kind: 't', data: []byte("15431.25")}, {kind: 't', data: []byte("{a,b}")}, {kind: 't', data: []byte("2024-01-02 03:04:05.123456+00")}}
	var rd renderer
	at := time.Unix(1700000000, 123456000)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c := change{rel: rel, event: EventCreated, vals: vals}
		_ = rd.netboxBody(&c, at)
		_ = objectKey(rel, vals)
	}
}
