package payload

import (
	"fmt"
	"strings"
	"testing"
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
