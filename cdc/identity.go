package cdc

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/cdc/enqueue"
	"github.com/walhook/walhook/cdc/source"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/replslot"
)

// The outbox statements this file runs (the checkpoint's identity, the
// webhook owners) live in internal/outbox.

// sourceIdentity is the source server as IDENTIFY_SYSTEM describes it.
type sourceIdentity struct {
	systemID string
	timeline int32
}

// identifySource reads the source's system identifier and timeline over a
// replication connection.
func identifySource(ctx context.Context, dsn string) (sourceIdentity, error) {
	rcfg, err := ReplicationConfig(dsn)
	if err != nil {
		return sourceIdentity{}, &source.FatalError{Err: err}
	}
	conn, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		return sourceIdentity{}, fmt.Errorf("replication connection: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	res, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return sourceIdentity{}, fmt.Errorf("identify system: %w", err)
	}
	return sourceIdentity{systemID: res.SystemID, timeline: res.Timeline}, nil
}

// slotPosition returns the slot's confirmed_flush_lsn (its consistent point
// when it has just been created).
func slotPosition(ctx context.Context, conn source.Queryer, slot string) (pglogrepl.LSN, error) {
	s, found, err := replslot.Read(ctx, conn, slot)
	if err != nil {
		return 0, err
	}
	if !found {
		return 0, fmt.Errorf("read replication slot %s: %w", slot, pgx.ErrNoRows)
	}
	return s.Confirmed, nil
}

// capturedWebhooks are the names of the webhooks capture writes rows for.
func (c *Capture) capturedWebhooks() []string {
	c.reload.mu.Lock()
	defer c.reload.mu.Unlock()
	var names []string
	for _, evs := range c.hooks {
		for _, ns := range evs {
			for _, n := range ns {
				if !slices.Contains(names, n) {
					names = append(names, n)
				}
			}
		}
	}
	sort.Strings(names)
	return names
}

// claimOwnWebhooks refuses a configuration whose webhook names another
// capture (slot) already writes into this outbox.
func (c *Capture) claimOwnWebhooks(ctx context.Context) error {
	return c.claimWebhooks(ctx, c.capturedWebhooks())
}

// claimWebhooks claims names for this capture's slot (claimOwnWebhooks).
func (c *Capture) claimWebhooks(ctx context.Context, names []string) error {
	slot := c.cfg.Database.Slot
	taken, err := c.store.ClaimWebhooks(ctx, slot, names)
	if err != nil || len(taken) == 0 {
		return err
	}
	var msgs []string
	for _, w := range slices.Sorted(maps.Keys(taken)) {
		msgs = append(msgs, fmt.Sprintf("webhook %q is already captured into this outbox by slot %s", w, taken[w]))
	}
	return source.Fatalf("%s: two captures (configurations with their own slot) writing into one outbox must not share a webhook name, or their deliveries could collide on (webhook, commit_lsn, seq) and be dropped; rename the webhook in one of them, or if the configuration using slot %s is gone for good run: DELETE FROM %s WHERE slot = %s;",
		strings.Join(msgs, "; "), taken[slices.Sorted(maps.Keys(taken))[0]], c.store.WebhookOwnersTable(), source.QuoteLiteral(taken[slices.Sorted(maps.Keys(taken))[0]]))
}

// reconcileCheckpoint compares the stored checkpoint with the source and
// the slot, at Prepare and at every reconnection. When the slot was created
// now, or the source is another server or timeline than the checkpoint's,
// the stored LSN may lie ahead of what this slot can stream: starting there
// would silently skip the changes in between, so the checkpoint moves to
// the slot's position and the gap is reported. A slot found past the
// checkpoint skipped changes (capture confirms nothing past its
// checkpoint): that is a gap too. A promotion of a standby that kept a
// synced copy of the slot (same system, new timeline, slot not past the
// checkpoint) is no gap. created is whether the slot was created just now;
// why, when not empty, why it was created again.
func (c *Capture) reconcileCheckpoint(ctx context.Context, conn source.Queryer, st outbox.CheckpointState, created bool, why string) error {
	slot := c.cfg.Database.Slot
	id, err := identifySource(ctx, c.cfg.Database.DSN)
	if err != nil {
		return err
	}
	pos, err := slotPosition(ctx, conn, slot)
	if err != nil {
		return err
	}
	var slotLSN pglogrepl.LSN
	if created {
		slotLSN = pos
	}
	otherSource := st.SystemID != "" && (st.SystemID != id.systemID || st.Timeline != id.timeline)
	promoted := st.SystemID == id.systemID && st.Timeline != id.timeline
	ahead := st.Exists && !created && pos > st.LSN && (st.CoversConfirmed || otherSource)
	reset := false
	switch {
	case !st.Exists:
		if why != "" {
			c.log.Error().Str("slot", slot).Msgf("replication slot %s was created again because %s: changes committed before LSN %s were NOT captured: use walhook backfill to resend current rows", slot, why, pos)
			c.gaps.Add(1)
		}
	case promoted && !created && !ahead:
		c.log.Info().Str("slot", slot).Str("checkpoint", st.LSN.String()).Str("slot_position", pos.String()).
			Msgf("the source was promoted (timeline %d, was %d) and kept the failover slot %s: capture continues from checkpoint %s, nothing skipped", id.timeline, st.Timeline, slot, st.LSN)
	case created || otherSource || ahead:
		what := "replication slot " + slot + " was created again"
		if why != "" {
			what += " because " + why
		} else if created {
			what += " (it was missing: dropped by someone else, a failover to a new primary, a restore?)"
		}
		if otherSource {
			what = fmt.Sprintf("the source is another server or timeline than the checkpoint's (system identifier %s timeline %d, was %s timeline %d: a failover, or a restore?)",
				id.systemID, id.timeline, st.SystemID, st.Timeline)
		} else if ahead {
			what = fmt.Sprintf("replication slot %s is at %s, past walhook's checkpoint %s, and walhook never confirms past its checkpoint: the slot was dropped and created again, or this server was promoted or restored without a synced copy of it", slot, pos, st.LSN)
		}
		ev := c.log.Error().Str("slot", slot).Str("checkpoint", st.LSN.String()).Str("slot_position", pos.String())
		reset = true // to the slot's position, forward or back
		if st.LSN > pos {
			c.warnAmbiguous(ctx, pos, st.LSN)
			c.window.Store(&enqueue.GapWindow{From: pos, To: st.LSN, Before: time.Now()})
			ev.Msgf("%s: the stored checkpoint %s lies ahead of the slot's position %s, so capture starts at the slot's position instead of skipping what lies between; changes the old source committed after checkpoint %s that are not in this source's WAL after %s were NOT captured: use walhook backfill to resend current rows", what, st.LSN, pos, st.LSN, pos)
		} else {
			ev.Msgf("%s: changes committed after LSN %s until %s were NOT captured: use walhook backfill to resend current rows", what, st.LSN, pos)
		}
		c.gaps.Add(1)
		if lo, ok := c.opts.Observer.(GapObserver); ok {
			lo.Gap(slot)
		}
	}
	lsn := st.LSN
	if reset || !st.Exists {
		lsn = pos
	}
	return c.store.WriteCheckpointState(ctx, slot, lsn, reset, id.systemID, id.timeline, slotLSN)
}

// GapObserver is told, when the Options' Observer implements it too, when
// capture starts after a gap: changes between the stored checkpoint and the
// replication slot's position were not captured (walhook_capture_gaps_total).
type GapObserver interface {
	Gap(slot string)
}

// Gaps is how many times this Capture started after a gap in the changes it
// could capture (a slot created again, another source server or timeline).
func (c *Capture) Gaps() int64 { return c.gaps.Load() }

// warnAmbiguous says how many deliveries of the old history lie in the
// commit-LSN range the new slot will number its own changes in: a new change
// with exactly the same (webhook, commit LSN, seq) as one of them would be
// taken for a replay and not enqueued.
func (c *Capture) warnAmbiguous(ctx context.Context, from, to pglogrepl.LSN) {
	n, err := c.store.CountInLSNRange(ctx, from, to, c.capturedWebhooks())
	if err != nil || n == 0 {
		return
	}
	c.log.Error().Int64("deliveries", n).Str("from", from.String()).Str("to", to.String()).
		Msgf("the outbox holds %d deliveries of the old history with commit LSNs between %s and %s, where this source numbers its own changes: a new change at exactly the same commit LSN and position as one of them would be taken for a replay and NOT enqueued (compare the source with a backfill if that matters)",
			n, from, to)
}

// Collisions is how many delivery rows were not enqueued because a delivery
// of an older history (before a gap) holds the same (webhook, commit_lsn,
// seq).
func (c *Capture) Collisions() int64 { return c.collided.Load() }
