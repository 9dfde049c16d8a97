package payload

import (
	"testing"
	"time"

	"github.com/walhook/walhook/internal/config"
)

// BenchmarkRenderPlain renders the default body of a row of the capture
// benchmark's table (no relations or computed fields): the per-change CPU
// cost of the plain path, free of database noise.
func BenchmarkRenderPlain(b *testing.B) {
	t := &TableDesc{ID: 1, Schema: "public", Name: "item", Identity: 'd', Cols: []ColDesc{
		{Key: true, Name: "id", OID: 23}, {Name: "name", OID: 25}, {Name: "qty", OID: 23},
		{Name: "price", OID: 1700}, {Name: "tags", OID: 1009}, {Name: "created", OID: 1184},
	}}
	rel := NewRelation(t, &config.Model{Model: "item", URL: "/api/items/{id}/"}, []string{"id"})
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
