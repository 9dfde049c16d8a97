// Package enqueue writes rendered deliveries into walhook's outbox with the
// capture checkpoint: the rows of many small source transactions share one
// outbox transaction, a large one is written in chunks inside the open
// transaction, and a commit happens only at a source transaction boundary,
// so that the checkpoint never runs ahead of the rows.
package enqueue

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc/lost"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/pgnet"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// Delivery is one delivery row to enqueue: a change rendered for one
// webhook, keyed by (Webhook, CommitLSN, Seq).
type Delivery struct {
	Webhook, Event, Model, Key string
	CommitLSN                  pglogrepl.LSN
	Seq                        int32
	CommittedAt                time.Time
	Body                       string
	// State and LastError, when set, store the row as already failed (a
	// body_template that failed to render); default: pending.
	State     outbox.State
	LastError string
}

// Batch carries rows of one source transaction to the writer; Commit marks
// the transaction's end (EndLSN is its TransactionEndLSN).
type Batch struct {
	Rows   []Delivery
	Commit bool
	EndLSN pglogrepl.LSN
	// Bytes is the rows' size as RowsBytes counts it: the stream takes it
	// from the writer's in-flight budget (Reserve), the writer gives it
	// back once the rows are written.
	Bytes int64
}

// Writer writes delivery rows and the checkpoint into the outbox. Rows of
// many small source transactions share one outbox transaction; a large one
// is written in chunks inside the open transaction, which commits only at a
// source transaction boundary. flushed is the end LSN of the last source
// transaction whose rows are committed: the only LSN safe to confirm.
type Writer struct {
	tracer     trace.Tracer // nil: no spans
	pool       *pgxpool.Pool
	store      *outbox.Store
	sql        outbox.EnqueueStatements
	slot       string
	channel    string
	groupRows  int
	groupDelay time.Duration
	log        zerolog.Logger

	flushed atomic.Uint64
	safe    *atomic.Bool  // INSERT ... ON CONFLICT instead of COPY, after a replay conflict
	rows    *atomic.Int64 // rows enqueued (committed), shared with Capture
	observe func(model, event string, rows int)
	// enqueued and notifyPayload are Options.Enqueued and NotifyPayload.
	enqueued      func()
	notifyPayload string
	counts        map[modelEvent]int // rows per model and event in the open transaction

	// window, when set, is the commit-LSN range where rows may collide with
	// an older history (GapWindow); inWindow collects the rows of the
	// open transaction in it, collided counts the rows that did.
	window   *atomic.Pointer[GapWindow]
	inWindow []Delivery
	collided *atomic.Int64

	// endFirst, when set, is an outbox session an earlier writer lost:
	// run ends it before writing. left is set when run loses its own.
	endFirst, left *lost.Backend

	// inflight is the size of the rows handed to the writer and not yet
	// written (at most inflightBytes, or one batch); freed signals that
	// it went down.
	inflight atomic.Int64
	freed    chan struct{}
}

type modelEvent struct{ model, event string }

// ChunkRows bounds rows buffered before they are written into the open
// outbox transaction; ChunkBytes bounds their size (rows of 1 MB would make
// 500 rows half a gigabyte).
const (
	ChunkRows  = 500
	ChunkBytes = 4 << 20
)

// inflightBytes bounds the size of the rows handed from the stream to the
// writer and not written yet (a batch larger than that goes alone). With a
// chunk being rendered and one waiting for its lookups, capture holds
// about inflightBytes + 2*ChunkBytes of rows, whatever their size.
const inflightBytes = 16 << 20

// RowsBytes is the size rows count for in ChunkBytes and inflightBytes:
// their bodies, keys and errors, plus a fixed cost per row. A body shared by
// several webhooks counts once per row.
func RowsBytes(rows []Delivery) int64 {
	var n int64
	for i := range rows {
		n += int64(len(rows[i].Body)+len(rows[i].Key)+len(rows[i].LastError)) + 128
	}
	return n
}

// Room reports whether a batch of n bytes may be handed to the writer now.
func (w *Writer) Room(n int64) bool {
	in := w.inflight.Load()
	return in == 0 || in+n <= inflightBytes
}

// Reserve takes n bytes of the in-flight budget for a batch handed to the
// writer.
func (w *Writer) Reserve(n int64) { w.inflight.Add(n) }

// Freed signals that the in-flight budget went down.
func (w *Writer) Freed() <-chan struct{} { return w.freed }

// Flushed is the end LSN of the last source transaction whose rows are
// committed: the only LSN safe to confirm.
func (w *Writer) Flushed() pglogrepl.LSN { return pglogrepl.LSN(w.flushed.Load()) }

// Left is the outbox session Run lost on a dead path, whose server process
// may live on (nil when none): the next writer's EndFirst.
func (w *Writer) Left() *lost.Backend { return w.left }

// release gives back n bytes of the in-flight budget: rows are written.
func (w *Writer) release(n int64) {
	if n == 0 {
		return
	}
	w.inflight.Add(-n)
	select {
	case w.freed <- struct{}{}:
	default:
	}
}

// Options configure New.
type Options struct {
	Pool  *pgxpool.Pool
	Store *outbox.Store
	Slot  string
	// GroupRows and GroupDelay bound the rows of small source
	// transactions that share one outbox transaction, and how long it
	// waits for more.
	GroupRows  int
	GroupDelay time.Duration
	Flushed    pglogrepl.LSN // where the checkpoint is
	Rows       *atomic.Int64 // counts the rows enqueued (committed)
	// Safe, once set, makes the writer INSERT ... ON CONFLICT instead of
	// COPY (after a replay conflict); it stays set.
	Safe *atomic.Bool
	// Observe, when set, is told the rows each commit enqueued per model
	// and event.
	Observe func(model, event string, rows int)
	// Enqueued, when set, is called right after each commit that
	// enqueued rows.
	Enqueued func()
	// NotifyPayload is the payload of the NOTIFY each such commit sends
	// (empty by default).
	NotifyPayload string
	Log           zerolog.Logger
	Tracer        trace.Tracer // nil: no spans
	// EndFirst is an outbox session an earlier writer lost: Run ends its
	// server process before it writes.
	EndFirst *lost.Backend
	// Window, when it holds a range, is where rows may collide with an
	// older history; Collided counts the rows that did.
	Window   *atomic.Pointer[GapWindow]
	Collided *atomic.Int64
}

// New returns a writer; Run writes.
func New(o Options) *Writer {
	w := &Writer{
		pool: o.Pool, store: o.Store, sql: o.Store.Enqueue(), slot: o.Slot, groupRows: o.GroupRows, groupDelay: o.GroupDelay,
		rows: o.Rows, safe: o.Safe, log: o.Log, observe: o.Observe, enqueued: o.Enqueued, notifyPayload: o.NotifyPayload, counts: map[modelEvent]int{}, tracer: o.Tracer,
		endFirst: o.EndFirst, window: o.Window, collided: o.Collided,
		channel: o.Store.Channel(), freed: make(chan struct{}, 1),
	}
	w.flushed.Store(uint64(o.Flushed))
	return w
}

// GapWindow is the commit-LSN range (From, To] where, after a gap, the new
// source's changes may meet deliveries of the old history written before
// Before with the same (webhook, commit_lsn, seq): the insert then skips
// them as a replay. The writer checks the rows it writes in the window and
// reports such collisions loudly (they are not enqueued).
type GapWindow struct {
	From, To pglogrepl.LSN
	Before   time.Time
}

// Holds reports whether commit LSN l is in the window.
func (g *GapWindow) Holds(l pglogrepl.LSN) bool { return g != nil && l > g.From && l <= g.To }

// smallGroup is the most rows a group may have to be written together with
// its checkpoint and COMMIT in one round trip (INSERT ... unnest in a
// pipeline); larger groups and chunks of large transactions use COPY.
const smallGroup = 64

// Run consumes batches until in is closed (then commits what is complete) or
// ctx ends or a write fails (then rolls back: the stream replays from the
// checkpoint).
//
// Every statement has a deadline (pgnet.StatementTimeout): on a path that
// stops moving bytes the statement fails, the connection is closed and the
// stream replays from the checkpoint on a new one; the next writer first
// ends the server process the failed one may have left (EndFirst).
func (w *Writer) Run(ctx context.Context, in <-chan Batch) (err error) {
	actx, cancel := pgnet.Bound(ctx)
	pc, err := w.pool.Acquire(actx)
	cancel()
	if err != nil {
		return fmt.Errorf("outbox: connect: %w", err)
	}
	conn := pc.Conn()
	var (
		self lost.Backend // conn's server process
		open bool         // a transaction is open on conn
	)
	defer func() {
		clear(w.counts)
		pg := conn.PgConn()
		switch {
		case err == nil && (open || pg.TxStatus() != 'I'):
			// Stopped mid-transaction: the connection goes back to the pool.
			rctx, cancel := pgnet.Bound(context.WithoutCancel(ctx))
			_, _ = conn.Exec(rctx, "ROLLBACK")
			cancel()
		case err != nil && !pg.IsClosed():
			// Ended by an error, or by the stream giving up on a path that
			// may be dead: closing rolls back, and no other user of the
			// pool gets a connection that may wait for its deadline.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = conn.Close(cctx)
			cancel()
		}
		if pg.IsClosed() && self.Start != 0 {
			// Closed on this side: the server's may live on.
			w.left = &self
		}
		pc.Release()
	}()
	// COPY sends commit_lsn in binary: pg_lsn is a big-endian 64-bit integer.
	conn.TypeMap().RegisterType(&pgtype.Type{Name: "pg_lsn", OID: pgLSNOID, Codec: pgtype.Int8Codec{}})
	if w.endFirst != nil {
		w.endLost(ctx, conn, *w.endFirst)
	}
	qctx, cancel := pgnet.Bound(ctx)
	_, err = conn.Exec(qctx, "SET synchronous_commit = on")
	if err == nil {
		self, err = lost.Self(qctx, conn)
	}
	cancel()
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	var (
		buf        []Delivery
		bufBytes   int64 // in-flight bytes of the batches in buf
		groupRows  int
		groupStart time.Time
		lastEnd    pglogrepl.LSN
		inserted   int64
		complete   = true
	)
	count := func(rows []Delivery) {
		if w.window != nil {
			if g := w.window.Load(); g != nil {
				for _, r := range rows {
					if g.Holds(r.CommitLSN) {
						w.inWindow = append(w.inWindow, r)
					}
				}
			}
		}
		if w.observe != nil {
			for _, r := range rows {
				w.counts[modelEvent{r.Model, r.Event}]++
			}
		}
	}
	// copyBuf writes buf into the open transaction (opening it if needed).
	copyBuf := func() error {
		if len(buf) == 0 {
			return nil
		}
		if !open {
			bctx, cancel := pgnet.Bound(ctx)
			_, err := conn.Exec(bctx, "BEGIN")
			cancel()
			if err != nil {
				return fmt.Errorf("outbox: begin: %w", err)
			}
			open = true
		}
		n, err := w.copyRows(ctx, conn, buf)
		if err != nil {
			return err
		}
		inserted += n
		count(buf)
		clear(buf)
		buf = buf[:0]
		w.release(bufBytes)
		bufBytes = 0
		return nil
	}
	commit := func() (err error) {
		var enq int64 // rows this commit enqueued, for its span
		if w.tracer != nil {
			_, span := w.tracer.Start(ctx, "enqueue", trace.WithNewRoot(),
				trace.WithAttributes(attribute.String("walhook.up_to_lsn", lastEnd.String())))
			defer func() {
				span.SetAttributes(attribute.Int64("walhook.rows", enq))
				if err != nil {
					span.SetStatus(codes.Error, err.Error())
				}
				span.End()
			}()
		}
		b := &pgx.Batch{}
		var small []Delivery
		if !open && len(buf) <= smallGroup && bufBytes <= ChunkBytes {
			small, buf = buf, buf[len(buf):]
			b.Queue("BEGIN")
			if len(small) > 0 {
				b.Queue(w.sql.Insert, insertArgs(small)...)
			}
		} else if err := copyBuf(); err != nil {
			return err
		}
		b.Queue(w.sql.Checkpoint, w.slot, lastEnd.String())
		if inserted > 0 || len(small) > 0 {
			b.Queue("SELECT pg_notify($1, $2)", w.channel, w.notifyPayload)
		}
		b.Queue("COMMIT")
		open = true // until COMMIT succeeds, a failure leaves a transaction to roll back
		bctx, cancel := pgnet.Bound(ctx)
		defer cancel()
		br := conn.SendBatch(bctx, b)
		for i := 0; i < b.Len(); i++ {
			tag, err := br.Exec()
			if err != nil {
				br.Close()
				return fmt.Errorf("outbox: commit %d rows up to %s: %w", groupRows, lastEnd, err)
			}
			if len(small) > 0 && i == 1 {
				inserted += tag.RowsAffected()
			}
		}
		if err := br.Close(); err != nil {
			return fmt.Errorf("outbox: commit: %w", err)
		}
		open = false
		if w.enqueued != nil && inserted > 0 {
			w.enqueued()
		}
		count(small)
		if err := w.checkWindow(ctx, lastEnd); err != nil {
			return err
		}
		w.flushed.Store(uint64(lastEnd))
		w.rows.Add(inserted)
		if w.observe != nil {
			for me, n := range w.counts {
				w.observe(me.model, me.event, n)
			}
			clear(w.counts)
		}
		enq = inserted
		inserted, groupRows = 0, 0
		clear(small)
		w.release(bufBytes)
		bufBytes = 0
		return nil
	}
	for {
		var b Batch
		var ok bool
		select {
		case b, ok = <-in:
		case <-ctx.Done():
			return ctx.Err()
		}
		if !ok {
			if complete && (open || len(buf) > 0 || lastEnd > pglogrepl.LSN(w.flushed.Load())) {
				return commit()
			}
			return nil
		}
		if groupRows == 0 && complete {
			groupStart = time.Now()
		}
		complete = false
		buf = append(buf, b.Rows...)
		bufBytes += b.Bytes
		groupRows += len(b.Rows)
		if len(buf) >= ChunkRows || bufBytes >= ChunkBytes {
			if err := copyBuf(); err != nil {
				return err
			}
		}
		if !b.Commit {
			continue
		}
		complete = true
		lastEnd = b.EndLSN
		if groupRows >= w.groupRows || len(in) == 0 || time.Since(groupStart) >= w.groupDelay {
			if err := commit(); err != nil {
				return err
			}
		}
	}
}

// checkWindow reports the rows just committed in the gap window that were
// not enqueued because the old history holds their key, and closes the
// window once the committed position passes it.
func (w *Writer) checkWindow(ctx context.Context, committed pglogrepl.LSN) error {
	if w.window == nil {
		return nil
	}
	g := w.window.Load()
	if g == nil {
		return nil
	}
	if len(w.inWindow) > 0 {
		keys := make([]outbox.DeliveryKey, len(w.inWindow))
		for i, r := range w.inWindow {
			keys[i] = outbox.DeliveryKey{Webhook: r.Webhook, CommitLSN: r.CommitLSN, Seq: r.Seq}
		}
		qctx, cancel := pgnet.Bound(ctx)
		idx, err := w.store.CreatedBefore(qctx, keys, g.Before)
		cancel()
		if err != nil {
			return err
		}
		lost := make([]Delivery, len(idx))
		for i, j := range idx {
			lost[i] = w.inWindow[j]
		}
		w.inWindow = w.inWindow[:0]
		if len(lost) > 0 {
			w.collided.Add(int64(len(lost)))
			for _, r := range lost {
				w.log.Error().Str("webhook", r.Webhook).Str("model", r.Model).Str("key", r.Key).Str("event", r.Event).
					Str("commit_lsn", r.CommitLSN.String()).Int32("seq", r.Seq).
					Msg("change NOT enqueued: a delivery of the source's old history (before the gap) holds the same webhook, commit LSN and position; resend the object with walhook backfill")
			}
		}
	}
	if committed > g.To {
		w.window.CompareAndSwap(g, nil)
	}
	return nil
}

// endLost ends the server process of an outbox session an earlier writer
// lost (lost.End). A failure is logged: the replay then waits for the
// statement deadline and the next session tries again.
func (w *Writer) endLost(ctx context.Context, conn *pgx.Conn, b lost.Backend) {
	ended, err := lost.End(ctx, conn, b)
	switch {
	case err != nil:
		w.log.Warn().Err(err).
			Msg("could not end the outbox session the last capture attempt lost; if it still holds a transaction, capture waits for it")
	case ended:
		w.log.Warn().Uint32("pid", b.PID).
			Msg("ended the outbox session the last capture attempt lost on a dead network path (its server process was still running)")
	}
}

// pgLSNOID is the type OID of pg_lsn.
const pgLSNOID = 3220

// copyRows writes rows with COPY. COPY cannot skip rows that exist, so a
// replay of changes already enqueued (which starting from the checkpoint
// avoids, but a lost or reset checkpoint does not) fails with a unique
// violation: the writer then uses INSERT ... ON CONFLICT DO NOTHING for good,
// and the stream replays.
func (w *Writer) copyRows(ctx context.Context, conn *pgx.Conn, rows []Delivery) (int64, error) {
	ctx, cancel := pgnet.Bound(ctx)
	defer cancel()
	if w.safe.Load() {
		tag, err := conn.Exec(ctx, w.sql.Insert, insertArgs(rows)...)
		if err != nil {
			return 0, fmt.Errorf("outbox: insert %d deliveries: %w", len(rows), err)
		}
		return tag.RowsAffected(), nil
	}
	n, err := conn.CopyFrom(ctx, w.sql.Table, w.sql.Columns, pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
		r := &rows[i]
		state, lastErr, lastAt := string(outbox.StatePending), any(nil), any(nil)
		if r.State != "" {
			state = string(r.State)
		}
		if r.LastError != "" {
			lastErr = r.LastError
		}
		if r.State == outbox.StateFailed {
			lastAt = r.CommittedAt // as the insert statement does
		}
		return []any{r.Webhook, r.Event, r.Model, r.Key, int64(r.CommitLSN), r.Seq, r.CommittedAt, r.Body, state, lastErr, lastAt}, nil
	}))
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerrcode.UniqueViolation {
		w.safe.Store(true)
		w.log.Warn().Msg("the outbox already holds some of these changes (a replay from an older position): switching to INSERT ... ON CONFLICT DO NOTHING")
	}
	if err != nil {
		return 0, fmt.Errorf("outbox: copy %d deliveries: %w", len(rows), err)
	}
	return n, nil
}

// InsertDeliveries inserts rows into the outbox in tx, in chunks, leaving
// out those it already holds (ON CONFLICT DO NOTHING), and returns how many
// it inserted. It does not notify the senders.
func InsertDeliveries(ctx context.Context, tx pgx.Tx, store *outbox.Store, rows []Delivery) (int64, error) {
	insert := store.Enqueue().Insert
	var n int64
	for i := 0; i < len(rows); i += ChunkRows {
		tag, err := tx.Exec(ctx, insert, insertArgs(rows[i:min(i+ChunkRows, len(rows))])...)
		if err != nil {
			return n, fmt.Errorf("outbox: insert deliveries: %w", err)
		}
		n += tag.RowsAffected()
	}
	return n, nil
}

// insertArgs are the arguments of the outbox's insert statement for rows.
func insertArgs(rows []Delivery) []any {
	n := len(rows)
	webhooks, events, models, keys := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	lsns, bodies, states, lastErrs := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	seqs, ats := make([]int32, n), make([]time.Time, n)
	for i, r := range rows {
		webhooks[i], events[i], models[i], keys[i] = r.Webhook, r.Event, r.Model, r.Key
		lsns[i], seqs[i], ats[i], bodies[i] = r.CommitLSN.String(), r.Seq, r.CommittedAt, r.Body
		states[i], lastErrs[i] = string(r.State), r.LastError
	}
	return []any{webhooks, events, models, keys, lsns, seqs, ats, bodies, states, lastErrs}
}
