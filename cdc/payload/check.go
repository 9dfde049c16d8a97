package payload

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/internal/config"
)

// CheckLookups checks the relations and computed fields of model m, whose
// table is t, against the catalog (tables, columns, keys, clashing keys in
// "data") and runs each query once with no rows, in a read-only
// transaction, so that SQL errors and missing privileges show at start with
// the line of the field.
func CheckLookups(ctx context.Context, q catalog.Queryer, cfg *config.Config, m *config.Model, t *catalog.Table) []config.Problem {
	c := &lookupCheck{cfg: cfg, m: m, cols: t.Columns}
	plan, lps, err := PlanLookups(ctx, q, m, c.cols)
	if err != nil {
		c.add(m.Line, "model %s: check relations and computed fields: %v", m.Model, err)
		return c.probs
	}
	if plan == nil {
		plan = &LookupPlan{}
	}
	for _, p := range lps {
		c.add(p.line, "%s", p.Msg)
	}
	c.dataKeys(plan)
	if b, ok := q.(beginner); ok {
		c.runQueries(ctx, b, plan)
	}
	if m.Snapshot != nil {
		c.snapshotKeys(plan)
	}
	return c.probs
}

// beginner starts transactions: a pool or a connection.
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// lookupCheck collects the problems of one model's lookups.
type lookupCheck struct {
	cfg   *config.Config
	m     *config.Model
	cols  []catalog.Column
	probs []config.Problem
}

func (c *lookupCheck) add(line int, format string, args ...any) {
	c.probs = append(c.probs, config.Problem{File: c.cfg.File, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// dataKeys checks that the keys of "data" are unique.
func (c *lookupCheck) dataKeys(plan *LookupPlan) {
	m := c.m
	keys := map[string]string{}
	fk := map[string]bool{}
	for _, rl := range plan.Rels {
		for _, i := range rl.FK {
			fk[c.cols[i].Name] = true
		}
	}
	for _, col := range c.cols {
		if slices.Contains(m.Exclude, col.Name) || fk[col.Name] {
			continue
		}
		out := dataName(m, col.Name)
		if prev, dup := keys[out]; dup {
			c.add(m.Line, "model %s: column %s renders as %q, like %s", m.Model, col.Name, out, prev)
		}
		keys[out] = "column " + col.Name
	}
	if m.URL != "" {
		if prev, dup := keys["url"]; dup {
			c.add(m.Line, "model %s: url clashes with %s: rename or exclude it", m.Model, prev)
		}
		keys["url"] = "url"
	}
	for _, rl := range plan.Rels {
		if prev, dup := keys[rl.field]; dup {
			c.add(m.Relations[rl.Key].Line, "model %s: relation %s renders as %q, like %s: set another field, or rename or exclude the column", m.Model, rl.Key, rl.field, prev)
		}
		keys[rl.field] = "relation " + rl.Key
	}
	for _, cl := range plan.Comps {
		if cl.Snap {
			continue
		}
		if prev, dup := keys[cl.Name]; dup {
			c.add(m.Computed[cl.Name].Line, "model %s: computed field %s clashes with %s: rename it", m.Model, cl.Name, prev)
		}
		keys[cl.Name] = "computed field " + cl.Name
	}
}

// runQueries runs each query of plan with no keys: it parses, plans and
// checks privileges. A computed field without arguments is only prepared:
// running it would run the query itself.
func (c *lookupCheck) runQueries(ctx context.Context, b beginner, plan *LookupPlan) {
	m := c.m
	for _, rl := range plan.Rels {
		if err := runEmpty(ctx, b, rl.SQL, len(rl.FK)); err != nil {
			c.add(m.Relations[rl.Key].Line, "model %s: relation %s: %s", m.Model, rl.Key, PGMessage(err))
		}
	}
	for _, cl := range plan.Comps {
		var err error
		if len(cl.Args) == 0 {
			err = prepareOnly(ctx, b, cl.SQL)
		} else {
			err = runEmpty(ctx, b, cl.SQL, len(cl.Args))
		}
		if err == nil {
			continue
		}
		if cl.Snap {
			c.add(m.Snapshot.Computed[cl.Name].Line, "model %s: snapshot computed field %s: %s", m.Model, cl.Name, PGMessage(err))
		} else {
			c.add(m.Computed[cl.Name].Line, "model %s: computed field %s: %s", m.Model, cl.Name, PGMessage(err))
		}
	}
}

// snapshotKeys checks the columns the model's snapshot names and that the
// keys of a snapshot are unique.
func (c *lookupCheck) snapshotKeys(plan *LookupPlan) {
	m, sn := c.m, c.m.Snapshot
	names := map[string]bool{}
	for _, col := range c.cols {
		names[col.Name] = true
	}
	for _, e := range sn.Exclude {
		if !names[e] {
			c.add(m.Line, "model %s: snapshot.exclude names unknown column %q of %s", m.Model, e, m.QualifiedTable())
		}
	}
	for _, col := range slices.Sorted(maps.Keys(sn.Rename)) {
		if !names[col] {
			c.add(m.Line, "model %s: snapshot.rename names unknown column %q of %s", m.Model, col, m.QualifiedTable())
		}
	}
	relField := map[int]string{}
	for _, rl := range plan.Rels {
		if len(rl.FK) == 1 {
			relField[rl.FK[0]] = rl.field
		}
	}
	keys := map[string]string{}
	for i, col := range c.cols {
		if slices.Contains(sn.Exclude, col.Name) {
			continue
		}
		out := dataName(m, col.Name)
		if f, ok := relField[i]; ok {
			out = f
		}
		if rn := sn.Rename[col.Name]; rn != "" {
			out = rn
		}
		if prev, dup := keys[out]; dup {
			c.add(m.Line, "model %s: in snapshots column %s renders as %q, like %s", m.Model, col.Name, out, prev)
		}
		keys[out] = "column " + col.Name
	}
	for _, name := range sn.ComputedOrder {
		if prev, dup := keys[name]; dup {
			c.add(sn.Computed[name].Line, "model %s: snapshot computed field %s clashes with %s: exclude or rename it in snapshot", m.Model, name, prev)
		}
		keys[name] = "snapshot computed field " + name
	}
}

// runEmpty runs sql with nargs empty key arrays in a read-only transaction
// with the lookups' statement timeout.
func runEmpty(ctx context.Context, b beginner, sql string, nargs int) error {
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

// prepareOnly parses and plans sql without running it.
func prepareOnly(ctx context.Context, b beginner, sql string) error {
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
