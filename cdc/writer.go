package cdc

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/migrations"
)

// outRow is one delivery row to enqueue.
type outRow struct {
	webhook, event, model, key string
	commitLSN                  pglogrepl.LSN
	seq                        int32
	committedAt                time.Time
	body                       string
	// state and lastError, when set, store the row as already failed (a
	// body_template that failed to render); default: pending.
	state, lastError string
}

// batch carries rows of one source transaction to the writer; commit marks
// the transaction's end (endLSN is its TransactionEndLSN).
type batch struct {
	rows   []outRow
	commit bool
	endLSN pglogrepl.LSN
}

// writer writes delivery rows and the checkpoint into the outbox. Rows of
// many small source transactions share one outbox transaction; a large one
// is written in chunks inside the open transaction, which commits only at a
// source transaction boundary. flushed is the end LSN of the last source
// transaction whose rows are committed: the only LSN safe to confirm.
type writer struct {
	pool       *pgxpool.Pool
	slot       string
	insertSQL  string
	insertErr  string // insertSQL with state and last_error per row
	ckptSQL    string
	channel    string
	groupRows  int
	groupDelay time.Duration
	log        zerolog.Logger

	flushed  atomic.Uint64
	rows     *atomic.Int64 // rows enqueued (committed), shared with Capture
	observer Observer
	counts   map[modelEvent]int // rows per model and event in the open transaction
}

// Observer is told about committed outbox rows (for metrics). Counts are
// delivery rows, i.e. changes times matching webhooks.
type Observer interface {
	Enqueued(model, event string, rows int)
}

type modelEvent struct{ model, event string }

// chunkRows bounds rows buffered before they are written into the open
// outbox transaction.
const chunkRows = 500

func newWriter(pool *pgxpool.Pool, schema, slot string, groupRows int, groupDelay time.Duration, rows *atomic.Int64, obs Observer, log zerolog.Logger) *writer {
	d := migrations.Table(schema, "deliveries")
	return &writer{
		pool: pool, slot: slot, groupRows: groupRows, groupDelay: groupDelay, rows: rows, log: log,
		observer: obs, counts: map[modelEvent]int{},
		channel: migrations.Channel(schema),
		insertSQL: "INSERT INTO " + d + ` (webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
			SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]::pg_lsn[], $6::int4[], $7::timestamptz[], $8::text[])
			ON CONFLICT (webhook, commit_lsn, seq) DO NOTHING`,
		insertErr: "INSERT INTO " + d + ` (webhook, event, model, object_key, commit_lsn, seq, committed_at, body, state, last_error)
			SELECT w, e, m, k, l, s, c, b, coalesce(nullif(st, ''), 'pending'), nullif(le, '')
			FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]::pg_lsn[], $6::int4[], $7::timestamptz[], $8::text[], $9::text[], $10::text[]) AS u(w, e, m, k, l, s, c, b, st, le)
			ON CONFLICT (webhook, commit_lsn, seq) DO NOTHING`,
		ckptSQL: "INSERT INTO " + migrations.Table(schema, "checkpoints") + ` (slot, lsn, updated_at) VALUES ($1, $2::text::pg_lsn, now())
			ON CONFLICT (slot) DO UPDATE SET lsn = GREATEST(EXCLUDED.lsn, checkpoints.lsn), updated_at = now()`,
	}
}

// Checkpoint reads the stored progress LSN of slot (0 when none).
func readCheckpoint(ctx context.Context, pool *pgxpool.Pool, schema, slot string) (pglogrepl.LSN, error) {
	var s string
	err := pool.QueryRow(ctx, "SELECT lsn::text FROM "+migrations.Table(schema, "checkpoints")+" WHERE slot = $1", slot).Scan(&s)
	if err == pgx.ErrNoRows {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read checkpoint: %w", err)
	}
	return pglogrepl.ParseLSN(s)
}

// run consumes batches until in is closed (then commits what is complete) or
// ctx ends or a write fails (then rolls back: the stream replays from the
// checkpoint).
func (w *writer) run(ctx context.Context, in <-chan batch) error {
	conn, err := w.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("outbox: connect: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	var (
		tx         pgx.Tx
		buf        []outRow
		groupRows  int
		groupStart time.Time
		lastEnd    pglogrepl.LSN
		inserted   int64
		complete   = true
	)
	rollback := func() {
		clear(w.counts)
		if tx != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			tx = nil
		}
	}
	defer rollback()
	write := func() error {
		if len(buf) == 0 {
			return nil
		}
		n, err := w.insert(ctx, tx, buf)
		if err != nil {
			return err
		}
		inserted += n
		if w.observer != nil {
			for _, r := range buf {
				w.counts[modelEvent{r.model, r.event}]++
			}
		}
		buf = buf[:0]
		return nil
	}
	commit := func() error {
		if err := write(); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, w.ckptSQL, w.slot, lastEnd.String()); err != nil {
			return fmt.Errorf("outbox: write checkpoint: %w", err)
		}
		if inserted > 0 {
			if _, err := tx.Exec(ctx, "SELECT pg_notify($1, '')", w.channel); err != nil {
				return fmt.Errorf("outbox: notify: %w", err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("outbox: commit: %w", err)
		}
		tx = nil
		w.flushed.Store(uint64(lastEnd))
		w.rows.Add(inserted)
		if w.observer != nil {
			for me, n := range w.counts {
				w.observer.Enqueued(me.model, me.event, n)
			}
			clear(w.counts)
		}
		inserted, groupRows = 0, 0
		return nil
	}
	for {
		var b batch
		var ok bool
		select {
		case b, ok = <-in:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			if tx != nil && complete {
				return commit()
			}
			return nil
		}
		if tx == nil {
			if tx, err = conn.Begin(ctx); err != nil {
				return fmt.Errorf("outbox: begin: %w", err)
			}
			groupStart = time.Now()
		}
		complete = false
		buf = append(buf, b.rows...)
		groupRows += len(b.rows)
		if len(buf) >= chunkRows {
			if err := write(); err != nil {
				return err
			}
		}
		if !b.commit {
			continue
		}
		complete = true
		lastEnd = b.endLSN
		if groupRows >= w.groupRows || len(in) == 0 || time.Since(groupStart) >= w.groupDelay {
			if err := commit(); err != nil {
				return err
			}
		}
	}
}

func (w *writer) insert(ctx context.Context, tx pgx.Tx, rows []outRow) (int64, error) {
	n := len(rows)
	webhooks, events, models, keys := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	lsns, bodies := make([]string, n), make([]string, n)
	seqs, ats := make([]int32, n), make([]time.Time, n)
	for i, r := range rows {
		webhooks[i], events[i], models[i], keys[i] = r.webhook, r.event, r.model, r.key
		lsns[i], seqs[i], ats[i], bodies[i] = r.commitLSN.String(), r.seq, r.committedAt, r.body
	}
	var states, lastErrs []string
	for i, r := range rows {
		if r.state != "" || r.lastError != "" {
			if states == nil {
				states, lastErrs = make([]string, n), make([]string, n)
			}
			states[i], lastErrs[i] = r.state, r.lastError
		}
	}
	var tag pgconn.CommandTag
	var err error
	if states == nil {
		tag, err = tx.Exec(ctx, w.insertSQL, webhooks, events, models, keys, lsns, seqs, ats, bodies)
	} else {
		tag, err = tx.Exec(ctx, w.insertErr, webhooks, events, models, keys, lsns, seqs, ats, bodies, states, lastErrs)
	}
	if err != nil {
		return 0, fmt.Errorf("outbox: insert %d deliveries: %w", n, err)
	}
	return tag.RowsAffected(), nil
}
