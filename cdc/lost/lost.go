// Package lost ends the server processes of connections walhook gave up on.
//
// A connection walhook gives up on (a statement past its deadline, a
// replication stream that went silent) is closed on walhook's side only:
// on a path that stops moving bytes without closing anything, its server
// process lives on. An outbox session may hold an open transaction whose
// rows block the replay's inserts of the same keys; a walsender holds the
// slot until wal_sender_timeout (for good when that is 0). The next
// attempt ends such a process, found by pid and start time (a pid alone
// may have been reused).
package lost

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walhook/walhook/internal/pgnet"
)

// Backend identifies a server process.
type Backend struct {
	PID   uint32
	Start int64 // StartSQL of it
}

// StartSQL is a server process's start time as an exact integer
// (pg_stat_activity).
const StartSQL = "(extract(epoch FROM backend_start) * 1000000)::int8"

// selfSQL reads the current session's StartSQL.
const selfSQL = "SELECT " + StartSQL + " FROM pg_stat_activity WHERE pid = pg_backend_pid()"

// Self identifies the server process of conn.
func Self(ctx context.Context, conn *pgx.Conn) (Backend, error) {
	b := Backend{PID: conn.PgConn().PID()}
	if err := conn.QueryRow(ctx, selfSQL).Scan(&b.Start); err != nil {
		return b, fmt.Errorf("identify the outbox session: %w", err)
	}
	return b, nil
}

// SelfReplication identifies the server process of a replication
// connection (simple protocol only).
func SelfReplication(ctx context.Context, conn *pgconn.PgConn) (Backend, error) {
	b := Backend{PID: conn.PID()}
	res, err := conn.Exec(ctx, selfSQL).ReadAll()
	if err != nil {
		return b, fmt.Errorf("identify the replication session: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return b, errors.New("identify the replication session: no row for it in pg_stat_activity")
	}
	if b.Start, err = strconv.ParseInt(string(res[0].Rows[0][0]), 10, 64); err != nil {
		return b, fmt.Errorf("identify the replication session: %w", err)
	}
	return b, nil
}

// Queryer runs a query: a pool, a connection or a transaction.
type Queryer interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// End ends b's server process if it still runs, and reports whether it did.
func End(ctx context.Context, q Queryer, b Backend) (bool, error) {
	ctx, cancel := pgnet.Bound(ctx)
	defer cancel()
	var ended bool
	err := q.QueryRow(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND "+StartSQL+" = $2",
		int64(b.PID), b.Start).Scan(&ended)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil // gone already
	}
	if err != nil {
		return false, fmt.Errorf("end server process %d: %w", b.PID, err)
	}
	return ended, nil
}
