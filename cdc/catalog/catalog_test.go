package catalog_test

import (
	"context"
	"os"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/test/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

func TestReadTable(t *testing.T) {
	ctx := context.Background()
	db, err := pgxpool.New(ctx, pg.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(ctx, `
		CREATE TABLE item (b text, dropped int, a int, g int GENERATED ALWAYS AS (a * 2) STORED, PRIMARY KEY (a, b));
		ALTER TABLE item DROP COLUMN dropped;
		CREATE TABLE full_t (id bigint PRIMARY KEY, n numeric);
		ALTER TABLE full_t REPLICA IDENTITY FULL;
		CREATE TABLE by_index (id int NOT NULL, code varchar(10) NOT NULL, v text);
		CREATE UNIQUE INDEX by_index_code ON by_index (code);
		ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
		CREATE VIEW item_view AS SELECT a FROM item`); err != nil {
		t.Fatal(err)
	}
	col := func(name, typ string, key, gen bool) catalog.Column {
		return catalog.Column{Name: name, TypeName: typ, Key: key, Generated: gen}
	}
	for _, tc := range []struct {
		name, table string
		relation    bool // ReadRelation instead of ReadTable
		want        *catalog.Table
	}{
		{name: "key, generated and dropped columns", table: "item", want: &catalog.Table{Kind: 'r', Identity: catalog.IdentityDefault,
			Columns:    []catalog.Column{col("b", "pg_catalog.text", true, false), col("a", "pg_catalog.int4", true, false), col("g", "pg_catalog.int4", false, true)},
			PrimaryKey: []string{"a", "b"}}},
		{name: "full identity", table: "full_t", want: &catalog.Table{Kind: 'r', Identity: catalog.IdentityFull,
			Columns:    []catalog.Column{col("id", "pg_catalog.int8", true, false), col("n", "pg_catalog.\"numeric\"", true, false)},
			PrimaryKey: []string{"id"}}},
		{name: "index identity, no primary key", table: "by_index", want: &catalog.Table{Kind: 'r', Identity: catalog.IdentityIndex,
			Columns:    []catalog.Column{col("id", "pg_catalog.int4", false, false), col("code", "pg_catalog.\"varchar\"", true, false), col("v", "pg_catalog.text", false, false)},
			PrimaryKey: []string{}}},
		{name: "a view is no table", table: "item_view"},
		{name: "a view is a relation", table: "item_view", relation: true, want: &catalog.Table{Kind: 'v', Identity: catalog.IdentityNothing,
			Columns: []catalog.Column{col("a", "pg_catalog.int4", false, false)}, PrimaryKey: []string{}}},
		{name: "missing", table: "nosuch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			read := catalog.ReadTable
			if tc.relation {
				read = catalog.ReadRelation
			}
			got, err := read(ctx, db, "public", tc.table)
			if err != nil {
				t.Fatal(err)
			}
			if got != nil {
				if got.OID == 0 || got.Schema != "public" || got.Name != tc.table {
					t.Errorf("table %d %s.%s", got.OID, got.Schema, got.Name)
				}
				got.OID, got.Schema, got.Name = 0, "", ""
				for i := range got.Columns {
					if got.Columns[i].TypeOID == 0 {
						t.Errorf("column %s without a type OID", got.Columns[i].Name)
					}
					got.Columns[i].TypeOID = 0
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
