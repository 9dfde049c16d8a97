package payload

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/internal/config"
)

// LookupTimeout is the statement_timeout of each lookup query.
const LookupTimeout = 5 * time.Second

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
func PlanLookups(ctx context.Context, q catalog.Queryer, m *config.Model, cols []catalog.Column) (*LookupPlan, []LookupProblem, error) {
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
	comps := func(order []string, fields map[string]config.Computed, what string, snap bool) {
		for _, name := range order {
			c := fields[name]
			cl, msg := planComputed(name, c, cols, index)
			if msg != "" {
				probs = append(probs, LookupProblem{c.Line, fmt.Sprintf("model %s: %s %s: %s", m.Model, what, name, msg)})
				continue
			}
			cl.Snap = snap
			plan.Comps = append(plan.Comps, cl)
		}
	}
	comps(m.ComputedOrder, m.Computed, "computed field", false)
	if sn := m.Snapshot; sn != nil {
		comps(sn.ComputedOrder, sn.Computed, "snapshot computed field", true)
	}
	return plan, probs, nil
}

func planRelation(ctx context.Context, q catalog.Queryer, m *config.Model, key string, r config.Relation, cols []catalog.Column, index map[string]int) (*RelLookup, string, error) {
	rl := &RelLookup{Key: key, field: r.Field, urlAt: -1}
	for _, c := range r.FK {
		i, ok := index[c]
		if !ok {
			return nil, fmt.Sprintf("unknown column %q of %s (columns: %s)", c, m.QualifiedTable(), columnList(cols)), nil
		}
		if slices.Contains(m.Exclude, c) {
			return nil, fmt.Sprintf("column %q is both excluded and rendered as a relation: remove it from exclude", c), nil
		}
		rl.FK = append(rl.FK, i)
	}
	schema, table := r.Schema, r.Name
	rt, err := catalog.ReadRelation(ctx, q, schema, table)
	if err != nil {
		return nil, "", err
	}
	if rt == nil || len(rt.Columns) == 0 {
		return nil, fmt.Sprintf("table %s.%s does not exist", schema, table), nil
	}
	rcols := rt.Columns
	rindex := map[string]int{}
	for i, c := range rcols {
		rindex[c.Name] = i
	}
	refKey := r.Key
	if len(refKey) == 0 {
		if refKey = rt.PrimaryKey; len(refKey) == 0 {
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
			return 0, fmt.Sprintf("unknown column %q of %s.%s (columns: %s)", name, schema, table, columnList(rcols))
		}
		selIndex[name] = len(sel)
		sel = append(sel, name)
		selSQL = append(selSQL, "r."+pgx.Identifier{name}.Sanitize())
		rl.Sel = append(rl.Sel, rcols[ci].TypeOID)
		return len(sel) - 1, ""
	}
	for _, k := range refKey {
		if _, ok := rindex[k]; !ok {
			return nil, fmt.Sprintf("key column %q is not a column of %s.%s (columns: %s)", k, schema, table, columnList(rcols)), nil
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

func planComputed(name string, c config.Computed, cols []catalog.Column, index map[string]int) (*CompLookup, string) {
	cl := &CompLookup{Name: name}
	for _, a := range c.Args {
		i, ok := index[a]
		if !ok {
			return nil, fmt.Sprintf("args names unknown column %q (columns: %s)", a, columnList(cols))
		}
		cl.Args = append(cl.Args, i)
	}
	body, err := rewriteParams(c.SQL, func(n int) (string, error) {
		if n < 1 || n > len(c.Args) {
			return "", fmt.Errorf("sql uses $%d but args lists %d column(s)", n, len(c.Args))
		}
		typ := cols[cl.Args[n-1]].TypeName
		if typ == "" { // a column the catalog no longer has
			typ = "pg_catalog.text"
		}
		return fmt.Sprintf("(walhook_args.a%d::%s)", n, typ), nil
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

// columnList lists the names of cols for a message.
func columnList(cols []catalog.Column) string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}
