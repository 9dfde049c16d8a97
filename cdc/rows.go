package cdc

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/cdc/enqueue"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
)

// RowRendererOptions configure NewRowRenderer.
type RowRendererOptions struct {
	Config *config.Config
	// Source is a pool on the source database with SessionParams set:
	// relations, computed fields and types are read from it.
	Source *pgxpool.Pool
	Logger zerolog.Logger
	Table  *catalog.Table
	Event  string // EventCreated or EventUpdated
	// Webhooks are the webhooks to render for: those of them that take
	// Event for the table's model.
	Webhooks []string
}

// RowRenderer renders rows read from a table (not received from the
// replication stream) exactly as capture renders that table's changes:
// relations, computed fields, templates, conditions and formats. Each row is
// its own change: a webhook with coalesce: transaction gets it like any
// other. It is not safe for concurrent use.
type RowRenderer struct {
	s     *stream
	rel   *payload.Relation
	event string
	out   []enqueue.Delivery
	tuple *pglogrepl.TupleData
}

// NewRowRenderer prepares the rendering of the rows of o.Table. A table no
// model maps, or whose webhooks' templates or conditions do not compile,
// is a *config.Error.
func NewRowRenderer(ctx context.Context, o RowRendererOptions) (*RowRenderer, error) {
	c := newCapture(Options{Config: o.Config, Source: o.Source, Logger: o.Logger})
	model := c.models[o.Table.Schema+"."+o.Table.Name]
	if model == nil {
		return nil, &config.Error{Problems: []config.Problem{{File: o.Config.File, Msg: fmt.Sprintf("no model maps table %s.%s", o.Table.Schema, o.Table.Name)}}}
	}
	r := &RowRenderer{event: o.Event}
	// A stream that never connects: its full chunks land in r.out.
	s := &stream{c: c, collect: func(b enqueue.Batch) { r.out = append(r.out, b.Rows...) }, log: c.log.With().Str("backfill", model.Model).Logger(), rels: map[uint32]*payload.Relation{},
		nextStatus: time.Now().Add(100 * 365 * 24 * time.Hour)}
	gen, err := newRendering(o.Config, nil)
	if err != nil {
		return nil, &config.Error{Problems: []config.Problem{{File: o.Config.File, Msg: err.Error()}}}
	}
	s.gen, s.specs, s.tpl = gen, gen.specs, gen.tpl
	if err := s.relation(ctx, o.Table); err != nil {
		return nil, err
	}
	r.s, r.rel = s, s.rels[o.Table.OID]
	// Only the chosen webhooks, each row its own event: a row is one
	// object's current state, so a webhook with coalesce: transaction gets
	// it like any other (never parked in the coalescer, where it would wait
	// for a commit that never comes).
	hs := &r.rel.Hooks[payload.EventIndex(o.Event)]
	co := &r.rel.Coal[payload.EventIndex(o.Event)]
	var names []string
	var hookSpecs []*payload.HookSpec
	for _, set := range []*payload.HookSet{hs, co} {
		for i, n := range set.Names {
			if slices.Contains(o.Webhooks, n) {
				names, hookSpecs = append(names, n), append(hookSpecs, set.Specs[i])
			}
		}
	}
	*hs = payload.HookSet{}
	for i, n := range names {
		hs.Add(n, hookSpecs[i])
	}
	r.rel.Coal, r.rel.Coalesce = [3]payload.HookSet{}, false
	n := len(r.rel.Cols)
	r.tuple = &pglogrepl.TupleData{ColumnNum: uint16(n), Columns: make([]*pglogrepl.TupleDataColumn, n)}
	for i := range r.tuple.Columns {
		r.tuple.Columns[i] = &pglogrepl.TupleDataColumn{}
	}
	return r, nil
}

// RowBatch is rows rendered as the changes of one source transaction.
type RowBatch struct {
	CommitLSN   pglogrepl.LSN
	CommittedAt time.Time
	FirstSeq    int32 // the seq of the first row's change; the next ones count up
	// Rows hold each row's values in text format (nil for NULL), in the
	// order of the table's published columns (catalog.Table.Published).
	Rows [][][]byte
}

// Render renders the rows of b into deliveries.
func (r *RowRenderer) Render(ctx context.Context, b RowBatch) ([]enqueue.Delivery, error) {
	s := r.s
	s.txnLSN, s.txnAt, s.seq = b.CommitLSN, b.CommittedAt, b.FirstSeq
	for _, row := range b.Rows {
		if len(row) != len(r.tuple.Columns) {
			return nil, fmt.Errorf("%s.%s: row of %d values, table has %d columns", r.rel.Schema, r.rel.Name, len(row), len(r.tuple.Columns))
		}
		for i, v := range row {
			c := r.tuple.Columns[i]
			if v == nil {
				c.DataType, c.Data = 'n', nil
			} else {
				c.DataType, c.Data = 't', v
			}
		}
		if err := s.change(ctx, r.event, r.rel.ID, 0, nil, r.tuple); err != nil {
			return nil, err
		}
	}
	if len(s.pending) > 0 {
		if err := s.flushPending(ctx); err != nil {
			return nil, err
		}
	}
	r.out = append(r.out, s.rows...)
	out := r.out
	s.takeRows()
	r.out, s.rows = nil, nil
	return out, nil
}
