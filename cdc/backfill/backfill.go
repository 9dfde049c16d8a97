package backfill

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/cdc/enqueue"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/replslot"
)

// Backfill ordering (no stale overwrites)
//
// Each page of a backfill is read under its own snapshot and its rows are
// enqueued with commit_lsn = L, the end of a WAL record written just before
// that snapshot (pg_logical_emit_message, non-transactional: pgoutput does
// not send it), and a negative seq. Before the snapshot is taken, the
// backfill waits for every transaction that was running when L was written
// to finish, so:
//
//   - a source transaction whose commit record lies before L is visible in
//     the page (the row read includes its change) and sorts before the row;
//   - one that is not visible commits at L or later and sorts after it
//     (negative seq: after it even at exactly L).
//
// The dispatcher sends each object's deliveries in (commit_lsn, seq) order,
// but only among rows present in the outbox, so two more rules close the
// gaps: a page is enqueued only once capture has committed every change
// before L (its checkpoint or the slot's confirmed LSN has reached L), and
// inside the enqueueing transaction, which locks the outbox against capture's
// inserts, a row is left out when the outbox already holds a change of the
// same object at L or later (that change, or a later one, carries the newer
// state).

// Options configure Run.
type Options struct {
	Config *config.Config
	// Source is a pool on the source database with cdc.SessionParams set.
	Source *pgxpool.Pool
	Outbox *pgxpool.Pool
	Logger zerolog.Logger
	Model  string // model name (config)
	// Webhook restricts the backfill to one webhook; "" means every enabled
	// webhook that takes Event for Model.
	Webhook string
	Where   string  // SQL boolean expression on the table's columns; "" for all rows
	Event   string  // EventCreated (default) or EventUpdated
	Rate    float64 // rows per second; 0: unlimited
	Restart bool    // start over even when finished or interrupted
	// PageSize is the number of rows read per page (default 1000).
	PageSize int
	// Progress, when set, is called after every page and at the end.
	Progress func(Progress)
	// CaptureWait bounds how long to wait for capture to pass a page's LSN
	// before logging a warning (default 10s); waiting goes on after it.
	CaptureWait time.Duration
}

// Progress is the state of a running backfill.
type Progress struct {
	ID         int64
	Done       int64 // rows read so far (all runs)
	Total      int64 // estimate; may be exceeded
	Enqueued   int64 // delivery rows enqueued (all runs)
	Skipped    int64 // delivery rows left out in this run: a newer live change was enqueued
	RunDone    int64 // rows read in this run
	Elapsed    time.Duration
	Finished   bool
	AlreadyRun bool // finished before: nothing done (use Restart)
}

// Error is a problem with the options themselves (unknown model or
// webhook, an invalid Where, an event backfill cannot send): retrying cannot
// help. Option names the Options field at fault ("Model", "Webhook",
// "Where", "Event"), or is empty when the model's table is at fault.
type Error struct {
	Option string
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

func bfErr(option, format string, args ...any) error {
	return &Error{Option: option, Msg: fmt.Sprintf(format, args...)}
}

// job is one run.
type job struct {
	opts     Options
	model    *config.Model
	table    string // quoted schema.name
	desc     *catalog.Table
	renderer *cdc.RowRenderer
	hooks    []string
	keyCols  []int  // indexes in desc.Columns of the primary key, in key order
	selSQL   string // the page query's select list and table
	pageSQL  string // the page query after a key
	firstSQL string // the first page's query
	id       int64
	lastKey  []string
	done     int64
	enq      int64
	total    int64
	slot     string
	hasSlot  bool
	store    *outbox.Store
	sql      outbox.BackfillStatements
}

// Run enqueues a delivery for every row of a model (or those matching
// Where), resuming an interrupted run. See the ordering note above.
func Run(ctx context.Context, o Options) (Progress, error) {
	if o.Event == "" {
		o.Event = payload.EventCreated
	}
	if o.Event != payload.EventCreated && o.Event != payload.EventUpdated {
		return Progress{}, bfErr("Event", "the event must be created or updated, not %q", o.Event)
	}
	if o.PageSize <= 0 {
		o.PageSize = 1000
	}
	if o.Rate > 0 && float64(o.PageSize) > o.Rate {
		o.PageSize = max(1, int(o.Rate))
	}
	if o.CaptureWait <= 0 {
		o.CaptureWait = 10 * time.Second
	}
	bf := &job{opts: o}
	for i := range o.Config.Models {
		if o.Config.Models[i].Model == o.Model {
			bf.model = &o.Config.Models[i]
		}
	}
	if bf.model == nil {
		var names []string
		for _, m := range o.Config.Models {
			names = append(names, m.Model)
		}
		return Progress{}, bfErr("Model", "unknown model %q (configured: %s)", o.Model, strings.Join(names, ", "))
	}
	schema := o.Config.Database.Schema
	bf.store = outbox.New(bf.opts.Outbox, schema)
	bf.sql = bf.store.Backfill()
	bf.slot = o.Config.Database.Slot
	if err := bf.prepare(ctx); err != nil {
		return Progress{}, err
	}
	return bf.run(ctx)
}

// prepare builds the relation from the catalog, the webhook list and the
// page queries, and validates Where.
func (bf *job) prepare(ctx context.Context) error {
	o, m := bf.opts, bf.model
	for _, w := range o.Config.Webhooks {
		if o.Webhook != "" && w.Name != o.Webhook {
			continue
		}
		if w.Wants(m.Model, o.Event) {
			bf.hooks = append(bf.hooks, w.Name)
		}
	}
	if len(bf.hooks) == 0 {
		if o.Webhook != "" {
			found := false
			for _, w := range o.Config.Webhooks {
				found = found || w.Name == o.Webhook
			}
			if !found {
				return bfErr("Webhook", "unknown webhook %q", o.Webhook)
			}
			return bfErr("Webhook", "webhook %q does not take %s events of model %s (check its models, events and enabled)", o.Webhook, o.Event, m.Model)
		}
		return bfErr("", "no enabled webhook takes %s events of model %s", o.Event, m.Model)
	}
	bf.table = pgx.Identifier{m.Schema, m.Name}.Sanitize()
	t, err := catalog.ReadTable(ctx, o.Source, m.Schema, m.Name)
	if err != nil {
		return err
	}
	if t == nil {
		return bfErr("", "table %s.%s of model %s does not exist", m.Schema, m.Name, m.Model)
	}
	t = t.Published() // the columns of a row, as capture receives it
	if len(t.PrimaryKey) == 0 {
		return bfErr("", "table %s.%s has no primary key: backfill pages through it by primary key", m.Schema, m.Name)
	}
	bf.desc = t
	// Render exactly as capture does.
	bf.renderer, err = cdc.NewRowRenderer(ctx, cdc.RowRendererOptions{Config: o.Config, Source: o.Source, Logger: o.Logger,
		Table: t, Event: o.Event, Webhooks: bf.hooks})
	var ce *config.Error
	if errors.As(err, &ce) {
		return bfErr("", "%v", err)
	}
	if err != nil {
		return err
	}
	// Page queries.
	var sel []string
	for _, col := range t.Columns {
		sel = append(sel, pgx.Identifier{col.Name}.Sanitize()+"::text")
	}
	// Key columns qualified: "id" alone in ORDER BY would be the text
	// output column.
	var keyCols, keyArgs []string
	for i, name := range t.PrimaryKey {
		c := slices.IndexFunc(t.Columns, func(c catalog.Column) bool { return c.Name == name })
		if c < 0 {
			return fmt.Errorf("table %s.%s: primary-key column %s is not a column", m.Schema, m.Name, name)
		}
		bf.keyCols = append(bf.keyCols, c)
		keyCols = append(keyCols, pgx.Identifier{m.Schema, m.Name, name}.Sanitize())
		keyArgs = append(keyArgs, fmt.Sprintf("$%d::text::%s", i+1, t.Columns[c].TypeName))
	}
	where := ""
	if strings.TrimSpace(o.Where) != "" {
		where = " AND (" + o.Where + "\n)"
	}
	lim := fmt.Sprintf("$%d", len(t.PrimaryKey)+1)
	order := " ORDER BY " + strings.Join(keyCols, ", ") + " LIMIT "
	bf.selSQL = "SELECT " + strings.Join(sel, ", ") + " FROM " + bf.table
	bf.firstSQL = bf.selSQL + " WHERE true" + where + order + "$1"
	bf.pageSQL = bf.selSQL + " WHERE (" + strings.Join(keyCols, ", ") + ") > (" + strings.Join(keyArgs, ", ") + ")" + where + order + lim
	// Validate Where (and estimate the rows) with EXPLAIN: one statement
	// over the extended protocol, so a second statement is rejected.
	if err := bf.estimate(ctx); err != nil {
		return err
	}
	return nil
}

// estimate validates the page query with EXPLAIN and sets bf.total: the
// planner's estimate, or an exact count when that is small.
func (bf *job) estimate(ctx context.Context) error {
	q := "SELECT 1 FROM " + bf.table
	if strings.TrimSpace(bf.opts.Where) != "" {
		q += " WHERE (" + bf.opts.Where + "\n)"
	}
	var plan string
	tx, err := bf.opts.Source.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("source database: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if err := tx.QueryRow(ctx, "EXPLAIN (FORMAT JSON) "+q).Scan(&plan); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if bf.opts.Where != "" {
			return bfErr("Where", "the row condition %q is not valid SQL for table %s: %s", bf.opts.Where, bf.table, payload.PGMessage(err))
		}
		return fmt.Errorf("explain %s: %w", q, err)
	}
	if err := tx.QueryRow(ctx, "EXPLAIN "+bf.pageSQL, append(make([]any, len(bf.keyCols)), 1)...).Scan(new(string)); err != nil {
		return bfErr("Where", "the row condition %q cannot be used with keyset paging on %s: %s", bf.opts.Where, bf.table, payload.PGMessage(err))
	}
	var p []struct {
		Plan struct {
			Rows float64 `json:"Plan Rows"`
		} `json:"Plan"`
	}
	if err := json.Unmarshal([]byte(plan), &p); err == nil && len(p) == 1 {
		bf.total = int64(p[0].Plan.Rows)
	}
	if bf.total < 2_000_000 {
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM ("+q+") x").Scan(&bf.total); err != nil {
			return fmt.Errorf("count rows: %w", err)
		}
	}
	return nil
}

// start finds or creates the progress row and takes its lock.
func (bf *job) start(ctx context.Context, conn *pgxpool.Conn) (already bool, err error) {
	o := bf.opts
	err = conn.QueryRow(ctx, bf.sql.Create,
		bf.model.Model, o.Webhook, o.Event, o.Where, bf.total).Scan(&bf.id)
	if err != nil {
		return false, fmt.Errorf("outbox: create backfill progress: %w", err)
	}
	var got bool
	if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock(hashtext($1))", fmt.Sprintf("walhook.backfill.%s.%d", bf.opts.Config.Database.Schema, bf.id)).Scan(&got); err != nil {
		return false, fmt.Errorf("outbox: backfill lock: %w", err)
	}
	if !got {
		return false, errors.New("this backfill is already running in another process (same model, webhook, event and row condition)")
	}
	if o.Restart {
		_, err := conn.Exec(ctx, bf.sql.Restart, bf.id, bf.total)
		if err != nil {
			return false, fmt.Errorf("outbox: restart backfill: %w", err)
		}
	}
	var finished *time.Time
	var total *int64
	err = conn.QueryRow(ctx, bf.sql.Read, bf.id).
		Scan(&bf.lastKey, &bf.done, &bf.enq, &total, &finished)
	if err != nil {
		return false, fmt.Errorf("outbox: read backfill progress: %w", err)
	}
	if finished != nil {
		if total != nil {
			bf.total = *total
		}
		return true, nil
	}
	// Resuming: what is left plus what is done.
	if bf.lastKey != nil {
		bf.total = max(bf.total, bf.done)
		_, _ = conn.Exec(ctx, bf.sql.SetTotal, bf.id, bf.total)
	}
	return false, nil
}

func (bf *job) run(ctx context.Context) (Progress, error) {
	o := bf.opts
	lockConn, err := o.Outbox.Acquire(ctx)
	if err != nil {
		return Progress{}, fmt.Errorf("outbox: connect: %w", err)
	}
	defer func() {
		// The session lock goes with the connection.
		lockConn.Conn().Close(context.WithoutCancel(ctx))
		lockConn.Release()
	}()
	already, err := bf.start(ctx, lockConn)
	if err != nil {
		return Progress{}, err
	}
	started := time.Now()
	prog := func(runDone, skipped int64, finished bool) Progress {
		return Progress{ID: bf.id, Done: bf.done, Total: bf.total, Enqueued: bf.enq, Skipped: skipped,
			RunDone: runDone, Elapsed: time.Since(started), Finished: finished}
	}
	if already {
		p := prog(0, 0, true)
		p.AlreadyRun = true
		return p, nil
	}
	if _, bf.hasSlot, err = replslot.Read(ctx, o.Source, bf.slot); err != nil {
		return Progress{}, err
	}
	if !bf.hasSlot {
		o.Logger.Info().Str("slot", bf.slot).Msg("no replication slot yet: no live changes to order the backfill against")
	}
	src, err := o.Source.Acquire(ctx)
	if err != nil {
		return Progress{}, fmt.Errorf("source database: %w", err)
	}
	defer src.Release()
	var runDone, skipped int64
	for {
		n, sk, err := bf.page(ctx, src.Conn())
		if err != nil {
			return prog(runDone, skipped, false), err
		}
		runDone += int64(n)
		skipped += sk
		finished := n < o.PageSize
		if o.Progress != nil {
			o.Progress(prog(runDone, skipped, finished))
		}
		if finished {
			return prog(runDone, skipped, true), nil
		}
		if o.Rate > 0 {
			due := started.Add(time.Duration(float64(runDone) / o.Rate * float64(time.Second)))
			select {
			case <-ctx.Done():
				return prog(runDone, skipped, false), ctx.Err()
			case <-time.After(time.Until(due)):
			}
		}
	}
}

// backfillRunningSQL lists the ids of the transactions that may be running
// or committing now: the snapshot's xip list, and every id from its xmax up
// to one assigned by this statement (which ends at once).
const backfillRunningSQL = `SELECT coalesce(array_agg(x::text), '{}') FROM (
		SELECT x FROM pg_snapshot_xip((SELECT pg_current_snapshot())) x
		UNION ALL
		SELECT (xmax + g)::text::xid8 FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax,
			pg_current_xact_id()::text::bigint AS mine) q, generate_series(0, mine - xmax - 1) g) r`

// page reads, renders and enqueues one page; it returns the rows read and
// the delivery rows left out for a newer live change.
func (bf *job) page(ctx context.Context, conn *pgx.Conn) (int, int64, error) {
	o := bf.opts
	// 1. The page's LSN: a WAL record of its own, so L is unique per page
	//    and every later commit record starts at L or after.
	var lsnText string
	if err := conn.QueryRow(ctx, "SELECT pg_logical_emit_message(false, 'walhook.backfill', '')::text").Scan(&lsnText); err != nil {
		return 0, 0, fmt.Errorf("source database: write the page's WAL position: %w", err)
	}
	lsn, err := pglogrepl.ParseLSN(lsnText)
	if err != nil {
		return 0, 0, err
	}
	// 2. Wait for the transactions running now (some may have written their
	//    commit record before L without being visible yet) to be visible or
	//    gone: those in the snapshot's xip list, and those at or above its
	//    xmax (a committing transaction holding the newest ids is not in
	//    the list), up to an id assigned now.
	var xip []string
	if err := conn.QueryRow(ctx, backfillRunningSQL).Scan(&xip); err != nil {
		return 0, 0, fmt.Errorf("source database: read running transactions: %w", err)
	}
	waitStart, warned := time.Now(), false
	for len(xip) > 0 {
		if err := conn.QueryRow(ctx, "SELECT coalesce(array_agg(x::text), '{}') FROM unnest($1::text[]) x WHERE NOT pg_visible_in_snapshot(x::xid8, pg_current_snapshot())", xip).Scan(&xip); err != nil {
			return 0, 0, fmt.Errorf("source database: check running transactions: %w", err)
		}
		if len(xip) == 0 {
			break
		}
		if !warned && time.Since(waitStart) > o.CaptureWait {
			warned = true
			o.Logger.Warn().Strs("xids", xip).Msg("backfill is waiting for long-running source transactions to end (see pg_stat_activity)")
		}
		if err := sleepCtx(ctx, 2*time.Millisecond); err != nil {
			return 0, 0, err
		}
	}
	// 3. Read the page (one statement: one snapshot) in a read-only
	//    transaction, so --where cannot write.
	q, args := bf.firstSQL, []any{o.PageSize}
	if bf.lastKey != nil {
		q = bf.pageSQL
		args = args[:0]
		for _, k := range bf.lastKey {
			args = append(args, k)
		}
		args = append(args, o.PageSize)
	}
	var vals [][][]byte
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			raw := rows.RawValues()
			r := make([][]byte, len(raw))
			for i, v := range raw {
				if v != nil {
					r[i] = append(make([]byte, 0, len(v)), v...)
				}
			}
			vals = append(vals, r)
		}
		return rows.Err()
	})
	if err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", bf.table, err)
	}
	at := time.Now().UTC()
	if len(vals) == 0 {
		return 0, 0, bf.commitTx(ctx, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, bf.sql.Finish, bf.id)
			return err
		})
	}
	// 4. Render as capture does.
	out, err := bf.renderer.Render(ctx, cdc.RowBatch{CommitLSN: lsn, CommittedAt: at, FirstSeq: -int32(len(vals)), Rows: vals})
	if err != nil {
		return 0, 0, err
	}
	// The page's last key.
	last := vals[len(vals)-1]
	key := make([]string, len(bf.keyCols))
	for i, c := range bf.keyCols {
		key[i] = string(last[c])
	}
	// 5. Wait until capture has enqueued every change before L.
	if err := bf.waitCapture(ctx, conn, lsn); err != nil {
		return 0, 0, err
	}
	// 6. Enqueue with the progress row.
	sk, err := bf.enqueue(ctx, out, lsn, key, len(vals))
	if err != nil {
		return 0, 0, err
	}
	bf.lastKey = key
	return len(vals), sk, nil
}

// waitCapture waits until the capture checkpoint or the slot's confirmed
// LSN has reached lsn (when a slot exists).
func (bf *job) waitCapture(ctx context.Context, conn *pgx.Conn, lsn pglogrepl.LSN) error {
	if !bf.hasSlot {
		return nil
	}
	start, warned := time.Now(), false
	delay := 5 * time.Millisecond
	for {
		sl, found, err := replslot.Read(ctx, conn, bf.slot)
		if err != nil {
			return fmt.Errorf("source database: %w", err)
		}
		if !found {
			return nil // dropped: nothing captures
		}
		if sl.HasConfirmed && sl.Confirmed >= lsn {
			return nil
		}
		ckpt, err := bf.store.CheckpointLSN(ctx, bf.slot)
		if err != nil {
			return err
		}
		if ckpt >= lsn {
			return nil
		}
		if !warned && time.Since(start) > bf.opts.CaptureWait {
			warned = true
			bf.opts.Logger.Warn().Str("slot", bf.slot).Str("lsn", lsn.String()).
				Msg("backfill is waiting for capture to pass the page's LSN: is walhook run running? (backfill rows must be enqueued after the live changes before them)")
		}
		if err := sleepCtx(ctx, delay); err != nil {
			return err
		}
		delay = min(delay*2, 100*time.Millisecond)
	}
}

// enqueue writes a page's rows and its progress in one outbox transaction,
// leaving out rows of objects that have a change at lsn or later in the
// outbox. The outbox is locked against capture's inserts meanwhile.
func (bf *job) enqueue(ctx context.Context, rows []enqueue.Delivery, lsn pglogrepl.LSN, key []string, n int) (int64, error) {
	var skipped, inserted int64
	err := bf.commitTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, bf.sql.LockDeliveries); err != nil {
			return err
		}
		newer := map[[2]string]bool{}
		r, err := tx.Query(ctx, bf.sql.NewerObjects,
			bf.hooks, lsn.String(), bf.model.Model)
		if err != nil {
			return err
		}
		for r.Next() {
			var w, k string
			if err := r.Scan(&w, &k); err != nil {
				r.Close()
				return err
			}
			newer[[2]string{w, k}] = true
		}
		r.Close()
		if err := r.Err(); err != nil {
			return err
		}
		if len(newer) > 0 {
			kept := rows[:0]
			for _, row := range rows {
				if newer[[2]string{row.Webhook, row.Key}] {
					skipped++
					continue
				}
				kept = append(kept, row)
			}
			rows = kept
		}
		if inserted, err = enqueue.InsertDeliveries(ctx, tx, bf.store, rows); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, bf.sql.Progress,
			bf.id, key, n, inserted, n < bf.opts.PageSize); err != nil {
			return err
		}
		if inserted > 0 {
			if _, err := tx.Exec(ctx, "SELECT pg_notify($1, '')", bf.store.Channel()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("outbox: enqueue backfill page: %w", err)
	}
	bf.done += int64(n)
	bf.enq += inserted
	return skipped, nil
}

func (bf *job) commitTx(ctx context.Context, f func(pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, bf.opts.Outbox, f)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
