package cdc

import (
	"context"
	"errors"
	"fmt"
	"github.com/walhook/walhook/cdc/source"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/internal/pgnet"
)

// A connection walhook gives up on (a statement past its deadline, a
// replication stream that went silent) is closed on walhook's side only:
// on a path that stops moving bytes without closing anything, its server
// process lives on. An outbox session may hold an open transaction whose
// rows block the replay's inserts of the same keys; a walsender holds the
// slot until wal_sender_timeout (for good when that is 0). The next
// attempt ends such a process, found by pid and start time (a pid alone
// may have been reused).

// backend identifies a server process.
type backend struct {
	pid   uint32
	start int64 // backendStartSQL of it
}

// backendStartSQL is a server process's start time as an exact integer.
const backendStartSQL = "(extract(epoch FROM backend_start) * 1000000)::int8"

// selfSQL reads the current session's backendStartSQL.
const selfSQL = "SELECT " + backendStartSQL + " FROM pg_stat_activity WHERE pid = pg_backend_pid()"

// selfBackend identifies the server process of conn.
func selfBackend(ctx context.Context, conn *pgx.Conn) (backend, error) {
	b := backend{pid: conn.PgConn().PID()}
	if err := conn.QueryRow(ctx, selfSQL).Scan(&b.start); err != nil {
		return b, fmt.Errorf("identify the outbox session: %w", err)
	}
	return b, nil
}

// selfReplicationBackend identifies the server process of a replication
// connection (simple protocol only).
func selfReplicationBackend(ctx context.Context, conn *pgconn.PgConn) (backend, error) {
	b := backend{pid: conn.PID()}
	res, err := conn.Exec(ctx, selfSQL).ReadAll()
	if err != nil {
		return b, fmt.Errorf("identify the replication session: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return b, errors.New("identify the replication session: no row for it in pg_stat_activity")
	}
	if b.start, err = strconv.ParseInt(string(res[0].Rows[0][0]), 10, 64); err != nil {
		return b, fmt.Errorf("identify the replication session: %w", err)
	}
	return b, nil
}

// endBackend ends b's server process if it still runs, and reports whether
// it did.
func endBackend(ctx context.Context, q source.Queryer, b backend) (bool, error) {
	ctx, cancel := pgnet.Bound(ctx)
	defer cancel()
	var ended bool
	err := q.QueryRow(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND "+backendStartSQL+" = $2",
		int64(b.pid), b.start).Scan(&ended)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil // gone already
	}
	if err != nil {
		return false, fmt.Errorf("end server process %d: %w", b.pid, err)
	}
	return ended, nil
}

// walsenderWaits are the wait events of a walsender with nothing to do
// but wait: for WAL, for the client's messages or for room to send. One of
// them while the stream hears nothing, not even a reply it asked for, means
// the path between them is dead. (PostgreSQL 17 spells WalSenderWaitForWal
// with a lowercase "al".)
const walsenderWaits = "'walsendermain', 'walsenderwaitforwal', 'walsenderwritedata'"

// walsenderBusy reports, when the stream has heard nothing past its bound,
// what its walsender is doing if it is busy ("" when it waits, is gone or
// cannot be asked: then the path counts as dead). A walsender decoding a
// large transaction answers status updates only every wal_sender_timeout/2.
func (c *Capture) walsenderBusy(ctx context.Context) string {
	b := c.walsender
	if b == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, pgnet.PingTimeout)
	defer cancel()
	var event string
	err := c.source.QueryRow(ctx, "SELECT coalesce(wait_event_type || ':' || wait_event, 'running') FROM pg_stat_activity WHERE pid = $1 AND "+
		backendStartSQL+" = $2 AND state = 'active' AND lower(coalesce(wait_event, '')) NOT IN ("+walsenderWaits+")",
		int64(b.pid), b.start).Scan(&event)
	if err != nil {
		return ""
	}
	return event
}
