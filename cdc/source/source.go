// Package source checks the source database and prepares it for capture:
// the server's settings and the role's attributes, the configured tables,
// walhook's publication and its replication slot. Each problem it finds says
// how to fix it; one retrying cannot fix is a *FatalError (or a
// *config.Error, for the configuration).
package source

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walhook/walhook/cdc/catalog"
)

// FatalError is an error that retrying cannot fix (configuration, privileges,
// server settings); Run returns it instead of reconnecting.
type FatalError struct{ Err error }

func (e *FatalError) Error() string { return e.Err.Error() }
func (e *FatalError) Unwrap() error { return e.Err }

// Fatalf is a FatalError of a formatted error.
func Fatalf(format string, args ...any) error {
	return &FatalError{Err: fmt.Errorf(format, args...)}
}

// Queryer runs queries and statements: a pool, a connection or a
// transaction.
type Queryer interface {
	catalog.Queryer
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// CheckServer fails with the fix when the server cannot do logical
// replication for walhook.
func CheckServer(ctx context.Context, conn Queryer) error {
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if level != "logical" {
		return Fatalf("wal_level is %q but walhook needs logical replication: run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL", level)
	}
	var super, repl bool
	if err := conn.QueryRow(ctx, "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user").Scan(&super, &repl); err != nil {
		return fmt.Errorf("read role attributes: %w", err)
	}
	if !super && !repl {
		var user string
		_ = conn.QueryRow(ctx, "SELECT current_user").Scan(&user)
		return Fatalf("role %q may not use replication: run ALTER ROLE %s REPLICATION; as a superuser", user, pgx.Identifier{user}.Sanitize())
	}
	return nil
}

// ServerVersionNum reads server_version_num.
func ServerVersionNum(ctx context.Context, conn Queryer) (int, error) {
	var num int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&num); err != nil {
		return 0, fmt.Errorf("read server_version_num: %w", err)
	}
	return num, nil
}

// InRecovery reports whether the server is a standby.
func InRecovery(ctx context.Context, conn Queryer) (bool, error) {
	var r bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&r); err != nil {
		return false, fmt.Errorf("read pg_is_in_recovery: %w", err)
	}
	return r, nil
}

// QuoteLiteral quotes s as an SQL string literal, for the SQL walhook
// prints for people to run (never for SQL it runs: that takes parameters).
func QuoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
