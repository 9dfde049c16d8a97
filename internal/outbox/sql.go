package outbox

import (
	"embed"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// The queue's statements, one per file. A statement names walhook's tables
// and shared fragments as {{name}} (see statementVars); Store expands them
// once, for its schema.
//
//go:embed sql/*.sql
var statementFiles embed.FS

// placeholder is a {{name}} in a statement.
var placeholder = regexp.MustCompile(`\{\{[a-z_]+\}\}`)

// openStatesSQL is OpenStates as an SQL list: the predicate of the partial
// index deliveries_object_open, which a statement must spell the same way
// for the planner to use the index.
var openStatesSQL = func() string {
	quoted := make([]string, len(OpenStates))
	for i, s := range OpenStates {
		quoted[i] = "'" + string(s) + "'"
	}
	return "(" + strings.Join(quoted, ", ") + ")"
}()

// statementVars are the values of the placeholders of s's statements.
func (s *Store) statementVars() map[string]string {
	return map[string]string{
		"{{deliveries}}":    s.deliveries,
		"{{attempts}}":      s.attempts,
		"{{dispatchers}}":   s.dispatchers,
		"{{open}}":          openStatesSQL,
		"{{attempts_kept}}": strconv.Itoa(AttemptsKept),
		"{{purge_batch}}":   strconv.Itoa(PurgeBatch),
	}
}

// statement returns sql/<name>.sql with its placeholders expanded. A
// missing file or an unknown placeholder is a programming error: it
// panics, and every test that makes a Store finds it.
func (s *Store) statement(name string, vars map[string]string) string {
	b, err := statementFiles.ReadFile("sql/" + name + ".sql")
	if err != nil {
		panic(fmt.Sprintf("outbox: statement %s: %v", name, err))
	}
	return placeholder.ReplaceAllStringFunc(string(b), func(p string) string {
		v, ok := vars[p]
		if !ok {
			panic(fmt.Sprintf("outbox: statement %s: unknown placeholder %s", name, p))
		}
		return v
	})
}
