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
	"strings"

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
	// Failover is true for a failover slot, which standbys with
	// sync_replication_slots keep a copy of (PostgreSQL 17+); Synced is
	// true for such a copy on a standby.
	Failover bool
	Synced   bool
	// Invalidation says why PostgreSQL gave the slot up, "" while it is
	// usable: wal_removed (max_slot_wal_keep_size), rows_removed,
	// wal_level_insufficient (17+), idle_timeout (18+,
	// idle_replication_slot_timeout); "lost" on 13-16 from wal_status,
	// "conflicting" on 16 for a standby's slot.
	Invalidation string
}

// Lost reports whether PostgreSQL has given the slot up: it can no longer
// be streamed from, and must be dropped and created again.
func (s Slot) Lost() bool { return s.Invalidation != "" || s.WALStatus == "lost" }

// readSQL reads one slot. pg_replication_slots is visible from every
// database of the server, and to every role. Columns newer than 13
// (failover, synced, invalidation_reason, conflicting) are read through
// to_jsonb, which gives NULL where a version lacks them.
const readSQL = `SELECT coalesce(s.plugin, ''), coalesce(s.database::text, ''), s.active, s.active_pid,
	coalesce(s.wal_status, ''), s.confirmed_flush_lsn::text,
	pg_wal_lsn_diff(c.lsn, s.confirmed_flush_lsn)::bigint, pg_wal_lsn_diff(c.lsn, s.restart_lsn)::bigint, s.safe_wal_size,
	coalesce((to_jsonb(s) ->> 'failover')::bool, false), coalesce((to_jsonb(s) ->> 'synced')::bool, false),
	coalesce(to_jsonb(s) ->> 'invalidation_reason', CASE WHEN (to_jsonb(s) ->> 'conflicting')::bool THEN 'conflicting' END, '')
FROM pg_replication_slots AS s,
	(SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END AS lsn) AS c
WHERE s.slot_name = $1`

// Read returns slot name's state; found is false when no such slot exists.
func Read(ctx context.Context, q Querier, name string) (s Slot, found bool, err error) {
	s.Name = name
	var confirmed *string
	err = q.QueryRow(ctx, readSQL, name).Scan(&s.Plugin, &s.Database, &s.Active, &s.ActivePID, &s.WALStatus,
		&confirmed, &s.LagBytes, &s.RetainedBytes, &s.SafeWALSize, &s.Failover, &s.Synced, &s.Invalidation)
	if errors.Is(err, pgx.ErrNoRows) {
		return Slot{Name: name}, false, nil
	}
	if err != nil {
		return Slot{Name: name}, false, fmt.Errorf("read replication slot %s: %w", name, err)
	}
	if s.Invalidation == "" && s.WALStatus == "lost" {
		s.Invalidation = "lost"
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

// Standbys is what the server says about keeping a failover slot on its
// standbys (PostgreSQL 17+): the physical slots named in
// synchronized_standby_slots, which logical decoding waits for, and how
// far each has flushed.
type Standbys struct {
	// Supported is false before PostgreSQL 17 (no failover slots).
	Supported bool
	// Names are synchronized_standby_slots, in order.
	Names []string
	// Missing are Names without a physical slot on this server; Inactive
	// those whose standby is not connected.
	Missing, Inactive []string
	// Flushed is the least restart_lsn of the named slots that exist: the
	// WAL every one of those standbys has flushed (0 when none).
	Flushed pglogrepl.LSN
	// Streaming is how many standbys pg_stat_replication shows streaming.
	Streaming int
}

// standbysSQL reads synchronized_standby_slots (NULL before 17: the
// setting does not exist) and the physical slots it names.
const standbysSQL = `SELECT current_setting('server_version_num')::int >= 170000,
	coalesce(current_setting('synchronized_standby_slots', true), ''),
	(SELECT count(*)::int FROM pg_stat_replication WHERE state = 'streaming')`

const namedSlotsSQL = `SELECT n.name, s.slot_name IS NOT NULL AND s.slot_type = 'physical', coalesce(s.active, false), s.restart_lsn::text
FROM unnest($1::text[]) WITH ORDINALITY AS n(name, i)
LEFT JOIN pg_replication_slots s ON s.slot_name = n.name
ORDER BY n.i`

// QueryRower runs queries returning rows and one row.
type QueryRower interface {
	Querier
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// ReadStandbys reads the synchronized_standby_slots setting and the state
// of the slots it names.
func ReadStandbys(ctx context.Context, q QueryRower) (Standbys, error) {
	var st Standbys
	var setting string
	if err := q.QueryRow(ctx, standbysSQL).Scan(&st.Supported, &setting, &st.Streaming); err != nil {
		return Standbys{}, fmt.Errorf("read synchronized_standby_slots: %w", err)
	}
	for _, n := range strings.Split(setting, ",") {
		if n = strings.Trim(strings.TrimSpace(n), `"`); n != "" {
			st.Names = append(st.Names, n)
		}
	}
	if len(st.Names) == 0 {
		return st, nil
	}
	rows, err := q.Query(ctx, namedSlotsSQL, st.Names)
	if err != nil {
		return Standbys{}, fmt.Errorf("read the synchronized standby slots: %w", err)
	}
	defer rows.Close()
	first := true
	for rows.Next() {
		var name string
		var exists, active bool
		var restart *string
		if err := rows.Scan(&name, &exists, &active, &restart); err != nil {
			return Standbys{}, fmt.Errorf("read the synchronized standby slots: %w", err)
		}
		switch {
		case !exists:
			st.Missing = append(st.Missing, name)
			st.Flushed, first = 0, false
			continue
		case !active:
			st.Inactive = append(st.Inactive, name)
		}
		var lsn pglogrepl.LSN
		if restart != nil {
			if lsn, err = pglogrepl.ParseLSN(*restart); err != nil {
				return Standbys{}, fmt.Errorf("read the synchronized standby slots: restart_lsn: %w", err)
			}
		}
		if first || lsn < st.Flushed {
			st.Flushed, first = lsn, false
		}
	}
	if err := rows.Err(); err != nil {
		return Standbys{}, fmt.Errorf("read the synchronized standby slots: %w", err)
	}
	return st, nil
}

// FailoverReady says whether a failover slot s would survive a failover
// to a standby, as far as the primary can tell: the slot is a failover
// slot, synchronized_standby_slots names the standbys' physical slots, and
// each of those exists and is streaming. why says what is missing ("" when
// ready).
func FailoverReady(s Slot, st Standbys) (ready bool, why string) {
	switch {
	case !st.Supported:
		return false, "PostgreSQL before 17 has no failover slots"
	case !s.Failover:
		return false, "the slot is not a failover slot (database.slot_failover)"
	case len(st.Names) == 0:
		return false, "synchronized_standby_slots is empty on the primary: no standby is known to keep the slot"
	case len(st.Missing) > 0:
		return false, "synchronized_standby_slots names physical slots that do not exist: " + strings.Join(st.Missing, ", ")
	case len(st.Inactive) > 0:
		return false, "the standbys of synchronized_standby_slots are not connected: " + strings.Join(st.Inactive, ", ")
	}
	return true, ""
}
