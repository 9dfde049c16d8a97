package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/walhook/walhook/migrations"
)

// The outbox SQL of this file (the checkpoint's identity and the webhook
// owners) is kept in small functions so that it can move with the rest of
// the outbox SQL.

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
		return sourceIdentity{}, &FatalError{Err: err}
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

// checkpointState is a slot's checkpoint row with what it belongs to.
type checkpointState struct {
	exists   bool
	lsn      pglogrepl.LSN
	systemID string // "" when unknown (written by an older walhook)
	timeline int32
	slotLSN  pglogrepl.LSN // the slot's consistent point when walhook created it; 0: unknown
}

// readCheckpointState reads slot's checkpoint row.
func readCheckpointState(ctx context.Context, pool *pgxpool.Pool, schema, slot string) (checkpointState, error) {
	var st checkpointState
	var lsn string
	var sys, slotLSN *string
	var tl *int32
	err := pool.QueryRow(ctx, "SELECT lsn::text, system_id, timeline, slot_lsn::text FROM "+migrations.Table(schema, "checkpoints")+" WHERE slot = $1", slot).
		Scan(&lsn, &sys, &tl, &slotLSN)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read checkpoint: %w", err)
	}
	st.exists = true
	if st.lsn, err = pglogrepl.ParseLSN(lsn); err != nil {
		return st, fmt.Errorf("read checkpoint: %w", err)
	}
	if sys != nil {
		st.systemID = *sys
	}
	if tl != nil {
		st.timeline = *tl
	}
	if slotLSN != nil {
		if st.slotLSN, err = pglogrepl.ParseLSN(*slotLSN); err != nil {
			return st, fmt.Errorf("read checkpoint: %w", err)
		}
	}
	return st, nil
}

// writeCheckpointState stores what slot's checkpoint belongs to; with reset,
// it also sets the checkpoint LSN to lsn (even backwards: a new slot's
// position), otherwise it keeps the stored LSN (lsn when there is none).
func writeCheckpointState(ctx context.Context, pool *pgxpool.Pool, schema, slot string, lsn pglogrepl.LSN, reset bool, id sourceIdentity, slotLSN pglogrepl.LSN) error {
	var sl any
	if slotLSN != 0 {
		sl = slotLSN.String()
	}
	set := "lsn = checkpoints.lsn"
	if reset {
		set = "lsn = EXCLUDED.lsn"
	}
	_, err := pool.Exec(ctx, "INSERT INTO "+migrations.Table(schema, "checkpoints")+` AS checkpoints (slot, lsn, system_id, timeline, slot_lsn, updated_at)
		VALUES ($1, $2::text::pg_lsn, $3, $4, $5::text::pg_lsn, now())
		ON CONFLICT (slot) DO UPDATE SET `+set+`, system_id = EXCLUDED.system_id, timeline = EXCLUDED.timeline,
			slot_lsn = coalesce(EXCLUDED.slot_lsn, checkpoints.slot_lsn), updated_at = now()`,
		slot, lsn.String(), id.systemID, id.timeline, sl)
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

// slotPosition returns the slot's confirmed_flush_lsn (its consistent point
// when it has just been created).
func slotPosition(ctx context.Context, conn queryer, slot string) (pglogrepl.LSN, error) {
	var s string
	if err := conn.QueryRow(ctx, "SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&s); err != nil {
		return 0, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	return pglogrepl.ParseLSN(s)
}

// claimWebhooks records that slot's capture writes the deliveries of the
// webhooks names, drops the names it no longer writes, and returns the names
// another slot already owns, with that slot.
func claimWebhooks(ctx context.Context, pool *pgxpool.Pool, schema, slot string, names []string) (map[string]string, error) {
	t := migrations.Table(schema, "webhook_owners")
	b := &pgx.Batch{}
	b.Queue("INSERT INTO "+t+" (webhook, slot) SELECT unnest($1::text[]), $2 ON CONFLICT (webhook) DO NOTHING", names, slot)
	b.Queue("DELETE FROM "+t+" WHERE slot = $2 AND NOT (webhook = ANY ($1::text[]))", names, slot)
	b.Queue("SELECT webhook, slot FROM "+t+" WHERE webhook = ANY ($1::text[]) AND slot <> $2", names, slot)
	br := pool.SendBatch(ctx, b)
	defer br.Close()
	for i := 0; i < 2; i++ {
		if _, err := br.Exec(); err != nil {
			return nil, fmt.Errorf("outbox: claim webhook names: %w", err)
		}
	}
	rows, err := br.Query()
	if err != nil {
		return nil, fmt.Errorf("outbox: claim webhook names: %w", err)
	}
	taken := map[string]string{}
	for rows.Next() {
		var w, s string
		if err := rows.Scan(&w, &s); err != nil {
			rows.Close()
			return nil, fmt.Errorf("outbox: claim webhook names: %w", err)
		}
		taken[w] = s
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outbox: claim webhook names: %w", err)
	}
	return taken, nil
}

// capturedWebhooks are the names of the webhooks capture writes rows for.
func (c *Capture) capturedWebhooks() []string {
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
	slot, schema := c.cfg.Database.Slot, c.cfg.Database.Schema
	taken, err := claimWebhooks(ctx, c.outbox, schema, slot, c.capturedWebhooks())
	if err != nil || len(taken) == 0 {
		return err
	}
	var msgs []string
	for _, w := range sortedKeys(taken) {
		msgs = append(msgs, fmt.Sprintf("webhook %q is already captured into this outbox by slot %s", w, taken[w]))
	}
	return fatalf("%s: two captures (configurations with their own slot) writing into one outbox must not share a webhook name, or their deliveries could collide on (webhook, commit_lsn, seq) and be dropped; rename the webhook in one of them, or if the configuration using slot %s is gone for good run: DELETE FROM %s WHERE slot = %s;",
		strings.Join(msgs, "; "), taken[sortedKeys(taken)[0]], migrations.Table(schema, "webhook_owners"), quoteLiteral(taken[sortedKeys(taken)[0]]))
}

// reconcileCheckpoint compares the stored checkpoint with the source and
// the slot. When the slot was created now, or the source is another server
// or timeline than the checkpoint's, the stored LSN may lie ahead of what
// this slot can stream: starting there would silently skip the changes in
// between, so the checkpoint moves to the slot's position and the gap is
// reported. created is whether Prepare created the slot just now.
func (c *Capture) reconcileCheckpoint(ctx context.Context, conn queryer, st checkpointState, created bool, why string) error {
	slot, schema := c.cfg.Database.Slot, c.cfg.Database.Schema
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
	otherSource := st.systemID != "" && (st.systemID != id.systemID || st.timeline != id.timeline)
	reset := false
	switch {
	case !st.exists:
		if why != "" {
			c.log.Error().Str("slot", slot).Msgf("replication slot %s was created again because %s: changes committed before LSN %s were NOT captured: use walhook backfill to resend current rows", slot, why, pos)
			c.gaps.Add(1)
		}
	case created || otherSource:
		what := "replication slot " + slot + " was created again"
		if why != "" {
			what += " because " + why
		} else if created {
			what += " (it was missing: dropped by someone else, a failover to a new primary, a restore?)"
		}
		if otherSource {
			what = fmt.Sprintf("the source is another server or timeline than the checkpoint's (system identifier %s timeline %d, was %s timeline %d: a failover, or a restore?)",
				id.systemID, id.timeline, st.systemID, st.timeline)
		}
		ev := c.log.Error().Str("slot", slot).Str("checkpoint", st.lsn.String()).Str("slot_position", pos.String())
		if st.lsn > pos {
			reset = true
			c.warnAmbiguous(ctx, pos, st.lsn)
			c.window.Store(&gapWindow{from: pos, to: st.lsn, before: time.Now()})
			ev.Msgf("%s: the stored checkpoint %s lies ahead of the slot's position %s, so capture starts at the slot's position instead of skipping what lies between; changes the old source committed after checkpoint %s that are not in this source's WAL after %s were NOT captured: use walhook backfill to resend current rows", what, st.lsn, pos, st.lsn, pos)
		} else {
			ev.Msgf("%s: changes committed after LSN %s until %s were NOT captured: use walhook backfill to resend current rows", what, st.lsn, pos)
		}
		c.gaps.Add(1)
		if lo, ok := c.opts.Observer.(GapObserver); ok {
			lo.Gap(slot)
		}
	}
	lsn := st.lsn
	if reset || !st.exists {
		lsn = pos
	}
	return writeCheckpointState(ctx, c.outbox, schema, slot, lsn, reset, id, slotLSN)
}

// GapObserver, when the Options' Observer implements it too, is told when
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
	var n int64
	err := c.outbox.QueryRow(ctx, "SELECT count(*) FROM "+migrations.Table(c.cfg.Database.Schema, "deliveries")+
		" WHERE commit_lsn > $1::text::pg_lsn AND commit_lsn <= $2::text::pg_lsn AND seq >= 0 AND webhook = ANY ($3::text[])",
		from.String(), to.String(), c.capturedWebhooks()).Scan(&n)
	if err != nil || n == 0 {
		return
	}
	c.log.Error().Int64("deliveries", n).Str("from", from.String()).Str("to", to.String()).
		Msgf("the outbox holds %d deliveries of the old history with commit LSNs between %s and %s, where this source numbers its own changes: a new change at exactly the same commit LSN and position as one of them would be taken for a replay and NOT enqueued (compare the source with a backfill if that matters)",
			n, from, to)
}

// gapWindow is the commit-LSN range (from, to] where, after a gap, the new
// source's changes may meet deliveries of the old history written before
// "before" with the same (webhook, commit_lsn, seq): the insert then skips
// them as a replay. The writer checks the rows it writes in the window and
// reports such collisions loudly (they are not enqueued).
type gapWindow struct {
	from, to pglogrepl.LSN
	before   time.Time
}

func (g *gapWindow) holds(l pglogrepl.LSN) bool { return g != nil && l > g.from && l <= g.to }

// collisions counts the rows of keys that were not enqueued because a
// delivery of the old history (created before g.before) holds their
// (webhook, commit_lsn, seq).
func collisions(ctx context.Context, pool *pgxpool.Pool, schema string, g *gapWindow, keys []outRow) ([]outRow, error) {
	n := len(keys)
	webhooks, lsns, seqs := make([]string, n), make([]string, n), make([]int32, n)
	for i, r := range keys {
		webhooks[i], lsns[i], seqs[i] = r.webhook, r.commitLSN.String(), r.seq
	}
	rows, err := pool.Query(ctx, "SELECT u.n FROM unnest($1::text[], $2::text[]::pg_lsn[], $3::int4[]) WITH ORDINALITY AS u(w, l, s, n) JOIN "+
		migrations.Table(schema, "deliveries")+" d ON d.webhook = u.w AND d.commit_lsn = u.l AND d.seq = u.s WHERE d.created_at < $4",
		webhooks, lsns, seqs, g.before)
	if err != nil {
		return nil, fmt.Errorf("outbox: check collisions with the old history: %w", err)
	}
	idx, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("outbox: check collisions with the old history: %w", err)
	}
	out := make([]outRow, 0, len(idx))
	for _, i := range idx {
		out = append(out, keys[i-1])
	}
	return out, nil
}

// Collisions is how many delivery rows were not enqueued because a delivery
// of an older history (before a gap) holds the same (webhook, commit_lsn,
// seq).
func (c *Capture) Collisions() int64 { return c.collided.Load() }
