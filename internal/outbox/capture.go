package outbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
)

// EnqueueStatements are the statements capture and backfill write delivery
// rows and the capture checkpoint with. Capture runs them inside its own
// grouped transactions (COPY for large groups, a pipelined INSERT with the
// checkpoint and COMMIT for small ones), so the Store hands them out rather
// than running them.
type EnqueueStatements struct {
	// Table and Columns are the COPY target: a row is
	// (webhook, event, model, object_key, commit_lsn, seq, committed_at,
	// body, state, last_error, last_attempt_at). A row stored failed
	// (its body_template failed) has last_attempt_at = committed_at, so
	// that dispatch.failed_retention deletes it; other rows NULL.
	Table   pgx.Identifier
	Columns []string
	// Insert takes ten parallel arrays in the order of Columns' first ten
	// (commit_lsn as text, state and last_error "" for pending / NULL;
	// last_attempt_at follows from state) and skips rows whose (webhook,
	// commit_lsn, seq) is already there: a replay.
	Insert string
	// Checkpoint stores ($1 slot, $2 LSN as text) and never moves backwards.
	Checkpoint string
}

// Enqueue returns the statements that write deliveries into this outbox.
func (s *Store) Enqueue() EnqueueStatements {
	return EnqueueStatements{
		Table:   pgx.Identifier{s.schema, "deliveries"},
		Columns: []string{"webhook", "event", "model", "object_key", "commit_lsn", "seq", "committed_at", "body", "state", "last_error", "last_attempt_at"},
		Insert: "INSERT INTO " + s.deliveries + ` (webhook, event, model, object_key, commit_lsn, seq, committed_at, body, state, last_error, last_attempt_at)
			SELECT w, e, m, k, l, s, c, b, coalesce(nullif(st, ''), 'pending'), nullif(le, ''), CASE WHEN st = 'failed' THEN c END
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]::pg_lsn[], $6::int4[], $7::timestamptz[], $8::text[], $9::text[], $10::text[]) AS u(w, e, m, k, l, s, c, b, st, le)
			ON CONFLICT (webhook, commit_lsn, seq) DO NOTHING`,
		Checkpoint: "INSERT INTO " + s.checkpoints + ` (slot, lsn, updated_at) VALUES ($1, $2::text::pg_lsn, now())
			ON CONFLICT (slot) DO UPDATE SET lsn = GREATEST(EXCLUDED.lsn, checkpoints.lsn), updated_at = now()`,
	}
}

// CheckpointLSN reads the stored progress LSN of slot (0 when none).
func (s *Store) CheckpointLSN(ctx context.Context, slot string) (pglogrepl.LSN, error) {
	lsn, _, ok, err := s.Checkpoint(ctx, slot)
	if err != nil || !ok {
		return 0, err
	}
	return pglogrepl.ParseLSN(lsn)
}

// CheckpointState is a capture checkpoint with what it belongs to.
type CheckpointState struct {
	Exists   bool
	LSN      pglogrepl.LSN
	SystemID string // "" when unknown (written by an older walhook)
	Timeline int32
	SlotLSN  pglogrepl.LSN // the slot's consistent point when walhook created it; 0: unknown
	// CoversConfirmed is true once a walhook that confirms no position
	// past its checkpoint has written the row: a slot ahead of LSN then
	// skipped changes.
	CoversConfirmed bool
}

// ReadCheckpointState reads slot's checkpoint row.
func (s *Store) ReadCheckpointState(ctx context.Context, slot string) (CheckpointState, error) {
	var st CheckpointState
	var lsn string
	var sys, slotLSN *string
	var tl *int32
	err := s.pool.QueryRow(ctx, "SELECT lsn::text, system_id, timeline, slot_lsn::text, covers_confirmed FROM "+s.checkpoints+" WHERE slot = $1", slot).
		Scan(&lsn, &sys, &tl, &slotLSN, &st.CoversConfirmed)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read checkpoint: %w", err)
	}
	st.Exists = true
	if st.LSN, err = pglogrepl.ParseLSN(lsn); err != nil {
		return st, fmt.Errorf("read checkpoint: %w", err)
	}
	if sys != nil {
		st.SystemID = *sys
	}
	if tl != nil {
		st.Timeline = *tl
	}
	if slotLSN != nil {
		if st.SlotLSN, err = pglogrepl.ParseLSN(*slotLSN); err != nil {
			return st, fmt.Errorf("read checkpoint: %w", err)
		}
	}
	return st, nil
}

// WriteCheckpointState stores what slot's checkpoint belongs to; with reset,
// it also sets the checkpoint LSN to lsn (even backwards: a new slot's
// position), otherwise it keeps the stored LSN (lsn when there is none).
// slotLSN 0 keeps the stored one.
func (s *Store) WriteCheckpointState(ctx context.Context, slot string, lsn pglogrepl.LSN, reset bool, systemID string, timeline int32, slotLSN pglogrepl.LSN) error {
	var sl any
	if slotLSN != 0 {
		sl = slotLSN.String()
	}
	set := "lsn = checkpoints.lsn"
	if reset {
		set = "lsn = EXCLUDED.lsn"
	}
	_, err := s.pool.Exec(ctx, "INSERT INTO "+s.checkpoints+` AS checkpoints (slot, lsn, system_id, timeline, slot_lsn, covers_confirmed, updated_at)
		VALUES ($1, $2::text::pg_lsn, $3, $4, $5::text::pg_lsn, true, now())
		ON CONFLICT (slot) DO UPDATE SET `+set+`, system_id = EXCLUDED.system_id, timeline = EXCLUDED.timeline, covers_confirmed = true,
			slot_lsn = coalesce(EXCLUDED.slot_lsn, checkpoints.slot_lsn), updated_at = now()`,
		slot, lsn.String(), systemID, timeline, sl)
	if err != nil {
		return fmt.Errorf("write checkpoint: %w", err)
	}
	return nil
}

// WebhookOwnersTable is the quoted table that records which capture (slot)
// writes each webhook's deliveries, for messages that tell the fix.
func (s *Store) WebhookOwnersTable() string { return s.owners }

// ClaimWebhooks records that slot's capture writes the deliveries of the
// webhooks names, drops the names it no longer writes, and returns the names
// another slot already owns, with that slot.
func (s *Store) ClaimWebhooks(ctx context.Context, slot string, names []string) (map[string]string, error) {
	b := &pgx.Batch{}
	b.Queue("INSERT INTO "+s.owners+" (webhook, slot) SELECT unnest($1::text[]), $2 ON CONFLICT (webhook) DO NOTHING", names, slot)
	b.Queue("DELETE FROM "+s.owners+" WHERE slot = $2 AND NOT (webhook = ANY ($1::text[]))", names, slot)
	b.Queue("SELECT webhook, slot FROM "+s.owners+" WHERE webhook = ANY ($1::text[]) AND slot <> $2", names, slot)
	br := s.pool.SendBatch(ctx, b)
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
	var w, sl string
	if _, err := pgx.ForEachRow(rows, []any{&w, &sl}, func() error {
		taken[w] = sl
		return nil
	}); err != nil {
		return nil, fmt.Errorf("outbox: claim webhook names: %w", err)
	}
	return taken, nil
}

// CountInLSNRange counts the live-capture deliveries (seq >= 0) of webhooks
// with a commit LSN in (from, to].
func (s *Store) CountInLSNRange(ctx context.Context, from, to pglogrepl.LSN, webhooks []string) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, "SELECT count(*) FROM "+s.deliveries+
		" WHERE commit_lsn > $1::text::pg_lsn AND commit_lsn <= $2::text::pg_lsn AND seq >= 0 AND webhook = ANY ($3::text[])",
		from.String(), to.String(), webhooks).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count deliveries between %s and %s: %w", from, to, err)
	}
	return n, nil
}

// DeliveryKey is a delivery's unique key.
type DeliveryKey struct {
	Webhook   string
	CommitLSN pglogrepl.LSN
	Seq       int32
}

// CreatedBefore returns the indexes (from 0) of keys that belong to
// deliveries created before t: rows of an older history that a new change
// with the same key was taken as a replay of.
func (s *Store) CreatedBefore(ctx context.Context, keys []DeliveryKey, t time.Time) ([]int, error) {
	n := len(keys)
	webhooks, lsns, seqs := make([]string, n), make([]string, n), make([]int32, n)
	for i, k := range keys {
		webhooks[i], lsns[i], seqs[i] = k.Webhook, k.CommitLSN.String(), k.Seq
	}
	rows, err := s.pool.Query(ctx, "SELECT u.n FROM unnest($1::text[], $2::text[]::pg_lsn[], $3::int4[]) WITH ORDINALITY AS u(w, l, s, n) JOIN "+
		s.deliveries+" d ON d.webhook = u.w AND d.commit_lsn = u.l AND d.seq = u.s WHERE d.created_at < $4",
		webhooks, lsns, seqs, t)
	if err != nil {
		return nil, fmt.Errorf("outbox: check collisions with the old history: %w", err)
	}
	idx, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("outbox: check collisions with the old history: %w", err)
	}
	out := make([]int, len(idx))
	for i, v := range idx {
		out[i] = int(v) - 1
	}
	return out, nil
}

// BackfillStatements are the statements walhook backfill runs against the
// backfills and deliveries tables, inside its own transactions.
type BackfillStatements struct {
	// Create finds or creates the progress row of ($1 model, $2 webhook,
	// $3 event, $4 where, $5 rows_total) and returns its id.
	Create string
	// Restart resets progress row $1 with a new total $2.
	Restart string
	// Read returns last_key, rows_done, deliveries, rows_total and
	// finished_at of row $1.
	Read string
	// SetTotal sets rows_total of row $1 to $2; Finish marks row $1 done.
	SetTotal, Finish string
	// LockDeliveries keeps capture's inserts out while a page is checked
	// against newer changes and enqueued.
	LockDeliveries string
	// NewerObjects lists (webhook, object_key) of model $3 with a change of
	// webhooks $1 at or after commit LSN $2 (as text).
	NewerObjects string
	// Progress records a page: row $1, last key $2, $3 rows read, $4
	// deliveries enqueued, $5 whether it was the last page.
	Progress string
}

// Backfill returns the backfill statements for this outbox.
func (s *Store) Backfill() BackfillStatements {
	return BackfillStatements{
		Create: "INSERT INTO " + s.backfills + ` (model, webhook, event, where_sql, rows_total) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (model, webhook, event, where_sql) DO UPDATE SET updated_at = backfills.updated_at RETURNING id`,
		Restart: "UPDATE " + s.backfills + ` SET last_key = NULL, rows_done = 0, deliveries = 0, rows_total = $2,
			started_at = now(), updated_at = now(), finished_at = NULL WHERE id = $1`,
		Read:           "SELECT last_key, rows_done, deliveries, rows_total, finished_at FROM " + s.backfills + " WHERE id = $1",
		SetTotal:       "UPDATE " + s.backfills + " SET rows_total = $2 WHERE id = $1",
		Finish:         "UPDATE " + s.backfills + " SET finished_at = now(), updated_at = now() WHERE id = $1",
		LockDeliveries: "LOCK TABLE " + s.deliveries + " IN SHARE ROW EXCLUSIVE MODE",
		NewerObjects:   "SELECT DISTINCT webhook, object_key FROM " + s.deliveries + " WHERE webhook = ANY($1) AND commit_lsn >= $2::text::pg_lsn AND model = $3",
		Progress: "UPDATE " + s.backfills + ` SET last_key = $2, rows_done = rows_done + $3, deliveries = deliveries + $4, updated_at = now(),
			finished_at = CASE WHEN $5 THEN now() END WHERE id = $1`,
	}
}
