package payload

import (
	"testing"

	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/internal/config"
)

func TestPlanComputedSQL(t *testing.T) {
	cols := []catalog.Column{{Name: "id", TypeName: "pg_catalog.int8"}, {Name: "status", TypeName: `pg_catalog."varchar"`}}
	cl, msg := planComputed("n", config.Computed{SQL: "SELECT count(*) FROM d WHERE site_id = $1 AND status = $2;", Args: []string{"id", "status"}}, cols, map[string]int{"id": 0, "status": 1})
	if msg != "" {
		t.Fatal(msg)
	}
	want := `SELECT walhook_args.n, to_json((SELECT count(*) FROM d WHERE site_id = (walhook_args.a1::pg_catalog.int8) AND status = (walhook_args.a2::pg_catalog."varchar")
)) FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS walhook_args(a1, a2, n)`
	if cl.SQL != want {
		t.Errorf("sql\n got %s\nwant %s", cl.SQL, want)
	}
}
