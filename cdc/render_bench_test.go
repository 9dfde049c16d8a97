package cdc

import (
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/walhook/walhook/internal/config"
)

// BenchmarkRenderPlain renders the default body of a row of the capture
// benchmark's table (no relations or computed fields): the per-change CPU
// cost of the plain path, free of database noise.
func BenchmarkRenderPlain(b *testing.B) {
	m := &pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "item", ReplicaIdentity: 'd',
		Columns: []*pglogrepl.RelationMessageColumn{
			{Flags: 1, Name: "id", DataType: 23}, {Name: "name", DataType: 25}, {Name: "qty", DataType: 23},
			{Name: "price", DataType: 1700}, {Name: "tags", DataType: 1009}, {Name: "created", DataType: 1184},
		}}
	rel := newRelation(m, &config.Model{Model: "item", URL: "/api/items/{id}/"}, []string{"id"})
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
