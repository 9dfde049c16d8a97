package payload

import (
	"fmt"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/config"
)

func TestRewriteParams(t *testing.T) {
	repl := func(n int) (string, error) {
		if n > 2 {
			return "", fmt.Errorf("sql uses $%d", n)
		}
		return fmt.Sprintf("<%d>", n), nil
	}
	for _, tc := range []struct{ name, in, want, wantErr string }{
		{"params", "SELECT count(*) FROM t WHERE a = $1 AND b = $2", "SELECT count(*) FROM t WHERE a = <1> AND b = <2>", ""},
		{"repeated and adjacent", "SELECT $1+$1,$2", "SELECT <1>+<1>,<2>", ""},
		{"string literal", "SELECT '$1', 'it''s $2', $1", "SELECT '$1', 'it''s $2', <1>", ""},
		{"escape string", `SELECT E'\'$1', $2`, `SELECT E'\'$1', <2>`, ""},
		{"quoted identifier", `SELECT "a$1""x" FROM t WHERE x = $1`, `SELECT "a$1""x" FROM t WHERE x = <1>`, ""},
		{"line comment", "SELECT $1 -- not $2\n, 1", "SELECT <1> -- not $2\n, 1", ""},
		{"block comment nested", "SELECT /* $1 /* $2 */ $3 */ $2", "SELECT /* $1 /* $2 */ $3 */ <2>", ""},
		{"dollar quoted", "SELECT $$ $1 $$, $tag$ $2 $tag$, $1", "SELECT $$ $1 $$, $tag$ $2 $tag$, <1>", ""},
		{"identifier with dollar", "SELECT a$1 FROM t", "SELECT a$1 FROM t", ""},
		{"trailing semicolons", "SELECT $1;; \n", "SELECT <1>", ""},
		{"out of range", "SELECT $3", "", "sql uses $3"},
		{"unterminated string", "SELECT 'x", "", "unterminated string"},
		{"unterminated dollar", "SELECT $a$ x", "", "unterminated dollar"},
		{"unterminated comment", "SELECT /* x", "", "unterminated comment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := rewriteParams(tc.in, repl)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("= %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestPlanComputedSQL(t *testing.T) {
	cols := []ColInfo{{Name: "id", TypeName: "pg_catalog.int8"}, {Name: "status", TypeName: `pg_catalog."varchar"`}}
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

func TestTemplateJSONKeepsOrder(t *testing.T) {
	tp := NewTemplater()
	p, err := tp.Payload(`{"event":"created","signal_received_timestamp":1.5,"model":"M","data":{"z":1,"a":{"y":2,"b":[1,{"k":"v","c":null}]},"n":12345678901234567890}}`, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := tp.parse("t", `{{json .data}}|{{json .data.a}}|{{json .data.z}}|{{.data.z}}|{{json .old}}|{{.timestamp}}|{{json .data.n}}|{{json "x\"y"}}|{{if eq .data.z 1}}one{{end}}`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tp.Execute(tmpl, p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"z":1,"a":{"y":2,"b":[1,{"k":"v","c":null}]},"n":12345678901234567890}|{"y":2,"b":[1,{"k":"v","c":null}]}|1|1|null|1.5|12345678901234567890|"x\"y"|one`
	if got != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
	// A map built in the template has no rendered text: sorted keys.
	b, _ := tp.appendJSON(nil, map[string]any{"b": 1, "a": []any{true, "s"}}, 0)
	if string(b) != `{"a":[true,"s"],"b":1}` {
		t.Errorf("map = %s", b)
	}
}
