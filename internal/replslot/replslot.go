// Package replslot reads replication slots from pg_replication_slots: the
// one place walhook queries that view. Read returns one slot's state (every
// column capture, backfill, check, status, the demo and the status page
// use, in one query of the view); Holder says which client holds an
// active slot; Capacity counts the server's slots for `walhook check`.
// One file: replslot.go.
package replslot

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// Querier runs a query returning one row (a pool, a connection, a
// transaction).
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Slot is a replication slot as pg_replication_slots shows it. The byte
// distances are measured from the server's current WAL position (on a
// standby: its last replayed position); nil when the slot has no such LSN.
type Slot struct {
	Name      string
	Plugin    string // "" for a physical slot
	Database  string // "" for a physical slot
	Active    bool
	ActivePID *int32 // the process holding it, when Active
	WALStatus string // reserved, extended, unreserved or lost ("" before PG 13)
	// Confirmed is confirmed_flush_lsn; HasConfirmed is false when it is
	// NULL (a slot still being created).
	Confirmed     pglogrepl.LSN
	HasConfirmed  bool
	LagBytes      *int64 // WAL position - confirmed_flush_lsn
	RetainedBytes *int64 // WAL position - restart_lsn: WAL the slot keeps
	SafeWALSize   *int64 // bytes until max_slot_wal_keep_size invalidates it (NULL when unlimited)
}

// readSQL reads one slot. pg_replication_slots is visible from every
// database of the server, and to every role.
const readSQL = `SELECT coalesce(s.plugin, ''), coalesce(s.database::text, ''), s.active, s.active_pid,
	coalesce(s.wal_status, ''), s.confirmed_flush_lsn::text,
	pg_wal_lsn_diff(c.lsn, s.confirmed_flush_lsn)::bigint, pg_wal_lsn_diff(c.lsn, s.restart_lsn)::bigint, s.safe_wal_size
FROM pg_replication_slots AS s,
	(SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn) AS c
WHERE s.slot_name = $1`

// Read returns slot name's state; found is false when no such slot exists.
func Read(ctx context.Context, q Querier, name string) (s Slot, found bool, err error) {
	s.Name = name
	var confirmed *string
	err = q.QueryRow(ctx, readSQL, name).Scan(&s.Plugin, &s.Database, &s.Active, &s.ActivePID, &s.WALStatus,
		&confirmed, &s.LagBytes, &s.RetainedBytes, &s.SafeWALSize)
	if errors.Is(err, pgx.ErrNoRows) {
		return Slot{Name: name}, false, nil
	}
	if err != nil {
		return Slot{Name: name}, false, fmt.Errorf("read replication slot %s: %w", name, err)
	}
	if confirmed != nil {
		if s.Confirmed, err = pglogrepl.ParseLSN(*confirmed); err != nil {
			return Slot{Name: name}, false, fmt.Errorf("read replication slot %s: confirmed_flush_lsn: %w", name, err)
		}
		s.HasConfirmed = true
	}
	return s, true, nil
}

// Client is the process holding an active slot, from pg_stat_activity.
// Addr is "" for a local (Unix socket) client, and for roles without
// pg_read_all_stats, which do not see other roles' addresses.
type Client struct {
	PID             int32
	ApplicationName string
	Addr            string
}

// Holder describes the process pid holding a slot (Slot.ActivePID).
func Holder(ctx context.Context, q Querier, pid int32) (Client, error) {
	c := Client{PID: pid}
	err := q.QueryRow(ctx, `SELECT coalesce(application_name, ''), coalesce(host(client_addr), '')
		FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&c.ApplicationName, &c.Addr)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, nil // gone since
	}
	if err != nil {
		return c, fmt.Errorf("read pg_stat_activity: %w", err)
	}
	return c, nil
}

// Usage is the server's replication slots as a whole, seen from the slot
// walhook uses.
type Usage struct {
	MaxSlots   int      // max_replication_slots
	MaxSenders int      // max_wal_senders
	Used       int      // slots that exist
	Exists     bool     // the slot exists in the current database
	Active     bool     // ... and is in use
	Inactive   []string // names of the slots nobody uses, sorted
}

// Capacity reads the slot settings and which slots exist.
func Capacity(ctx context.Context, q Querier, slot string) (Usage, error) {
	var u Usage
	err := q.QueryRow(ctx, `
		SELECT current_setting('max_replication_slots')::int, current_setting('max_wal_senders')::int,
		       count(*)::int, coalesce(bool_or(slot_name = $1 AND database = current_database()), false),
		       coalesce(bool_or(slot_name = $1 AND database = current_database() AND active), false),
		       coalesce(array_agg(slot_name::text ORDER BY slot_name) FILTER (WHERE NOT active), '{}')
		FROM pg_replication_slots`, slot).Scan(&u.MaxSlots, &u.MaxSenders, &u.Used, &u.Exists, &u.Active, &u.Inactive)
	if err != nil {
		return Usage{}, fmt.Errorf("read pg_replication_slots: %w", err)
	}
	return u, nil
}
