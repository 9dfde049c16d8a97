package payload

import (
	"testing"
	"time"

	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/internal/config"
)

// BenchmarkRenderPlain renders the default body of a row of the capture
// benchmark's table (no relations or computed fields): the per-change CPU
// cost of the plain path, free of database noise.
func BenchmarkRenderPlain(b *testing.B) {
	t := &catalog.Table{OID: 1, Schema: "public", Name: "item", Identity: catalog.IdentityDefault, PrimaryKey: []string{"id"}, Columns: []catalog.Column{
		{Key: true, Name: "id", TypeOID: 23}, {Name: "name", TypeOID: 25}, {Name: "qty", TypeOID: 23},
		{Name: "price", TypeOID: 1700}, {Name: "tags", TypeOID: 1009}, {Name: "created", TypeOID: 1184},
	}}
	rel := NewRelation(t, &config.Model{Model: "item", URL: "/api/items/{id}/"})
	vals := Row{{Kind: 't', Data: []byte("12345")}, {Kind: 't', Data: []byte("item 12345")}, {Kind: 't', Data: []byte("4")},
		{Kind: 't', Data: []byte("15431.25")}, {Kind: 't', Data: []byte("{a,b}")}, {Kind: 't', Data: []byte("2024-01-02 03:04:05.123456+00")}}
	var rd Renderer
	at := time.Unix(1700000000, 123456000)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c := Change{Rel: rel, Event: EventCreated, Vals: vals}
		_ = rd.NetboxBody(&c, at)
		_ = ObjectKey(rel, vals)
	}
}
