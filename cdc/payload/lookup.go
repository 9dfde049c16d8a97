package payload

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walhook/walhook/internal/config"
)

// LookupTimeout is the statement_timeout of each lookup query.
const LookupTimeout = 5 * time.Second

// Queryer runs queries: a pool, a connection or a transaction.
type Queryer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ColInfo is a column of a captured or related table.
type ColInfo struct {
	Name     string
	OID      uint32
	TypeName string // schema-qualified, quoted type name without modifiers (for casts)
}

// TableColumns returns the columns of schema.name in attnum order (nil when
// the table does not exist). Views are accepted: a relation may point at one.
func TableColumns(ctx context.Context, q Queryer, schema, name string) ([]ColInfo, error) {
	rows, err := q.Query(ctx, `
		SELECT a.attname::text, a.atttypid, quote_ident(tn.nspname) || '.' || quote_ident(t.typname)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
		ORDER BY a.attnum`, schema, name)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, name, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ColInfo, error) {
		var c ColInfo
		err := r.Scan(&c.Name, &c.OID, &c.TypeName)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, name, err)
	}
	return out, nil
}

// tablePrimaryKey returns the primary-key columns of schema.name in key order.
func tablePrimaryKey(ctx context.Context, q Queryer, schema, name string) ([]string, error) {
	rows, err := q.Query(ctx, `
		SELECT a.attname::text FROM pg_index i
		JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary
		ORDER BY array_position(i.indkey::int2[], a.attnum)`, schema, name)
	if err != nil {
		return nil, fmt.Errorf("read primary key of %s.%s: %w", schema, name, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// LookupPlan holds a model's relation and computed-field queries, resolved
// against the columns of one version of its table.
type LookupPlan struct {
	Rels  []*RelLookup
	Comps []*CompLookup
}

// RelLookup renders one relation: a foreign key as a nested object.
type RelLookup struct {
	Key      string // the config key (FK column or columns)
	field    string
	FK       []int // indexes of the FK columns in the captured row
	SQL      string
	Sel      []uint32 // type OIDs of the selected related columns
	out      []relOut // keys of the nested object, in order
	urlAt    int      // "url" is rendered before out[urlAt]; -1: no url
	urlParts []urlPart
	// Table is the related table ("schema.name"), refKey the columns the
	// foreign key refers to; imageSQL renders the nested object from row
	// images (json objects) instead of the table: a related row deleted in
	// the change's own transaction renders from its old image.
	Table    string
	RefKey   []string
	ImageSQL string
	LogLimit
}

type relOut struct {
	name string
	sel  int // index into the selected columns
}

// CompLookup is one computed field.
type CompLookup struct {
	Name string
	Args []int // indexes of the argument columns in the captured row
	SQL  string
	Snap bool // a snapshot field (config Snapshot.Computed), not rendered in "data"
	LogLimit
}

// LogLimit keeps a failing lookup from logging on every chunk.
type LogLimit struct {
	last       time.Time
	suppressed int
}

// Allow reports whether a line may be logged now (one a minute) and how many
// were suppressed since the last one.
func (l *LogLimit) Allow() (bool, int) {
	if time.Since(l.last) < time.Minute {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.last, l.suppressed = time.Now(), 0
	return true, n
}

// LookupProblem is a relation or computed field that cannot be planned.
type LookupProblem struct {
	line int
	Msg  string
}

// PlanLookups builds the queries of model m for a table whose columns, in
// row order, are cols. Relations and computed fields with problems are left
// out of the plan and reported.
func PlanLookups(ctx context.Context, q Queryer, m *config.Model, cols []ColInfo) (*LookupPlan, []LookupProblem, error) {
	if len(m.Relations) == 0 && len(m.Computed) == 0 && (m.Snapshot == nil || len(m.Snapshot.Computed) == 0) {
		return nil, nil, nil
	}
	index := map[string]int{}
	for i, c := range cols {
		index[c.Name] = i
	}
	var probs []LookupProblem
	plan := &LookupPlan{}
	used := map[int]string{} // FK column -> relation
	for _, key := range slices.Sorted(maps.Keys(m.Relations)) {
		r := m.Relations[key]
		rl, msg, err := planRelation(ctx, q, m, key, r, cols, index)
		if err != nil {
			return nil, nil, err
		}
		if msg == "" {
			for _, c := range rl.FK {
				if other, dup := used[c]; dup {
					msg = fmt.Sprintf("column %q is already rendered by relation %s", cols[c].Name, other)
				}
			}
		}
		if msg != "" {
			probs = append(probs, LookupProblem{r.Line, fmt.Sprintf("model %s: relation %s: %s", m.Model, key, msg)})
			continue
		}
		for _, c := range rl.FK {
			used[c] = key
		}
		plan.Rels = append(plan.Rels, rl)
	}
	for _, name := range m.ComputedOrder {
		c := m.Computed[name]
		cl, msg := planComputed(name, c, cols, index)
		if msg != "" {
			probs = append(probs, LookupProblem{c.Line, fmt.Sprintf("model %s: computed field %s: %s", m.Model, name, msg)})
			continue
		}
		plan.Comps = append(plan.Comps, cl)
	}
	if sn := m.Snapshot; sn != nil {
		for _, name := range sn.ComputedOrder {
			c := sn.Computed[name]
			cl, msg := planComputed(name, c, cols, index)
			if msg != "" {
				probs = append(probs, LookupProblem{c.Line, fmt.Sprintf("model %s: snapshot computed field %s: %s", m.Model, name, msg)})
				continue
			}
			cl.Snap = true
			plan.Comps = append(plan.Comps, cl)
		}
	}
	return plan, probs, nil
}

func planRelation(ctx context.Context, q Queryer, m *config.Model, key string, r config.Relation, cols []ColInfo, index map[string]int) (*RelLookup, string, error) {
	rl := &RelLookup{Key: key, field: r.Field, urlAt: -1}
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name
	}
	for _, c := range r.FK {
		i, ok := index[c]
		if !ok {
			return nil, fmt.Sprintf("unknown column %q of %s (columns: %s)", c, m.QualifiedTable(), strings.Join(names, ", ")), nil
		}
		if slices.Contains(m.Exclude, c) {
			return nil, fmt.Sprintf("column %q is both excluded and rendered as a relation: remove it from exclude", c), nil
		}
		rl.FK = append(rl.FK, i)
	}
	schema, table := r.Schema, r.Name
	rcols, err := TableColumns(ctx, q, schema, table)
	if err != nil {
		return nil, "", err
	}
	if len(rcols) == 0 {
		return nil, fmt.Sprintf("table %s.%s does not exist", schema, table), nil
	}
	rindex := map[string]int{}
	rnames := make([]string, len(rcols))
	for i, c := range rcols {
		rindex[c.Name] = i
		rnames[i] = c.Name
	}
	refKey := r.Key
	if len(refKey) == 0 {
		if refKey, err = tablePrimaryKey(ctx, q, schema, table); err != nil {
			return nil, "", err
		}
		if len(refKey) == 0 {
			return nil, fmt.Sprintf("table %s.%s has no primary key: name the columns the foreign key refers to with key: [...]", schema, table), nil
		}
	}
	if len(refKey) != len(rl.FK) {
		return nil, fmt.Sprintf("%d foreign-key columns but %s.%s is keyed by %d (%s): set key: [...]", len(rl.FK), schema, table, len(refKey), strings.Join(refKey, ", ")), nil
	}
	// Selected columns: rendered ones, then url placeholders not rendered.
	// sel holds the column names ("" for an expression), selSQL what the
	// query selects for each.
	var sel, selSQL []string
	selIndex := map[string]int{}
	selectCol := func(name string) (int, string) {
		if i, ok := selIndex[name]; ok {
			return i, ""
		}
		ci, ok := rindex[name]
		if !ok {
			return 0, fmt.Sprintf("unknown column %q of %s.%s (columns: %s)", name, schema, table, strings.Join(rnames, ", "))
		}
		selIndex[name] = len(sel)
		sel = append(sel, name)
		selSQL = append(selSQL, "r."+pgx.Identifier{name}.Sanitize())
		rl.Sel = append(rl.Sel, rcols[ci].OID)
		return len(sel) - 1, ""
	}
	for _, k := range refKey {
		if _, ok := rindex[k]; !ok {
			return nil, fmt.Sprintf("key column %q is not a column of %s.%s (columns: %s)", k, schema, table, strings.Join(rnames, ", ")), nil
		}
	}
	for _, c := range r.Columns {
		rc, err := config.ParseRelationColumn(c)
		if err != nil {
			return nil, err.Error(), nil
		}
		if rc.Expr != "" {
			// An expression over the related row r, rendered as to_json
			// renders its value. Parameters have no meaning here.
			body, err := rewriteParams(rc.Expr, func(n int) (string, error) {
				return "", fmt.Errorf("column %q: an expression cannot use $%d (it sees the related row as r)", c, n)
			})
			if err != nil {
				return nil, err.Error(), nil
			}
			rl.out = append(rl.out, relOut{name: rc.As, sel: len(sel)})
			sel = append(sel, "")
			selSQL = append(selSQL, "to_json(("+body+"\n))")
			rl.Sel = append(rl.Sel, OIDJSON)
			continue
		}
		i, msg := selectCol(rc.Column)
		if msg != "" {
			return nil, msg, nil
		}
		rl.out = append(rl.out, relOut{name: rc.As, sel: i})
		if slices.Contains(refKey, rc.Column) {
			rl.urlAt = len(rl.out)
		}
	}
	if r.URL != "" {
		if rl.urlAt < 0 {
			rl.urlAt = 0
		}
		for _, g := range placeholderRE.FindAllStringSubmatch(r.URL, -1) {
			if _, msg := selectCol(g[1]); msg != "" {
				return nil, "url: " + msg, nil
			}
		}
		selCols := make([]Column, len(sel))
		for i, n := range sel {
			selCols[i] = Column{Name: n}
		}
		rl.urlParts = parseURLTemplate(r.URL, selCols)
	} else {
		rl.urlAt = -1
	}
	// SELECT k.n, r."id", r."name" FROM unnest($1::text[]) WITH ORDINALITY AS k(k1, n)
	// JOIN "public"."dcim_region" AS r ON r."id" = k.k1::pg_catalog.int8
	var b strings.Builder
	b.WriteString("SELECT k.n")
	for _, e := range selSQL {
		b.WriteString(", ")
		b.WriteString(e)
	}
	b.WriteString(" FROM ")
	UnnestKeys(&b, len(rl.FK), "k", "k")
	b.WriteString(" JOIN ")
	b.WriteString(pgx.Identifier{schema, table}.Sanitize())
	b.WriteString(" AS r ON ")
	for i, k := range refKey {
		if i > 0 {
			b.WriteString(" AND ")
		}
		fmt.Fprintf(&b, "r.%s = k.k%d::%s", pgx.Identifier{k}.Sanitize(), i+1, rcols[rindex[k]].TypeName)
	}
	rl.SQL = b.String()
	// SELECT k.n, r."id", ... FROM unnest($1::text[]) WITH ORDINALITY AS k(img, n)
	// CROSS JOIN LATERAL json_populate_record(NULL::"public"."dcim_device", k.img::json) AS r
	b.Reset()
	b.WriteString("SELECT k.n")
	for _, e := range selSQL {
		b.WriteString(", ")
		b.WriteString(e)
	}
	b.WriteString(" FROM unnest($1::text[]) WITH ORDINALITY AS k(img, n) CROSS JOIN LATERAL json_populate_record(NULL::")
	b.WriteString(pgx.Identifier{schema, table}.Sanitize())
	b.WriteString(", k.img::json) AS r")
	rl.ImageSQL = b.String()
	rl.Table, rl.RefKey = schema+"."+table, refKey
	return rl, "", nil
}

func planComputed(name string, c config.Computed, cols []ColInfo, index map[string]int) (*CompLookup, string) {
	cl := &CompLookup{Name: name}
	for _, a := range c.Args {
		i, ok := index[a]
		if !ok {
			names := make([]string, len(cols))
			for j, c := range cols {
				names[j] = c.Name
			}
			return nil, fmt.Sprintf("args names unknown column %q (columns: %s)", a, strings.Join(names, ", "))
		}
		cl.Args = append(cl.Args, i)
	}
	body, err := rewriteParams(c.SQL, func(n int) (string, error) {
		if n < 1 || n > len(c.Args) {
			return "", fmt.Errorf("sql uses $%d but args lists %d column(s)", n, len(c.Args))
		}
		return fmt.Sprintf("(walhook_args.a%d::%s)", n, cols[cl.Args[n-1]].TypeName), nil
	})
	if err != nil {
		return nil, err.Error()
	}
	// SELECT walhook_args.n, to_json((<sql>)) FROM unnest($1::text[], ...)
	// WITH ORDINALITY AS walhook_args(a1, ..., n)
	var b strings.Builder
	if len(c.Args) == 0 {
		b.WriteString("SELECT 1, to_json((" + body + "\n))")
	} else {
		b.WriteString("SELECT walhook_args.n, to_json((" + body + "\n)) FROM ")
		UnnestKeys(&b, len(c.Args), "walhook_args", "a")
	}
	cl.SQL = b.String()
	return cl, ""
}

// UnnestKeys writes the rows of a chunk's n-column keys (n text arrays
// $1..$n, one per key column): "unnest($1::text[], ...) WITH ORDINALITY AS
// alias(col1, ..., n)", numbered by n.
func UnnestKeys(b *strings.Builder, n int, alias, col string) {
	b.WriteString("unnest(")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(b, "$%d::text[]", i+1)
	}
	b.WriteString(") WITH ORDINALITY AS ")
	b.WriteString(alias)
	b.WriteString("(")
	for i := range n {
		fmt.Fprintf(b, "%s%d, ", col, i+1)
	}
	b.WriteString("n)")
}

// rewriteParams replaces the parameters $1..$n of sql with repl(n), leaving
// string literals, quoted identifiers, comments and dollar-quoted strings
// alone, and drops trailing semicolons.
func rewriteParams(sql string, repl func(n int) (string, error)) (string, error) {
	sql = strings.TrimRight(strings.TrimSpace(sql), "; \t\r\n")
	var b strings.Builder
	identChar := func(c byte) bool {
		return c == '_' || c == '$' || c >= 0x80 || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9')
	}
	i := 0
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == '\'':
			escapes := i > 0 && (sql[i-1] == 'E' || sql[i-1] == 'e') && (i < 2 || !identChar(sql[i-2]))
			j := closingQuote(sql, i, '\'', escapes)
			if j >= len(sql) {
				return "", errors.New("sql has an unterminated string literal")
			}
			b.WriteString(sql[i : j+1])
			i = j + 1
		case c == '"':
			j := closingQuote(sql, i, '"', false)
			if j >= len(sql) {
				return "", errors.New("sql has an unterminated quoted identifier")
			}
			b.WriteString(sql[i : j+1])
			i = j + 1
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				j = len(sql) - i
			}
			b.WriteString(sql[i : i+j])
			i += j
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			depth, j := 1, i+2
			for j < len(sql) && depth > 0 {
				switch {
				case strings.HasPrefix(sql[j:], "/*"):
					depth++
					j += 2
				case strings.HasPrefix(sql[j:], "*/"):
					depth--
					j += 2
				default:
					j++
				}
			}
			if depth > 0 {
				return "", errors.New("sql has an unterminated comment")
			}
			b.WriteString(sql[i:j])
			i = j
		case c == '$' && (i == 0 || !identChar(sql[i-1])):
			j := i + 1
			for j < len(sql) && '0' <= sql[j] && sql[j] <= '9' {
				j++
			}
			if j > i+1 { // $N
				n, err := strconv.Atoi(sql[i+1 : j])
				if err != nil {
					return "", fmt.Errorf("sql has a bad parameter %s", sql[i:j])
				}
				r, err := repl(n)
				if err != nil {
					return "", err
				}
				b.WriteString(r)
				i = j
				continue
			}
			// $tag$ ... $tag$ (the tag may be empty)
			for j < len(sql) && identChar(sql[j]) && sql[j] != '$' {
				j++
			}
			if j < len(sql) && sql[j] == '$' {
				tag := sql[i : j+1]
				end := strings.Index(sql[j+1:], tag)
				if end < 0 {
					return "", errors.New("sql has an unterminated dollar-quoted string")
				}
				stop := j + 1 + end + len(tag)
				b.WriteString(sql[i:stop])
				i = stop
				continue
			}
			b.WriteByte(c)
			i++
		case identChar(c):
			j := i
			for j < len(sql) && identChar(sql[j]) {
				j++
			}
			b.WriteString(sql[i:j])
			i = j
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), nil
}

// LookupVal is a looked-up field of one change: present false leaves the
// field out (its lookup failed).
type LookupVal struct {
	Present bool
	JSON    []byte
}

// JSONNull is the JSON text of a missing related row.
var JSONNull = []byte("null")

// Render appends the nested object of a related row; vals are the selected
// columns in text format.
func (rl *RelLookup) Render(dst []byte, vals [][]byte, resolve TypeResolver) []byte {
	dst = append(dst, '{')
	first := true
	sep := func() {
		if !first {
			dst = append(dst, ',')
		}
		first = false
	}
	url := func() {
		sep()
		dst = append(dst, `"url":`...)
		var u []byte
		for _, p := range rl.urlParts {
			if p.col < 0 {
				u = append(u, p.lit...)
			} else if vals[p.col] != nil {
				u = append(u, vals[p.col]...)
			}
		}
		dst = AppendJSONStringBytes(dst, u)
	}
	for i, o := range rl.out {
		if i == rl.urlAt {
			url()
		}
		sep()
		dst = AppendJSONString(dst, o.name)
		dst = append(dst, ':')
		if v := vals[o.sel]; v == nil {
			dst = append(dst, "null"...)
		} else {
			dst = AppendValue(dst, rl.Sel[o.sel], v, resolve)
		}
	}
	if rl.urlAt >= len(rl.out) {
		url()
	}
	return append(dst, '}')
}

// CheckLookups checks a model's relations and computed fields against the
// catalog (tables, columns, keys, clashing keys in "data") and runs each
// query once with no rows, in a read-only transaction, so that SQL errors
// and missing privileges show at start with the line of the field.
func CheckLookups(ctx context.Context, q Queryer, cfg *config.Config, m *config.Model) []config.Problem {
	var probs []config.Problem
	add := func(line int, format string, args ...any) {
		probs = append(probs, config.Problem{File: cfg.File, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	cols, err := TableColumns(ctx, q, m.Schema, m.Name)
	if err != nil || len(cols) == 0 {
		return nil // reported by the caller
	}
	plan, lps, err := PlanLookups(ctx, q, m, cols)
	if err != nil {
		add(m.Line, "model %s: check relations and computed fields: %v", m.Model, err)
		return probs
	}
	for _, p := range lps {
		add(p.line, "%s", p.Msg)
	}
	// Keys of "data" must be unique.
	keys := map[string]string{}
	fk := map[string]bool{}
	for _, rl := range plan.Rels {
		for _, i := range rl.FK {
			fk[cols[i].Name] = true
		}
	}
	for _, c := range cols {
		if slices.Contains(m.Exclude, c.Name) || fk[c.Name] {
			continue
		}
		out := c.Name
		if rn := m.Rename[c.Name]; rn != "" {
			out = rn
		}
		if prev, dup := keys[out]; dup {
			add(m.Line, "model %s: column %s renders as %q, like %s", m.Model, c.Name, out, prev)
		}
		keys[out] = "column " + c.Name
	}
	if m.URL != "" {
		if prev, dup := keys["url"]; dup {
			add(m.Line, "model %s: url clashes with %s: rename or exclude it", m.Model, prev)
		}
		keys["url"] = "url"
	}
	for _, rl := range plan.Rels {
		if prev, dup := keys[rl.field]; dup {
			add(m.Relations[rl.Key].Line, "model %s: relation %s renders as %q, like %s: set another field, or rename or exclude the column", m.Model, rl.Key, rl.field, prev)
		}
		keys[rl.field] = "relation " + rl.Key
	}
	for _, cl := range plan.Comps {
		if cl.Snap {
			continue
		}
		if prev, dup := keys[cl.Name]; dup {
			add(m.Computed[cl.Name].Line, "model %s: computed field %s clashes with %s: rename it", m.Model, cl.Name, prev)
		}
		keys[cl.Name] = "computed field " + cl.Name
	}
	// Run each query with no keys: parses, plans and checks privileges.
	b, ok := q.(interface {
		Begin(ctx context.Context) (pgx.Tx, error)
	})
	if !ok {
		return probs
	}
	probe := func(sql string, nargs int) error {
		tx, err := b.Begin(ctx)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if _, err := tx.Exec(ctx, "SET TRANSACTION READ ONLY"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", LookupTimeout.Milliseconds())); err != nil {
			return err
		}
		args := make([]any, nargs)
		for i := range args {
			args[i] = []string{}
		}
		rows, err := tx.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
		if err != nil {
			return err
		}
		rows.Close()
		return rows.Err()
	}
	for _, rl := range plan.Rels {
		if err := probe(rl.SQL, len(rl.FK)); err != nil {
			add(m.Relations[rl.Key].Line, "model %s: relation %s: %s", m.Model, rl.Key, PGMessage(err))
		}
	}
	for _, cl := range plan.Comps {
		var err error
		if len(cl.Args) == 0 { // running it would run the query itself: parse only
			err = prepareOnly(ctx, b, cl.SQL)
		} else {
			err = probe(cl.SQL, len(cl.Args))
		}
		if err != nil {
			if cl.Snap {
				add(m.Snapshot.Computed[cl.Name].Line, "model %s: snapshot computed field %s: %s", m.Model, cl.Name, PGMessage(err))
			} else {
				add(m.Computed[cl.Name].Line, "model %s: computed field %s: %s", m.Model, cl.Name, PGMessage(err))
			}
		}
	}
	if sn := m.Snapshot; sn != nil {
		names := map[string]bool{}
		for _, c := range cols {
			names[c.Name] = true
		}
		for _, e := range sn.Exclude {
			if !names[e] {
				add(m.Line, "model %s: snapshot.exclude names unknown column %q of %s", m.Model, e, m.QualifiedTable())
			}
		}
		for _, c := range slices.Sorted(maps.Keys(sn.Rename)) {
			if !names[c] {
				add(m.Line, "model %s: snapshot.rename names unknown column %q of %s", m.Model, c, m.QualifiedTable())
			}
		}
		// Keys of a snapshot must be unique too.
		relField := map[int]string{}
		for _, rl := range plan.Rels {
			if len(rl.FK) == 1 {
				relField[rl.FK[0]] = rl.field
			}
		}
		skeys := map[string]string{}
		for i, c := range cols {
			if slices.Contains(sn.Exclude, c.Name) {
				continue
			}
			out := c.Name
			if rn := m.Rename[c.Name]; rn != "" {
				out = rn
			}
			if f, ok := relField[i]; ok {
				out = f
			}
			if rn := sn.Rename[c.Name]; rn != "" {
				out = rn
			}
			if prev, dup := skeys[out]; dup {
				add(m.Line, "model %s: in snapshots column %s renders as %q, like %s", m.Model, c.Name, out, prev)
			}
			skeys[out] = "column " + c.Name
		}
		for _, name := range sn.ComputedOrder {
			if prev, dup := skeys[name]; dup {
				add(sn.Computed[name].Line, "model %s: snapshot computed field %s clashes with %s: exclude or rename it in snapshot", m.Model, name, prev)
			}
			skeys[name] = "snapshot computed field " + name
		}
	}
	return probs
}

func prepareOnly(ctx context.Context, b interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}, sql string) error {
	tx, err := b.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	_, err = tx.Conn().PgConn().Prepare(ctx, "", sql, nil)
	return err
}

// PGMessage is a PostgreSQL error's message with its hint.
func PGMessage(err error) string {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err.Error()
	}
	msg := "sql: " + pe.Message
	if pe.Code == pgerrcode.InsufficientPrivilege {
		msg += " (grant the walhook role SELECT on it)"
	}
	if pe.Hint != "" {
		msg += " (" + pe.Hint + ")"
	}
	return msg
}

// keepAlive sends the server a status update when one is due, so that a
// closingQuote returns the index of the quote q that closes the quoted text
// opening at sql[open] (a doubled quote is part of the text; with backslash,
// so is any character after a backslash), or len(sql) when it is unclosed.
func closingQuote(sql string, open int, q byte, backslash bool) int {
	j := open + 1
	for j < len(sql) {
		switch {
		case backslash && sql[j] == '\\':
			j += 2
		case sql[j] == q && j+1 < len(sql) && sql[j+1] == q:
			j += 2
		case sql[j] == q:
			return j
		default:
			j++
		}
	}
	return len(sql)
}
