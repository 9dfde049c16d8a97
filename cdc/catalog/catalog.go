// Package catalog reads the description of a table from PostgreSQL's
// catalog: its columns and their types, its primary key and its replica
// identity. Capture, its start-up checks, the planning of relations and
// computed fields, and backfill all describe tables with its Table; capture
// also builds one from each pgoutput Relation message.
package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Queryer runs queries: a pool, a connection or a transaction.
type Queryer interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ReplicaIdentity is a table's replica identity (pg_class.relreplident):
// which columns of the old row UPDATE and DELETE carry.
type ReplicaIdentity byte

// The replica identities.
const (
	IdentityDefault ReplicaIdentity = 'd' // the primary key
	IdentityFull    ReplicaIdentity = 'f' // every column
	IdentityIndex   ReplicaIdentity = 'i' // the columns of an index (USING INDEX)
	IdentityNothing ReplicaIdentity = 'n' // none
)

// Table describes a table, or a view a relation points at.
type Table struct {
	OID    uint32
	Schema string
	Name   string
	// Kind is the relkind: 'r' table, 'p' partitioned table, 'v' view,
	// 'm' materialized view, 'f' foreign table.
	Kind     byte
	Identity ReplicaIdentity
	// Columns are in attnum order, without dropped columns.
	Columns    []Column
	PrimaryKey []string // in key order; empty when the table has none
}

// Column is a column of a Table.
type Column struct {
	Name      string
	TypeOID   uint32
	TypeName  string // schema-qualified and quoted, without modifiers, for casts
	Key       bool   // part of the replica identity
	Generated bool   // a generated column, which pgoutput does not send
}

// ColumnNames returns the names of all of t's columns, in order.
func (t *Table) ColumnNames() []string {
	names := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		names[i] = c.Name
	}
	return names
}

// Published returns t with the columns pgoutput sends: without generated
// ones, in the order of a row's values.
func (t *Table) Published() *Table {
	p := *t
	p.Columns = nil
	for _, c := range t.Columns {
		if !c.Generated {
			p.Columns = append(p.Columns, c)
		}
	}
	return &p
}

// Find reads the table (or partitioned table) schema.name without its
// columns and key, or returns nil when there is none.
func Find(ctx context.Context, q Queryer, schema, name string) (*Table, error) {
	t, err := find(ctx, q, schema, name)
	if t == nil || err != nil || (t.Kind != 'r' && t.Kind != 'p') {
		return nil, err
	}
	return t, nil
}

// ReadTable reads the description of table (or partitioned table)
// schema.name, or returns nil when there is none.
func ReadTable(ctx context.Context, q Queryer, schema, name string) (*Table, error) {
	t, err := Find(ctx, q, schema, name)
	if t == nil || err != nil {
		return nil, err
	}
	return t, describe(ctx, q, t)
}

// ReadRelation reads the description of schema.name like ReadTable, and
// also of a view, a materialized view or a foreign table: what a relation
// may point at.
func ReadRelation(ctx context.Context, q Queryer, schema, name string) (*Table, error) {
	t, err := find(ctx, q, schema, name)
	if t == nil || err != nil {
		return nil, err
	}
	return t, describe(ctx, q, t)
}

func find(ctx context.Context, q Queryer, schema, name string) (*Table, error) {
	t := &Table{Schema: schema, Name: name}
	var kind, ident string
	err := q.QueryRow(ctx, `
		SELECT c.oid, c.relkind::text, c.relreplident::text
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')`, schema, name).
		Scan(&t.OID, &kind, &ident)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read table %s.%s: %w", schema, name, err)
	}
	t.Kind, t.Identity = kind[0], ReplicaIdentity(ident[0])
	return t, nil
}

func describe(ctx context.Context, q Queryer, t *Table) error {
	var err error
	if t.Columns, err = ReadColumns(ctx, q, t.OID); err != nil {
		return fmt.Errorf("%s.%s: %w", t.Schema, t.Name, err)
	}
	if t.PrimaryKey, err = PrimaryKey(ctx, q, t.OID); err != nil {
		return fmt.Errorf("%s.%s: %w", t.Schema, t.Name, err)
	}
	return nil
}

// ReadColumns reads the columns of table oid, in attnum order.
func ReadColumns(ctx context.Context, q Queryer, oid uint32) ([]Column, error) {
	rows, err := q.Query(ctx, `
		SELECT a.attname::text, a.atttypid, quote_ident(tn.nspname) || '.' || quote_ident(t.typname),
		       c.relreplident = 'f' OR EXISTS (
		           SELECT 1 FROM pg_index i
		           WHERE i.indrelid = a.attrelid AND a.attnum = ANY (i.indkey)
		             AND CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END),
		       a.attgenerated <> ''
		FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_namespace tn ON tn.oid = t.typnamespace
		WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, fmt.Errorf("read columns: %w", err)
	}
	cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Column, error) {
		var c Column
		err := r.Scan(&c.Name, &c.TypeOID, &c.TypeName, &c.Key, &c.Generated)
		return c, err
	})
	if err != nil {
		return nil, fmt.Errorf("read columns: %w", err)
	}
	return cols, nil
}

// PrimaryKey reads the primary-key column names of table oid, in key order.
func PrimaryKey(ctx context.Context, q Queryer, oid uint32) ([]string, error) {
	rows, err := q.Query(ctx, `
		SELECT a.attname::text
		FROM pg_index i
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE i.indrelid = $1 AND i.indisprimary
		ORDER BY array_position(i.indkey::int2[], a.attnum)`, oid)
	if err != nil {
		return nil, fmt.Errorf("read primary key: %w", err)
	}
	pk, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read primary key: %w", err)
	}
	return pk, nil
}
