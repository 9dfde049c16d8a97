// Package lookup runs the queries that complete a chunk of captured changes
// before they render: the read-back of unchanged TOAST values, and the
// relations and computed fields of their models (planned by package
// payload). Each query covers the whole chunk, whatever its number of rows;
// the queries run in read-only transactions with a statement timeout on a
// few connections of the source pool. A failing query is retried with
// backoff, holding capture, unless its model says on_lookup_error: omit.
package lookup

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/pgnet"
)

// Change is a captured change waiting for its chunk's lookups.
type Change struct {
	payload.Change
	OldExtra []payload.LookupVal // the relation fields of Old
	Fill     bool                // Vals has unchanged TOAST values to read back
}

// Beginner starts the read-only transactions of the lookups: the source
// pool.
type Beginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// maxWorkers bounds the connections a chunk's lookups use at once.
const maxWorkers = 4

// retryFor bounds how long a chunk's failing lookups are retried in place
// (the stream answers no keepalive meanwhile); after that Run returns the
// error, and capture reconnects with backoff and replays.
const retryFor = 20 * time.Second

// Runner runs the lookups of the chunks of one source transaction after
// another.
type Runner struct {
	Pool    Beginner
	Workers int // connections used at once, at most maxWorkers
	Log     zerolog.Logger
	Resolve payload.TypeResolver
	// Deleted holds the rows the transaction deleted, for relations to them.
	Deleted *DeletedRows
	// Visible waits until the transaction is visible to new snapshots, so
	// that the queries see it committed.
	Visible func(ctx context.Context) error
	// Stall says why capture holds the transaction (or, with "", that it
	// goes on); Failed counts failed queries that are retried.
	Stall  func(msg string)
	Failed func(queries int)
	// KeepAlive answers the server while failing lookups are retried.
	KeepAlive func(ctx context.Context) error
}

// job is one query of a chunk's lookups; it writes only its own slot of the
// changes' fields. An error it returns is retried.
type job func(*conn) error

// Run fills in the unchanged TOAST values, then the relation and computed
// fields of cs, the changes of a chunk of the transaction that commits at
// lsn: one query per table (read back), relation and computed field of each
// model in it.
func (r *Runner) Run(ctx context.Context, lsn pglogrepl.LSN, cs []*Change) error {
	// Changes per relation (table version), in order of first appearance.
	var order, fillOrder []*payload.Relation
	groups := map[*payload.Relation][]*Change{}
	fills := map[*payload.Relation][]*Change{}
	for _, c := range cs {
		if c.Fill {
			if _, ok := fills[c.Rel]; !ok {
				fillOrder = append(fillOrder, c.Rel)
			}
			fills[c.Rel] = append(fills[c.Rel], c)
		}
		pl := c.Rel.Plan
		if pl == nil {
			continue
		}
		if _, ok := groups[c.Rel]; !ok {
			order = append(order, c.Rel)
		}
		groups[c.Rel] = append(groups[c.Rel], c)
		c.Extra = make([]payload.LookupVal, len(pl.Rels)+len(pl.Comps))
		if c.Old != nil {
			c.OldExtra = make([]payload.LookupVal, len(pl.Rels))
		}
	}
	var fillJobs, jobs []job
	for _, rel := range fillOrder {
		fillJobs = append(fillJobs, func(cn *conn) error { return r.readBack(ctx, cn, rel, fills[rel]) })
	}
	for _, rel := range order {
		group := groups[rel]
		for li, rl := range rel.Plan.Rels {
			jobs = append(jobs, func(cn *conn) error { return r.relation(ctx, cn, rel, li, rl, group) })
		}
		snaps := wantsSnapshots(rel)
		for ci, cl := range rel.Plan.Comps {
			if cl.Snap && !snaps {
				continue // no webhook of the model renders snapshots
			}
			slot := len(rel.Plan.Rels) + ci
			jobs = append(jobs, func(cn *conn) error { return r.computed(ctx, cn, rel, slot, cl, group) })
		}
	}
	if len(jobs)+len(fillJobs) > 0 {
		if err := r.Visible(ctx); err != nil {
			return err
		}
	}
	// Read-backs first: computed fields may take a filled column.
	if err := r.retry(ctx, lsn, fillJobs); err != nil {
		return err
	}
	for _, group := range fills {
		for _, c := range group {
			c.Fill = false
		}
	}
	if err := r.retry(ctx, lsn, jobs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err // shutting down: do not store payloads missing fields
	}
	return nil
}

// wantsSnapshots reports whether a webhook of rel's model renders
// snapshots (format netbox-v4).
func wantsSnapshots(rel *payload.Relation) bool {
	for _, set := range [][3]payload.HookSet{rel.Hooks, rel.Coal} {
		for _, hs := range set {
			for _, sp := range hs.Specs {
				if sp != nil && sp.Format == payload.FormatNetboxV4 {
					return true
				}
			}
		}
	}
	return false
}

// retry runs jobs, retrying the failing ones with backoff for up to
// retryFor.
func (r *Runner) retry(ctx context.Context, lsn pglogrepl.LSN, jobs []job) error {
	start := time.Now()
	backoff := 250 * time.Millisecond
	stalled := false
	for {
		errs := r.runJobs(ctx, jobs)
		if err := ctx.Err(); err != nil {
			return err
		}
		var retry []job
		var first error
		for i, err := range errs {
			if err != nil {
				retry = append(retry, jobs[i])
				if first == nil {
					first = err
				}
			}
		}
		if len(retry) == 0 {
			if stalled {
				r.Stall("")
				r.Log.Info().Dur("waited_ms", time.Since(start)).Msg("lookups succeed again: capture goes on")
			}
			return nil
		}
		r.Failed(len(retry))
		msg := fmt.Sprintf("lookup failed, capture holds the transaction (commit LSN %s) and retries (set on_lookup_error: omit on the model to send changes without the field instead): %v", lsn, first)
		r.Stall(msg)
		stalled = true
		if time.Since(start) >= retryFor {
			return fmt.Errorf("lookups of the transaction with commit LSN %s still fail after %s (capture reconnects and retries): %w", lsn, retryFor, first)
		}
		withTimeout(r.Log.Warn().Err(first).Int("failed_queries", len(retry)).Dur("retry_in_ms", backoff), first).Msg("lookup failed: capture holds the changes and retries (set on_lookup_error: omit on the model to send them without the field instead)")
		if err := r.KeepAlive(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 4*time.Second)
		jobs = retry
	}
}

// runJobs runs jobs on up to r.Workers connections and returns their
// errors.
func (r *Runner) runJobs(ctx context.Context, jobs []job) []error {
	errs := make([]error, len(jobs))
	workers := min(len(jobs), maxWorkers, r.Workers)
	if workers <= 1 {
		cn := &conn{pool: r.Pool, log: r.Log}
		for i, j := range jobs {
			errs[i] = j(cn)
		}
		cn.finish(ctx)
		return errs
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cn := &conn{pool: r.Pool, log: r.Log}
			defer cn.finish(ctx)
			for {
				i := int(next.Add(1)) - 1
				if i >= len(jobs) {
					return
				}
				errs[i] = jobs[i](cn)
			}
		}()
	}
	wg.Wait()
	return errs
}

// begin starts the read-only transaction of a chunk's lookups. JIT is off:
// these are short indexed queries, and compiling a computed field's plan
// (PostgreSQL JITs any plan above jit_above_cost) costs more than running it.
var begin = fmt.Sprintf("BEGIN READ ONLY; SET LOCAL statement_timeout = %d; SET LOCAL jit = off", payload.LookupTimeout.Milliseconds())

// conn runs one worker's queries in a read-only transaction on the source
// pool.
type conn struct {
	pool Beginner
	tx   pgx.Tx
	log  zerolog.Logger
}

// query runs sql with text-format results and calls fn for each row (the
// values are only valid during the call). An error rolls the transaction
// back; the next query starts a new one.
func (cn *conn) query(ctx context.Context, sql string, args []any, fn func(vals [][]byte)) error {
	ctx, cancel := pgnet.Bound(ctx)
	defer cancel()
	if cn.tx == nil {
		tx, err := cn.pool.BeginTx(ctx, pgx.TxOptions{BeginQuery: begin})
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		cn.tx = tx
	}
	rows, err := cn.tx.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err == nil {
		for rows.Next() {
			fn(rows.RawValues())
		}
		rows.Close()
		err = rows.Err()
	}
	if err != nil {
		rctx, cancel := pgnet.Bound(context.WithoutCancel(ctx))
		_ = cn.tx.Rollback(rctx)
		cancel()
		cn.tx = nil
		return err
	}
	return nil
}

func (cn *conn) finish(ctx context.Context) {
	if cn.tx != nil {
		ctx, cancel := pgnet.Bound(ctx)
		defer cancel()
		if err := cn.tx.Commit(ctx); err != nil {
			cn.log.Debug().Err(err).Msg("end lookup transaction")
		}
		cn.tx = nil
	}
}
