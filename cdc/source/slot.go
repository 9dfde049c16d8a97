package source

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/replslot"
)

// SlotResult says what EnsureSlot did.
type SlotResult struct {
	Created bool
	// Recreated, when not empty, says why an existing slot was dropped and
	// created again (changes before that point can no longer be decoded).
	Recreated string
	// AlterFailover, when set, is the failover setting an existing slot
	// must be altered to (ALTER_REPLICATION_SLOT, on a replication
	// connection).
	AlterFailover *bool
}

// EnsureSlot creates the permanent pgoutput slot when missing and checks an
// existing one. A slot that can no longer serve (invalidated, or older than
// the publication, which was missing) is dropped and created again. On
// PostgreSQL 17+ the slot is a failover slot unless database.slot_failover
// is false.
func EnsureSlot(ctx context.Context, conn Queryer, cfg *config.Config, publicationCreated bool) (SlotResult, error) {
	slot := cfg.Database.Slot
	num, err := ServerVersionNum(ctx, conn)
	if err != nil {
		return SlotResult{}, err
	}
	failover, impossible := cfg.Database.WantFailover(num)
	standby, err := InRecovery(ctx, conn)
	if err != nil {
		return SlotResult{}, err
	}
	if standby && failover {
		// A standby's own slot cannot be a failover slot.
		if cfg.Database.SlotFailover != nil {
			return SlotResult{}, &config.Error{Problems: []config.Problem{{File: cfg.File, Line: cfg.Database.FailoverLine,
				Msg: "database.slot_failover: true, but the source is a standby, whose slots cannot be failover slots: remove the setting (capture from a standby keeps its own slot)"}}}
		}
		failover = false
	}
	if impossible {
		return SlotResult{}, &config.Error{Problems: []config.Problem{{File: cfg.File, Line: cfg.Database.FailoverLine,
			Msg: fmt.Sprintf("database.slot_failover: true needs PostgreSQL 17 or newer (the server is %d.%d): remove the setting, or upgrade the server", num/10000, num%10000)}}}
	}
	st, found, err := replslot.Read(ctx, conn, slot)
	if err != nil {
		return SlotResult{}, err
	}
	if !found {
		return createSlot(ctx, conn, slot, failover)
	}
	plugin, db := st.Plugin, st.Database
	var curDB string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&curDB); err != nil {
		return SlotResult{}, err
	}
	if plugin != "pgoutput" || db != curDB {
		return SlotResult{}, Fatalf("replication slot %q exists but is not a pgoutput slot of database %s (plugin %q, database %q): choose another database.slot or drop it with SELECT pg_drop_replication_slot('%s');", slot, curDB, plugin, db, slot)
	}
	var why string
	switch {
	case st.Lost():
		why = "it was invalidated (" + InvalidationText(st.Invalidation) + ")"
	case publicationCreated:
		why = fmt.Sprintf("publication %q was missing and has been created again, and a slot cannot decode with a publication created after it", cfg.Database.Publication)
	default:
		if num >= config.FailoverVersion && st.Failover != failover && !standby {
			return SlotResult{AlterFailover: &failover}, nil
		}
		return SlotResult{}, nil
	}
	if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot); err != nil {
		return SlotResult{}, fmt.Errorf("drop unusable replication slot %s (%s): %w", slot, why, err)
	}
	res, err := createSlot(ctx, conn, slot, failover)
	res.Recreated = why
	return res, err
}

// InvalidationText explains a slot's invalidation reason (replslot.Slot's
// Invalidation) and what prevents it.
func InvalidationText(reason string) string {
	switch reason {
	case "wal_removed", "lost":
		return "wal_status = lost: it fell more than max_slot_wal_keep_size behind; raise max_slot_wal_keep_size, or alert on walhook_slot_retained_wal_bytes before it is reached"
	case "idle_timeout":
		return "idle_replication_slot_timeout: nothing streamed from it for that long; raise idle_replication_slot_timeout, or keep walhook running"
	case "rows_removed":
		return "rows_removed: the catalog rows it needed were vacuumed away (on a standby: set hot_standby_feedback = on and use a physical slot, primary_slot_name)"
	case "wal_level_insufficient":
		return "wal_level_insufficient: the primary's wal_level is below logical"
	case "conflicting":
		return "it conflicted with recovery on this standby: set hot_standby_feedback = on and primary_slot_name on the standby"
	}
	return reason
}

func createSlot(ctx context.Context, conn Queryer, slot string, failover bool) (SlotResult, error) {
	var err error
	if failover {
		// (name, plugin, temporary, twophase, failover): 17+.
		_, err = conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)", slot)
	} else {
		_, err = conn.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerrcode.DuplicateObject { // created by another process just now
		return SlotResult{}, nil
	}
	if err != nil {
		return SlotResult{}, fmt.Errorf("create replication slot %s: %w", slot, permissionHint(err))
	}
	return SlotResult{Created: true}, nil
}
