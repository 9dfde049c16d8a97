package outbox

import (
	"context"
	"fmt"

	"github.com/walhook/walhook/migrations"
)

// Tables are the outbox tables walhook reads and writes (all of them need
// SELECT, INSERT, UPDATE and DELETE for the role walhook runs as).
var Tables = []string{"deliveries", "attempts", "checkpoints", "backfills", "dispatchers", "webhook_owners", "minutes"}

// SchemaAccess is what the connected role may do with the outbox schema.
type SchemaAccess struct {
	Exists, Usage, CanCreate, CanCreateInDB bool
	User, Database                          string
}

// Access reads the outbox schema's existence and the role's privileges on
// it and on its database (for walhook check).
func (s *Store) Access(ctx context.Context) (SchemaAccess, error) {
	var a SchemaAccess
	err := s.pool.QueryRow(ctx, `SELECT n.oid IS NOT NULL,
		coalesce(has_schema_privilege(n.oid, 'USAGE'), false), coalesce(has_schema_privilege(n.oid, 'CREATE'), false),
		has_database_privilege(current_database(), 'CREATE'), current_user, current_database()
		FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = $1`, s.schema).
		Scan(&a.Exists, &a.Usage, &a.CanCreate, &a.CanCreateInDB, &a.User, &a.Database)
	if err != nil {
		return a, fmt.Errorf("read the outbox schema's privileges: %w", err)
	}
	return a, nil
}

// MigrationsTable is the quoted table of applied migrations.
func (s *Store) MigrationsTable() string { return migrations.Table(s.schema, "schema_migrations") }

// MigrationVersion returns the newest migration applied to the outbox (0
// when none). The error of a role that may not read the table is returned
// as it is.
func (s *Store) MigrationVersion(ctx context.Context) (int, error) {
	var versions *string
	if err := s.pool.QueryRow(ctx, "SELECT to_regclass($1)::text", s.MigrationsTable()).Scan(&versions); err != nil {
		return 0, err
	}
	if versions == nil {
		return 0, nil
	}
	var current int
	if err := s.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+s.MigrationsTable()).Scan(&current); err != nil {
		return 0, err
	}
	return current, nil
}

// MissingPrivileges returns the quoted outbox tables the role may not read
// and write.
func (s *Store) MissingPrivileges(ctx context.Context) ([]string, error) {
	var missing []string
	for _, t := range Tables {
		q := migrations.Table(s.schema, t)
		var sel, ins, upd, del bool
		err := s.pool.QueryRow(ctx, `SELECT has_table_privilege($1, 'SELECT'), has_table_privilege($1, 'INSERT'),
			has_table_privilege($1, 'UPDATE'), has_table_privilege($1, 'DELETE')`, q).Scan(&sel, &ins, &upd, &del)
		if err != nil {
			return nil, fmt.Errorf("read privileges on %s: %w", q, err)
		}
		if !sel || !ins || !upd || !del {
			missing = append(missing, q)
		}
	}
	return missing, nil
}
