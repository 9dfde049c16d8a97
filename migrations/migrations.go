// Package migrations holds walhook's outbox schema as numbered SQL files,
// embedded in the binary, and applies them idempotently under an advisory
// lock so that any number of processes may start at once.
package migrations

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed *.sql
var files embed.FS

// Migration is one numbered SQL file.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// All returns the embedded migrations in version order.
func All() ([]Migration, error) {
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration file %q: name must start with a number and _", e.Name())
		}
		b, err := files.ReadFile(e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		out = append(out, Migration{Version: v, Name: e.Name(), SQL: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Ident quotes a SQL identifier.
func Ident(s string) string { return pgx.Identifier{s}.Sanitize() }

// Table returns the quoted, schema-qualified name of an outbox table.
func Table(schema, table string) string { return pgx.Identifier{schema, table}.Sanitize() }

// Channel is the NOTIFY channel capture signals after enqueueing rows into
// schema's outbox; senders LISTEN on it.
func Channel(schema string) string { return schema + "_deliveries" }

// Apply brings schema up to the newest migration and returns the versions it
// applied (none when already current). Each migration runs in its own
// transaction together with its version row.
func Apply(ctx context.Context, pool *pgxpool.Pool, schema string) ([]int, error) {
	all, err := All()
	if err != nil {
		return nil, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate: connect: %w", err)
	}
	defer conn.Release()
	lockKey := "walhook.migrate." + schema
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(hashtext($1))", lockKey); err != nil {
		return nil, fmt.Errorf("migrate: take advisory lock: %w", err)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(hashtext($1))", lockKey)
	}()
	q := Ident(schema)
	vt := Table(schema, "schema_migrations")
	// CREATE ... IF NOT EXISTS checks the CREATE privilege even when the
	// object exists: skip it then, so a role that only uses a schema a DBA
	// created can run walhook.
	var haveSchema, haveTable bool
	if err := conn.QueryRow(ctx, "SELECT to_regnamespace($1) IS NOT NULL, to_regclass($2) IS NOT NULL", q, vt).Scan(&haveSchema, &haveTable); err != nil {
		return nil, fmt.Errorf("migrate: look up schema %s: %w", schema, err)
	}
	if !haveSchema {
		if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+q); err != nil {
			return nil, fmt.Errorf("migrate: create schema %s: %w", schema, err)
		}
	}
	if !haveTable {
		if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+vt+
			" (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"); err != nil {
			return nil, fmt.Errorf("migrate: create %s.schema_migrations: %w", schema, err)
		}
	}
	done := map[int]bool{}
	rows, err := conn.Query(ctx, "SELECT version FROM "+vt)
	if err != nil {
		return nil, fmt.Errorf("migrate: read applied versions: %w", err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, fmt.Errorf("migrate: read applied versions: %w", err)
	}
	for _, v := range versions {
		done[int(v)] = true
	}
	var applied []int
	for _, m := range all {
		if done[m.Version] {
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, strings.ReplaceAll(m.SQL, "{{schema}}", q)); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO "+vt+" (version, name) VALUES ($1, $2)", m.Version, m.Name)
			return err
		})
		if err != nil {
			return applied, fmt.Errorf("migrate: apply %03d (%s): %w", m.Version, m.Name, err)
		}
		applied = append(applied, m.Version)
	}
	return applied, nil
}
