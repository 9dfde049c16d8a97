package cdc

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/internal/config"
)

// Relations and computed fields are read from the source database when a
// change is rendered, in batches: the changes of a source transaction are
// buffered (up to chunkRows at a time) and each relation or computed field
// of a model costs one query per chunk, whatever the number of rows. The
// queries run in one read-only transaction with a statement timeout; one that
// fails leaves its field out of the chunk's payloads and is logged.

// lookupTimeout is the statement_timeout of each lookup query.
const lookupTimeout = 5 * time.Second

// lookupBegin starts the read-only transaction of a chunk's lookups. JIT is
// off: these are short indexed queries, and compiling a computed field's
// plan (PostgreSQL JITs any plan above jit_above_cost) cost more than running
// it: capture with examples/netbox.yaml ran at about half the speed with it.
var lookupBegin = fmt.Sprintf("BEGIN READ ONLY; SET LOCAL statement_timeout = %d; SET LOCAL jit = off", lookupTimeout.Milliseconds())

// colInfo is a column of a captured or related table.
type colInfo struct {
	name    string
	oid     uint32
	typname string // schema-qualified, quoted type name without modifiers (for casts)
}

// tableColumns returns the columns of schema.name in attnum order (nil when
// the table does not exist). Views are accepted: a relation may point at one.
func tableColumns(ctx context.Context, q queryer, schema, name string) ([]colInfo, error) {
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
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (colInfo, error) {
		var c colInfo
		err := r.Scan(&c.name, &c.oid, &c.typname)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, name, err)
	}
	return out, nil
}

// tablePrimaryKey returns the primary-key columns of schema.name in key order.
func tablePrimaryKey(ctx context.Context, q queryer, schema, name string) ([]string, error) {
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

// lookupPlan holds a model's relation and computed-field queries, resolved
// against the columns of one version of its table.
type lookupPlan struct {
	rels  []*relLookup
	comps []*compLookup
}

// relLookup renders one relation: a foreign key as a nested object.
type relLookup struct {
	key      string // the config key (FK column or columns)
	field    string
	fk       []int // indexes of the FK columns in the captured row
	sql      string
	sel      []uint32 // type OIDs of the selected related columns
	out      []relOut // keys of the nested object, in order
	urlAt    int      // "url" is rendered before out[urlAt]; -1: no url
	urlParts []urlPart
	// table is the related table ("schema.name"), refKey the columns the
	// foreign key refers to; imageSQL renders the nested object from row
	// images (json objects) instead of the table: a related row deleted in
	// the change's own transaction renders from its old image.
	table    string
	refKey   []string
	imageSQL string
	logLimit
}

type relOut struct {
	name string
	sel  int // index into the selected columns
}

// compLookup is one computed field.
type compLookup struct {
	name string
	args []int // indexes of the argument columns in the captured row
	sql  string
	snap bool // a snapshot field (config Snapshot.Computed), not rendered in "data"
	logLimit
}

// logLimit keeps a failing lookup from logging on every chunk.
type logLimit struct {
	last       time.Time
	suppressed int
}

func (l *logLimit) allow() (bool, int) {
	if time.Since(l.last) < time.Minute {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.last, l.suppressed = time.Now(), 0
	return true, n
}

// lookupProblem is a relation or computed field that cannot be planned.
type lookupProblem struct {
	line int
	msg  string
}

// planLookups builds the queries of model m for a table whose columns, in
// row order, are cols. Relations and computed fields with problems are left
// out of the plan and reported.
func planLookups(ctx context.Context, q queryer, m *config.Model, cols []colInfo) (*lookupPlan, []lookupProblem, error) {
	if len(m.Relations) == 0 && len(m.Computed) == 0 && (m.Snapshot == nil || len(m.Snapshot.Computed) == 0) {
		return nil, nil, nil
	}
	index := map[string]int{}
	for i, c := range cols {
		index[c.name] = i
	}
	var probs []lookupProblem
	plan := &lookupPlan{}
	used := map[int]string{} // FK column -> relation
	for _, key := range slices.Sorted(maps.Keys(m.Relations)) {
		r := m.Relations[key]
		rl, msg, err := planRelation(ctx, q, m, key, r, cols, index)
		if err != nil {
			return nil, nil, err
		}
		if msg == "" {
			for _, c := range rl.fk {
				if other, dup := used[c]; dup {
					msg = fmt.Sprintf("column %q is already rendered by relation %s", cols[c].name, other)
				}
			}
		}
		if msg != "" {
			probs = append(probs, lookupProblem{r.Line, fmt.Sprintf("model %s: relation %s: %s", m.Model, key, msg)})
			continue
		}
		for _, c := range rl.fk {
			used[c] = key
		}
		plan.rels = append(plan.rels, rl)
	}
	for _, name := range m.ComputedOrder {
		c := m.Computed[name]
		cl, msg := planComputed(name, c, cols, index)
		if msg != "" {
			probs = append(probs, lookupProblem{c.Line, fmt.Sprintf("model %s: computed field %s: %s", m.Model, name, msg)})
			continue
		}
		plan.comps = append(plan.comps, cl)
	}
	if sn := m.Snapshot; sn != nil {
		for _, name := range sn.ComputedOrder {
			c := sn.Computed[name]
			cl, msg := planComputed(name, c, cols, index)
			if msg != "" {
				probs = append(probs, lookupProblem{c.Line, fmt.Sprintf("model %s: snapshot computed field %s: %s", m.Model, name, msg)})
				continue
			}
			cl.snap = true
			plan.comps = append(plan.comps, cl)
		}
	}
	return plan, probs, nil
}

func planRelation(ctx context.Context, q queryer, m *config.Model, key string, r config.Relation, cols []colInfo, index map[string]int) (*relLookup, string, error) {
	rl := &relLookup{key: key, field: r.Field, urlAt: -1}
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.name
	}
	for _, c := range r.FK {
		i, ok := index[c]
		if !ok {
			return nil, fmt.Sprintf("unknown column %q of %s (columns: %s)", c, m.QualifiedTable(), strings.Join(names, ", ")), nil
		}
		if slices.Contains(m.Exclude, c) {
			return nil, fmt.Sprintf("column %q is both excluded and rendered as a relation: remove it from exclude", c), nil
		}
		rl.fk = append(rl.fk, i)
	}
	schema, table := r.Schema, r.Name
	rcols, err := tableColumns(ctx, q, schema, table)
	if err != nil {
		return nil, "", err
	}
	if len(rcols) == 0 {
		return nil, fmt.Sprintf("table %s.%s does not exist", schema, table), nil
	}
	rindex := map[string]int{}
	rnames := make([]string, len(rcols))
	for i, c := range rcols {
		rindex[c.name] = i
		rnames[i] = c.name
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
	if len(refKey) != len(rl.fk) {
		return nil, fmt.Sprintf("%d foreign-key columns but %s.%s is keyed by %d (%s): set key: [...]", len(rl.fk), schema, table, len(refKey), strings.Join(refKey, ", ")), nil
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
		rl.sel = append(rl.sel, rcols[ci].oid)
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
			rl.sel = append(rl.sel, vtJSON)
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
		selCols := make([]column, len(sel))
		for i, n := range sel {
			selCols[i] = column{name: n}
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
	b.WriteString(" FROM unnest(")
	for i := range rl.fk {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "$%d::text[]", i+1)
	}
	b.WriteString(") WITH ORDINALITY AS k(")
	for i := range rl.fk {
		fmt.Fprintf(&b, "k%d, ", i+1)
	}
	b.WriteString("n) JOIN ")
	b.WriteString(pgx.Identifier{schema, table}.Sanitize())
	b.WriteString(" AS r ON ")
	for i, k := range refKey {
		if i > 0 {
			b.WriteString(" AND ")
		}
		fmt.Fprintf(&b, "r.%s = k.k%d::%s", pgx.Identifier{k}.Sanitize(), i+1, rcols[rindex[k]].typname)
	}
	rl.sql = b.String()
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
	rl.imageSQL = b.String()
	rl.table, rl.refKey = schema+"."+table, refKey
	return rl, "", nil
}

func planComputed(name string, c config.Computed, cols []colInfo, index map[string]int) (*compLookup, string) {
	cl := &compLookup{name: name}
	for _, a := range c.Args {
		i, ok := index[a]
		if !ok {
			names := make([]string, len(cols))
			for j, c := range cols {
				names[j] = c.name
			}
			return nil, fmt.Sprintf("args names unknown column %q (columns: %s)", a, strings.Join(names, ", "))
		}
		cl.args = append(cl.args, i)
	}
	body, err := rewriteParams(c.SQL, func(n int) (string, error) {
		if n < 1 || n > len(c.Args) {
			return "", fmt.Errorf("sql uses $%d but args lists %d column(s)", n, len(c.Args))
		}
		return fmt.Sprintf("(walhook_args.a%d::%s)", n, cols[cl.args[n-1]].typname), nil
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
		b.WriteString("SELECT walhook_args.n, to_json((" + body + "\n)) FROM unnest(")
		for i := range c.Args {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "$%d::text[]", i+1)
		}
		b.WriteString(") WITH ORDINALITY AS walhook_args(")
		for i := range c.Args {
			fmt.Fprintf(&b, "a%d, ", i+1)
		}
		b.WriteString("n)")
	}
	cl.sql = b.String()
	return cl, ""
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

// lookupVal is a looked-up field of one change: present false leaves the
// field out (its lookup failed).
type lookupVal struct {
	present bool
	json    []byte
}

var jsonNull = []byte("null")

// lookupRun executes one chunk's queries in a read-only transaction on the
// source pool.
type lookupRun struct {
	pool interface {
		BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
	}
	tx  pgx.Tx
	log zerolog.Logger
}

// query runs sql with text-format results and calls fn for each row (the
// values are only valid during the call). An error rolls the transaction
// back; the next query starts a new one.
func (lr *lookupRun) query(ctx context.Context, sql string, args []any, fn func(vals [][]byte)) error {
	if lr.tx == nil {
		tx, err := lr.pool.BeginTx(ctx, pgx.TxOptions{BeginQuery: lookupBegin})
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		lr.tx = tx
	}
	rows, err := lr.tx.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err == nil {
		for rows.Next() {
			fn(rows.RawValues())
		}
		rows.Close()
		err = rows.Err()
	}
	if err != nil {
		_ = lr.tx.Rollback(context.WithoutCancel(ctx))
		lr.tx = nil
		return err
	}
	return nil
}

func (lr *lookupRun) finish(ctx context.Context) {
	if lr.tx != nil {
		if err := lr.tx.Commit(ctx); err != nil {
			lr.log.Debug().Err(err).Msg("end lookup transaction")
		}
		lr.tx = nil
	}
}

// keySet collects the distinct key tuples of a chunk, as text arrays (one
// per tuple position; nil elements are NULL).
type keySet struct {
	idx  map[string]int
	cols [][]*string
	buf  []byte
}

func newKeySet(width int) *keySet {
	return &keySet{idx: map[string]int{}, cols: make([][]*string, width)}
}

// add returns the index of the tuple of vals at positions cols.
func (ks *keySet) add(vals row, cols []int) int {
	ks.buf = ks.buf[:0]
	for _, c := range cols {
		v := vals[c]
		if v.kind == 't' {
			ks.buf = append(ks.buf, 't')
			ks.buf = strconv.AppendInt(ks.buf, int64(len(v.data)), 10)
			ks.buf = append(ks.buf, ':')
			ks.buf = append(ks.buf, v.data...)
		} else {
			ks.buf = append(ks.buf, 'n')
		}
	}
	if i, ok := ks.idx[string(ks.buf)]; ok {
		return i
	}
	i := len(ks.idx)
	ks.idx[string(ks.buf)] = i
	for n, c := range cols {
		var p *string
		if vals[c].kind == 't' {
			s := string(vals[c].data)
			p = &s
		}
		ks.cols[n] = append(ks.cols[n], p)
	}
	return i
}

func (ks *keySet) len() int { return len(ks.idx) }

func (ks *keySet) args() []any {
	out := make([]any, len(ks.cols))
	for i, c := range ks.cols {
		out[i] = c
	}
	return out
}

// maxLookupWorkers bounds the connections a chunk's lookups use at once.
const maxLookupWorkers = 4

// lookupJob is one query of a chunk's lookups; it writes only its own slot
// of the changes' fields. An error it returns is retried.
type lookupJob func(*lookupRun) error

// lookupRetryFor bounds how long a chunk's failing lookups are retried in
// place (the stream answers no keepalive meanwhile); after that the stream
// ends with the error and Run reconnects with backoff and replays.
var lookupRetryFor = 20 * time.Second

// lookups fills in the unchanged TOAST values, then the relation and
// computed fields of a chunk of pending changes, one query per table (read
// back), relation and computed field of each model in it. The queries run on
// up to maxLookupWorkers connections of the source pool (at most half of
// it), each in its own read-only transaction with a statement timeout.
// A failing query is retried with backoff, holding capture (a warning, and
// Capture.Stall), unless its model says on_lookup_error: omit.
func (s *stream) lookups(ctx context.Context, ps []pending) error {
	// Changes per relation (table version), in order of first appearance.
	var order, fillOrder []*relation
	groups := map[*relation][]int{}
	fills := map[*relation][]int{}
	for i := range ps {
		p := &ps[i]
		if p.fill {
			if _, ok := fills[p.rel]; !ok {
				fillOrder = append(fillOrder, p.rel)
			}
			fills[p.rel] = append(fills[p.rel], i)
		}
		pl := p.rel.plan
		if pl == nil {
			continue
		}
		if _, ok := groups[p.rel]; !ok {
			order = append(order, p.rel)
		}
		groups[p.rel] = append(groups[p.rel], i)
		p.extra = make([]lookupVal, len(pl.rels)+len(pl.comps))
		if p.oldNeeded() {
			p.oldExtra = make([]lookupVal, len(pl.rels))
		}
	}
	var fillJobs, jobs []lookupJob
	for _, rel := range fillOrder {
		idxs := fills[rel]
		fillJobs = append(fillJobs, func(lr *lookupRun) error { return s.readBack(ctx, lr, rel, ps, idxs) })
	}
	for _, rel := range order {
		idxs := groups[rel]
		for li, rl := range rel.plan.rels {
			jobs = append(jobs, func(lr *lookupRun) error { return s.relationLookup(ctx, lr, rel, li, rl, ps, idxs) })
		}
		snaps := wantsSnapshots(rel)
		for ci, cl := range rel.plan.comps {
			if cl.snap && !snaps {
				continue // no webhook of the model renders snapshots
			}
			slot := len(rel.plan.rels) + ci
			jobs = append(jobs, func(lr *lookupRun) error { return s.computedLookup(ctx, lr, rel, slot, cl, ps, idxs) })
		}
	}
	if len(jobs)+len(fillJobs) > 0 {
		if err := s.waitVisible(ctx, s.txnXid); err != nil {
			return err
		}
	}
	// Read-backs first: computed fields may take a filled column.
	if err := s.runLookups(ctx, fillJobs); err != nil {
		return err
	}
	for _, i := range fills {
		for _, j := range i {
			ps[j].fill = false
		}
	}
	if err := s.runLookups(ctx, jobs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err // shutting down: do not store payloads missing fields
	}
	return nil
}

// wantsSnapshots reports whether a webhook of rel's model renders
// snapshots (format netbox-v4).
func wantsSnapshots(rel *relation) bool {
	for _, set := range [][3]hookSet{rel.hooks, rel.coal} {
		for _, hs := range set {
			for _, sp := range hs.specs {
				if sp != nil && sp.format == FormatNetboxV4 {
					return true
				}
			}
		}
	}
	return false
}

// runLookups runs jobs, retrying the failing ones with backoff for up to
// lookupRetryFor.
func (s *stream) runLookups(ctx context.Context, jobs []lookupJob) error {
	start := time.Now()
	backoff := 250 * time.Millisecond
	stalled := false
	for {
		errs := s.runJobs(ctx, jobs)
		if err := ctx.Err(); err != nil {
			return err
		}
		var retry []lookupJob
		var first error
		for i, err := range errs {
			if err != nil {
				retry = append(retry, jobs[i])
				if first == nil {
					first = err
				}
			}
		}
		if len(retry) == 0 {
			if stalled {
				s.c.setStall("")
				s.log.Info().Dur("waited", time.Since(start)).Msg("lookups succeed again: capture goes on")
			}
			return nil
		}
		s.c.lookupErrors.Add(int64(len(retry)))
		msg := fmt.Sprintf("lookup failed, capture holds the transaction (commit LSN %s) and retries (set on_lookup_error: omit on the model to send changes without the field instead): %v", s.txnLSN, first)
		s.c.setStall(msg)
		stalled = true
		if time.Since(start) >= lookupRetryFor {
			return fmt.Errorf("lookups of the transaction with commit LSN %s still fail after %s (capture reconnects and retries): %w", s.txnLSN, lookupRetryFor, first)
		}
		ev := s.log.Warn().Err(first).Int("failed_queries", len(retry)).Dur("retry_in", backoff)
		var pe *pgconn.PgError
		if errors.As(first, &pe) && pe.Code == pgerrcode.QueryCanceled {
			ev = ev.Dur("statement_timeout", lookupTimeout)
		}
		ev.Msg("lookup failed: capture holds the changes and retries (set on_lookup_error: omit on the model to send them without the field instead)")
		if err := s.keepAlive(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 4*time.Second)
		jobs = retry
	}
}

// runJobs runs jobs on up to maxLookupWorkers connections and returns their
// errors.
func (s *stream) runJobs(ctx context.Context, jobs []lookupJob) []error {
	errs := make([]error, len(jobs))
	workers := min(len(jobs), maxLookupWorkers, max(1, int(s.c.source.Config().MaxConns)/2))
	if workers <= 1 {
		lr := &lookupRun{pool: s.c.source, log: s.log}
		for i, j := range jobs {
			errs[i] = j(lr)
		}
		lr.finish(ctx)
		return errs
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lr := &lookupRun{pool: s.c.source, log: s.log}
			defer lr.finish(ctx)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(jobs) {
					return
				}
				errs[i] = jobs[i](lr)
			}
		}()
	}
	wg.Wait()
	return errs
}

// readBack replaces the unchanged TOAST values ('u') of the changes idxs of
// ps, all of table version rel, with the values read back by key: one query
// for the chunk. A row that is gone renders those columns as null, with a
// warning.
func (s *stream) readBack(ctx context.Context, lr *lookupRun, rel *relation, ps []pending, idxs []int) error {
	if rel.keyTypes == nil {
		types := make([]string, len(rel.pkCols))
		for n, i := range rel.pkCols {
			err := lr.query(ctx, `SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped`,
				[]any{rel.id, rel.cols[i].name}, func(vals [][]byte) { types[n] = string(vals[0]) })
			if err != nil {
				return fmt.Errorf("%s.%s: read key types: %w", rel.schema, rel.name, err)
			}
			if types[n] == "" {
				return fmt.Errorf("%s.%s: key column %s not found", rel.schema, rel.name, rel.cols[i].name)
			}
		}
		rel.keyTypes = types
	}
	// The columns missing in any of the changes, and the distinct keys.
	var cols []int
	have := map[int]bool{}
	ks := newKeySet(len(rel.pkCols))
	keyOf := make([]int, len(idxs))
	for n, i := range idxs {
		p := &ps[i]
		keyOf[n] = -1
		for c, v := range p.vals {
			if v.kind == 'u' && !have[c] {
				have[c] = true
				cols = append(cols, c)
			}
		}
		ok := true
		for _, c := range rel.pkCols {
			ok = ok && p.vals[c].kind == 't'
		}
		if !ok {
			s.log.Error().Str("table", rel.schema+"."+rel.name).
				Msg("unchanged TOAST value with no key to read it back: those columns render as null (set REPLICA IDENTITY FULL to carry them)")
			continue
		}
		keyOf[n] = ks.add(p.vals, rel.pkCols)
	}
	results := make([][][]byte, ks.len())
	if ks.len() > 0 {
		var b strings.Builder
		b.WriteString("SELECT k.n")
		for _, c := range cols {
			b.WriteString(", t.")
			b.WriteString(pgx.Identifier{rel.cols[c].name}.Sanitize())
		}
		b.WriteString(" FROM unnest(")
		for n := range rel.pkCols {
			if n > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "$%d::text[]", n+1)
		}
		b.WriteString(") WITH ORDINALITY AS k(")
		for n := range rel.pkCols {
			fmt.Fprintf(&b, "k%d, ", n+1)
		}
		b.WriteString("n) JOIN ")
		b.WriteString(pgx.Identifier{rel.schema, rel.name}.Sanitize())
		b.WriteString(" AS t ON ")
		for n, c := range rel.pkCols {
			if n > 0 {
				b.WriteString(" AND ")
			}
			fmt.Fprintf(&b, "t.%s = k.k%d::%s", pgx.Identifier{rel.cols[c].name}.Sanitize(), n+1, rel.keyTypes[n])
		}
		err := lr.query(ctx, b.String(), ks.args(), func(vals [][]byte) {
			n, err := strconv.Atoi(string(vals[0]))
			if err != nil || n < 1 || n > len(results) || results[n-1] != nil {
				return
			}
			row := make([][]byte, len(cols))
			for i, v := range vals[1:] {
				if v != nil {
					row[i] = slices.Clone(v)
				}
			}
			results[n-1] = row
		})
		if err != nil {
			return fmt.Errorf("%s.%s: read back unchanged TOAST columns: %w", rel.schema, rel.name, err)
		}
	}
	gone := 0
	for n, i := range idxs {
		p := &ps[i]
		var got [][]byte
		if keyOf[n] >= 0 {
			got = results[keyOf[n]]
		}
		if got == nil && keyOf[n] >= 0 {
			gone++
		}
		for j, c := range cols {
			if p.vals[c].kind != 'u' {
				continue
			}
			if got == nil || got[j] == nil {
				p.vals[c] = tupleValue{kind: 'n'}
			} else {
				p.vals[c] = tupleValue{kind: 't', data: got[j]}
			}
		}
	}
	if gone > 0 {
		s.log.Warn().Str("table", rel.schema+"."+rel.name).Int("changes", gone).
			Msg("row with unchanged TOAST columns is gone; those columns render as null (set REPLICA IDENTITY FULL to carry them)")
	}
	return nil
}

func (s *stream) relationLookup(ctx context.Context, lr *lookupRun, rel *relation, slot int, rl *relLookup, ps []pending, idxs []int) error {
	ks := newKeySet(len(rl.fk))
	type ref struct {
		p   *lookupVal
		key int
	}
	var refs []ref
	collect := func(vals row, keysOnly bool, dst *lookupVal) {
		for _, c := range rl.fk {
			if keysOnly && !rel.cols[c].key {
				return // not rendered
			}
			if vals[c].kind != 't' {
				*dst = lookupVal{present: true, json: jsonNull}
				return
			}
		}
		refs = append(refs, ref{dst, ks.add(vals, rl.fk)})
	}
	for _, i := range idxs {
		p := &ps[i]
		collect(p.vals, p.keysOnly, &p.extra[slot])
		if p.oldExtra != nil && p.old != nil {
			collect(p.old, p.oldType != 'O', &p.oldExtra[slot])
		}
	}
	if ks.len() == 0 {
		return nil
	}
	results := make([][]byte, ks.len())
	err := lr.query(ctx, rl.sql, ks.args(), func(vals [][]byte) {
		n, err := strconv.Atoi(string(vals[0]))
		if err != nil || n < 1 || n > len(results) || results[n-1] != nil {
			return
		}
		results[n-1] = rl.render(nil, vals[1:], s.rd.resolve)
	})
	if err != nil {
		if rel.model.OnLookupError != config.LookupErrorOmit {
			return fmt.Errorf("model %s: relation %s: %w", rel.model.Model, rl.key, err)
		}
		s.lookupFailed(&rl.logLimit, rel, "relation", rl.key, len(refs), err)
		return nil
	}
	s.dels.fillFromImages(ctx, lr, rl, ks, results, s.rd.resolve)
	for _, r := range refs {
		if j := results[r.key]; j != nil {
			*r.p = lookupVal{present: true, json: j}
		} else {
			*r.p = lookupVal{present: true, json: jsonNull} // row not found
		}
	}
	return nil
}

// maxDeletedImages bounds the deleted rows a transaction keeps for the
// relations of its other changes.
var maxDeletedImages = 10000

// deletedImages keeps the old images (REPLICA IDENTITY FULL) of the rows a
// source transaction deletes from tables that relations point at, so that a
// relation to a row deleted in the same transaction (a cascaded delete:
// interfaces, then their device) renders the row as it was, the way NetBox
// serializes an object before it deletes it, instead of null.
type deletedImages struct {
	lsn     uint64                    // the transaction the images belong to
	targets map[string]bool           // related tables of the configured relations
	rows    map[string][]deletedImage // table -> deleted rows
	n       int
	warned  bool
}

type deletedImage struct {
	rel  *relation
	vals row
}

// wants reports whether some relation points at rel's table.
func (d *deletedImages) wants(cfg *config.Config, rel *relation) bool {
	if d.targets == nil {
		d.targets = map[string]bool{}
		for _, m := range cfg.Models {
			for _, r := range m.Relations {
				d.targets[r.Schema+"."+r.Name] = true
			}
		}
	}
	return d.targets[rel.schema+"."+rel.name]
}

// keep records a deleted row of rel, when some relation points at its table
// and the row is complete. lsn identifies the transaction.
func (d *deletedImages) keep(cfg *config.Config, log zerolog.Logger, lsn uint64, rel *relation, vals row, keysOnly bool) {
	table := rel.schema + "." + rel.name
	if keysOnly || !d.wants(cfg, rel) {
		return
	}
	if d.lsn != lsn {
		clear(d.rows)
		d.lsn, d.n, d.warned = lsn, 0, false
	}
	if d.n >= maxDeletedImages {
		if !d.warned {
			d.warned = true
			log.Warn().Str("table", table).Int("rows", maxDeletedImages).
				Msg("transaction deletes more related rows than are kept: relations to the rest of them render as null")
		}
		return
	}
	if d.rows == nil {
		d.rows = map[string][]deletedImage{}
	}
	d.rows[table] = append(d.rows[table], deletedImage{rel: rel, vals: copyRow(vals)})
	d.n++
}

// fillFromImages renders the keys of ks that the lookup did not find
// (results[i] == nil) from the deleted rows of the current transaction.
func (d *deletedImages) fillFromImages(ctx context.Context, lr *lookupRun, rl *relLookup, ks *keySet, results [][]byte, resolve TypeResolver) {
	imgs := d.rows[rl.table]
	if len(imgs) == 0 || rl.imageSQL == "" {
		return
	}
	var keyBuf []byte
	keyOf := func(get func(i int) *string) string {
		keyBuf = keyBuf[:0]
		for i := range rl.refKey {
			if v := get(i); v != nil {
				keyBuf = append(keyBuf, 't')
				keyBuf = strconv.AppendInt(keyBuf, int64(len(*v)), 10)
				keyBuf = append(keyBuf, ':')
				keyBuf = append(keyBuf, *v...)
			} else {
				keyBuf = append(keyBuf, 'n')
			}
		}
		return string(keyBuf)
	}
	// The images by the values of the columns the foreign key refers to.
	byKey := map[string]int{}
	for n, img := range imgs {
		cols := make([]int, len(rl.refKey))
		ok := true
		for i, k := range rl.refKey {
			cols[i] = -1
			for j, c := range img.rel.cols {
				if c.name == k {
					cols[i] = j
				}
			}
			ok = ok && cols[i] >= 0 && cols[i] < len(img.vals)
		}
		if !ok {
			continue
		}
		byKey[keyOf(func(i int) *string {
			v := img.vals[cols[i]]
			if v.kind != 't' {
				return nil
			}
			s := string(v.data)
			return &s
		})] = n
	}
	var args []*string
	var slots []int
	for i := range results {
		if results[i] != nil {
			continue
		}
		n, ok := byKey[keyOf(func(c int) *string { return ks.cols[c][i] })]
		if !ok {
			continue
		}
		j := string(imageJSON(imgs[n].rel, imgs[n].vals))
		args = append(args, &j)
		slots = append(slots, i)
	}
	if len(args) == 0 {
		return
	}
	err := lr.query(ctx, rl.imageSQL, []any{args}, func(vals [][]byte) {
		n, err := strconv.Atoi(string(vals[0]))
		if err != nil || n < 1 || n > len(slots) {
			return
		}
		results[slots[n-1]] = rl.render(nil, vals[1:], resolve)
	})
	if err != nil {
		lr.log.Warn().Err(err).Str("relation", rl.key).Msg("relation to rows deleted in the same transaction: cannot render them from their old images; they render as null")
	}
}

// imageJSON is a row as a JSON object of its columns' text values (json and
// jsonb embedded), for json_populate_record.
func imageJSON(rel *relation, vals row) []byte {
	b := []byte{'{'}
	for i, c := range rel.cols {
		if i >= len(vals) || vals[i].kind == 'u' {
			continue
		}
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = AppendJSONString(b, c.name)
		b = append(b, ':')
		switch {
		case vals[i].kind != 't':
			b = append(b, "null"...)
		case c.oid == vtJSON || c.oid == vtJSONB:
			b = append(b, vals[i].data...)
		default:
			b = AppendJSONStringBytes(b, vals[i].data)
		}
	}
	return append(b, '}')
}

func (s *stream) computedLookup(ctx context.Context, lr *lookupRun, rel *relation, slot int, cl *compLookup, ps []pending, idxs []int) error {
	ks := newKeySet(len(cl.args))
	type ref struct {
		p   *lookupVal
		key int
	}
	var refs []ref
outer:
	for _, i := range idxs {
		p := &ps[i]
		if p.keysOnly {
			for _, a := range cl.args {
				if !rel.cols[a].key {
					continue outer // an argument the deleted row does not carry
				}
			}
		}
		refs = append(refs, ref{&p.extra[slot], ks.add(p.vals, cl.args)})
	}
	if len(refs) == 0 {
		return nil
	}
	results := make([][]byte, max(ks.len(), 1))
	err := lr.query(ctx, cl.sql, ks.args(), func(vals [][]byte) {
		n, err := strconv.Atoi(string(vals[0]))
		if err != nil || n < 1 || n > len(results) {
			return
		}
		if vals[1] == nil {
			results[n-1] = jsonNull
		} else {
			results[n-1] = append([]byte(nil), vals[1]...)
		}
	})
	if err != nil {
		if rel.model.OnLookupError != config.LookupErrorOmit {
			return fmt.Errorf("model %s: computed field %s: %w", rel.model.Model, cl.name, err)
		}
		s.lookupFailed(&cl.logLimit, rel, "computed field", cl.name, len(refs), err)
		return nil
	}
	for _, r := range refs {
		k := r.key
		if len(cl.args) == 0 {
			k = 0
		}
		if j := results[k]; j != nil {
			*r.p = lookupVal{present: true, json: j}
		} else {
			*r.p = lookupVal{present: true, json: jsonNull}
		}
	}
	return nil
}

func (s *stream) lookupFailed(l *logLimit, rel *relation, what, name string, changes int, err error) {
	ok, suppressed := l.allow()
	if !ok {
		return
	}
	ev := s.log.Warn().Err(err).Str("model", rel.model.Model).Str(what, name).Int("changes", changes)
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerrcode.QueryCanceled {
		ev = ev.Dur("statement_timeout", lookupTimeout)
	}
	if suppressed > 0 {
		ev = ev.Int("failures_not_logged", suppressed)
	}
	ev.Msg(what + " lookup failed: these changes are sent without the field")
}

// render appends the nested object of a related row; vals are the selected
// columns in text format.
func (rl *relLookup) render(dst []byte, vals [][]byte, resolve TypeResolver) []byte {
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
			dst = AppendValue(dst, rl.sel[o.sel], v, resolve)
		}
	}
	if rl.urlAt >= len(rl.out) {
		url()
	}
	return append(dst, '}')
}

// checkLookups checks a model's relations and computed fields against the
// catalog (tables, columns, keys, clashing keys in "data") and runs each
// query once with no rows, in a read-only transaction, so that SQL errors
// and missing privileges show at start with the line of the field.
func checkLookups(ctx context.Context, q queryer, cfg *config.Config, m *config.Model) []config.Problem {
	var probs []config.Problem
	add := func(line int, format string, args ...any) {
		probs = append(probs, config.Problem{File: cfg.File, Line: line, Msg: fmt.Sprintf(format, args...)})
	}
	cols, err := tableColumns(ctx, q, m.Schema, m.Name)
	if err != nil || len(cols) == 0 {
		return nil // reported by the caller
	}
	plan, lps, err := planLookups(ctx, q, m, cols)
	if err != nil {
		add(m.Line, "model %s: check relations and computed fields: %v", m.Model, err)
		return probs
	}
	for _, p := range lps {
		add(p.line, "%s", p.msg)
	}
	// Keys of "data" must be unique.
	keys := map[string]string{}
	fk := map[string]bool{}
	for _, rl := range plan.rels {
		for _, i := range rl.fk {
			fk[cols[i].name] = true
		}
	}
	for _, c := range cols {
		if slices.Contains(m.Exclude, c.name) || fk[c.name] {
			continue
		}
		out := c.name
		if rn := m.Rename[c.name]; rn != "" {
			out = rn
		}
		if prev, dup := keys[out]; dup {
			add(m.Line, "model %s: column %s renders as %q, like %s", m.Model, c.name, out, prev)
		}
		keys[out] = "column " + c.name
	}
	if m.URL != "" {
		if prev, dup := keys["url"]; dup {
			add(m.Line, "model %s: url clashes with %s: rename or exclude it", m.Model, prev)
		}
		keys["url"] = "url"
	}
	for _, rl := range plan.rels {
		if prev, dup := keys[rl.field]; dup {
			add(m.Relations[rl.key].Line, "model %s: relation %s renders as %q, like %s: set another field, or rename or exclude the column", m.Model, rl.key, rl.field, prev)
		}
		keys[rl.field] = "relation " + rl.key
	}
	for _, cl := range plan.comps {
		if cl.snap {
			continue
		}
		if prev, dup := keys[cl.name]; dup {
			add(m.Computed[cl.name].Line, "model %s: computed field %s clashes with %s: rename it", m.Model, cl.name, prev)
		}
		keys[cl.name] = "computed field " + cl.name
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
		if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL statement_timeout = %d", lookupTimeout.Milliseconds())); err != nil {
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
	for _, rl := range plan.rels {
		if err := probe(rl.sql, len(rl.fk)); err != nil {
			add(m.Relations[rl.key].Line, "model %s: relation %s: %s", m.Model, rl.key, pgMessage(err))
		}
	}
	for _, cl := range plan.comps {
		var err error
		if len(cl.args) == 0 { // running it would run the query itself: parse only
			err = prepareOnly(ctx, b, cl.sql)
		} else {
			err = probe(cl.sql, len(cl.args))
		}
		if err != nil {
			if cl.snap {
				add(m.Snapshot.Computed[cl.name].Line, "model %s: snapshot computed field %s: %s", m.Model, cl.name, pgMessage(err))
			} else {
				add(m.Computed[cl.name].Line, "model %s: computed field %s: %s", m.Model, cl.name, pgMessage(err))
			}
		}
	}
	if sn := m.Snapshot; sn != nil {
		names := map[string]bool{}
		for _, c := range cols {
			names[c.name] = true
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
		for _, rl := range plan.rels {
			if len(rl.fk) == 1 {
				relField[rl.fk[0]] = rl.field
			}
		}
		skeys := map[string]string{}
		for i, c := range cols {
			if slices.Contains(sn.Exclude, c.name) {
				continue
			}
			out := c.name
			if rn := m.Rename[c.name]; rn != "" {
				out = rn
			}
			if f, ok := relField[i]; ok {
				out = f
			}
			if rn := sn.Rename[c.name]; rn != "" {
				out = rn
			}
			if prev, dup := skeys[out]; dup {
				add(m.Line, "model %s: in snapshots column %s renders as %q, like %s", m.Model, c.name, out, prev)
			}
			skeys[out] = "column " + c.name
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

// pgMessage is a PostgreSQL error's message with its hint.
func pgMessage(err error) string {
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
// long wait of the stream (for visibility, or retrying lookups) does not
// make the walsender drop the connection (wal_sender_timeout). It confirms
// only what the writer committed: the stream is inside a transaction.
func (s *stream) keepAlive(ctx context.Context) error {
	if s.conn == nil || time.Now().Before(s.nextStatus) {
		return nil
	}
	return s.sendStatus(ctx)
}

// visibleSQL reports whether the transaction with the 32-bit id $1 is
// visible to a new snapshot. The full 64-bit id is rebuilt from the
// snapshot's xmax (the nearest id with those low 32 bits); a transaction
// is visible when below xmin, or below xmax and not in progress. One that
// has committed but is not visible yet (its commit record is flushed, so the
// walsender may send it, while the backend still waits, e.g. for a
// synchronous standby) is at or above xmax when it holds the newest id.
const visibleSQL = `SELECT txid_visible_in_snapshot(greatest(3, x + (($1::bigint - x) % 4294967296 + 6442450944) % 4294967296 - 2147483648), s)
	FROM (SELECT txid_current_snapshot() AS s) q, LATERAL (SELECT txid_snapshot_xmax(q.s) AS x) m`

// visibleWarnAfter is how long waitVisible waits before it says so, and
// then how often it repeats it.
var visibleWarnAfter = 2 * time.Second

// waitVisible waits until transaction xid is visible to new snapshots, so
// that lookups and read-backs see the committed state, not the one before
// it. The walsender can send a transaction as soon as its commit record is
// flushed, a moment (or, with synchronous replication waiting for a standby,
// much longer) before other sessions see it. It never gives up: rendering
// with data that may be stale would be wrong for good, so a long wait holds
// capture, visibly (a warning, and Capture.Stall).
func (s *stream) waitVisible(ctx context.Context, xid uint32) error {
	if xid == 0 || xid == s.visibleXid {
		return nil
	}
	start := time.Now()
	nextWarn := start.Add(visibleWarnAfter)
	pause := 200 * time.Microsecond
	for {
		var visible bool
		if err := s.c.source.QueryRow(ctx, visibleSQL, int64(xid)).Scan(&visible); err != nil {
			return fmt.Errorf("wait until source transaction %d is visible: %w", xid, err)
		}
		if visible {
			s.visibleXid = xid
			if time.Since(start) >= visibleWarnAfter {
				s.c.setStall("")
				s.log.Info().Uint32("xid", xid).Dur("waited", time.Since(start)).Msg("source transaction is visible: capture goes on")
			}
			return nil
		}
		if now := time.Now(); now.After(nextWarn) {
			msg := fmt.Sprintf("source transaction %d (commit LSN %s) is committed but not yet visible to other sessions (waiting for a synchronous standby? see pg_stat_activity wait_event SyncRep): capture holds its changes until it is, so that lookups do not read stale rows", xid, s.txnLSN)
			s.c.setStall(msg)
			s.log.Warn().Uint32("xid", xid).Dur("waited", now.Sub(start)).Msg(msg)
			nextWarn = now.Add(30 * time.Second)
		}
		if err := s.keepAlive(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(pause*2, 100*time.Millisecond)
	}
}

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
