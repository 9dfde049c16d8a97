package cdc

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/internal/config"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// statusMinGap is the shortest time between two status updates sent to
// confirm keepalive positions.
const statusMinGap = 200 * time.Millisecond

// stream owns one replication connection: it receives pgoutput messages,
// renders changes, hands them to the writer and confirms LSNs. It runs on a
// single goroutine (a PgConn is not safe for concurrent use).
type stream struct {
	conn     *pgconn.PgConn
	c        *Capture
	w        *writer
	out      chan<- batch
	werr     <-chan error
	log      zerolog.Logger
	interval time.Duration
	// collect, in a stream that renders rows without a connection
	// (RowRenderer), takes the batches instead of the writer.
	collect func(batch)

	rels    map[uint32]*relation
	rd      renderer
	rows    []Delivery
	pending []pending // changes waiting for their chunk's lookups (or behind one that is)
	specs   map[string]*hookSpec
	tpl     *templater
	oldBuf  []byte
	inTxn   bool
	span    trace.Span // the open transaction's span (Options.Tracer)
	txnLSN  pglogrepl.LSN
	txnAt   time.Time
	txnXid  uint32 // the source transaction's id, to wait until it is visible to lookups
	// visibleXid is the last transaction id found visible (waitVisible).
	visibleXid uint32
	seq        int32
	skipped    bool // current transaction seen but not for us
	coal       coalescer
	coalWarned bool          // the coalescer's size warning was logged for this transaction
	dels       deletedImages // rows deleted by the transaction, for relations to them
	imgs       txnImages     // last images of objects changed by the transaction, for ignore_changes

	lastSentEnd pglogrepl.LSN // end of the last transaction handed to the writer
	kaEnd       pglogrepl.LSN // keepalive WAL end known to be safe once kaNeed is flushed
	kaNeed      pglogrepl.LSN
	confirmed   pglogrepl.LSN
	nextStatus  time.Time
	lastStatus  time.Time
}

// confirmLSN is what may be reported as flushed: the writer's committed LSN,
// or, when nothing received is unwritten and no transaction is open, the
// server's WAL end from a keepalive (so an idle slot does not hold WAL).
func (s *stream) confirmLSN() pglogrepl.LSN {
	f := pglogrepl.LSN(s.w.flushed.Load())
	if s.kaEnd > f && f >= s.kaNeed {
		f = s.kaEnd
	}
	if f > s.confirmed {
		s.confirmed = f
	}
	return s.confirmed
}

func (s *stream) sendStatus(ctx context.Context) error {
	lsn := s.confirmLSN()
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn, ClientTime: time.Now(),
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.c.confirmed.Store(uint64(lsn))
	s.lastStatus = time.Now()
	s.nextStatus = s.lastStatus.Add(s.interval)
	return nil
}

func (s *stream) run(ctx context.Context) error {
	s.nextStatus = time.Now().Add(s.interval)
	s.tpl = newTemplater()
	specs, err := hookSpecs(s.c.cfg, s.tpl)
	if err != nil {
		return &FatalError{Err: err}
	}
	s.specs = specs
	for {
		select {
		case err := <-s.werr: // the writer failed while the stream was idle
			if err == nil {
				err = errors.New("outbox writer stopped")
			}
			return err
		default:
		}
		if !time.Now().Before(s.nextStatus) {
			if err := s.sendStatus(ctx); err != nil {
				return err
			}
		}
		rctx, cancel := context.WithDeadline(ctx, s.nextStatus)
		raw, err := s.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive from replication stream: %w", err)
		}
		switch m := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return fmt.Errorf("parse keepalive: %w", err)
				}
				if !s.inTxn {
					s.kaEnd, s.kaNeed = ka.ServerWALEnd, s.lastSentEnd
					// Other tables or databases are writing WAL: confirm it
					// soon (the server waits for our reply before it sends
					// the next keepalive), so the slot does not retain it.
					if due := s.lastStatus.Add(statusMinGap); s.kaEnd > s.confirmed && due.Before(s.nextStatus) {
						s.nextStatus = due
					}
				}
				if ka.ReplyRequested {
					s.nextStatus = time.Time{}
				}
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return fmt.Errorf("parse XLogData: %w", err)
				}
				if err := s.handle(ctx, x.WALData); err != nil {
					return err
				}
			}
		}
	}
}

func (s *stream) handle(ctx context.Context, data []byte) error {
	msg, err := parseMessage(data)
	if err != nil {
		return &FatalError{Err: err}
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		return s.relation(ctx, describe(m))
	case *pglogrepl.TypeMessage:
		s.c.types.named(m.DataType, m.Namespace+"."+m.Name)
	case *pglogrepl.BeginMessage:
		s.inTxn, s.txnLSN, s.txnAt, s.txnXid, s.seq = true, m.FinalLSN, m.CommitTime, m.Xid, 0
		s.coal.reset()
		s.coalWarned = false
		if t := s.c.opts.Tracer; t != nil {
			_, s.span = t.Start(ctx, "capture transaction", trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(attribute.String("walhook.commit_lsn", m.FinalLSN.String()), attribute.Int64("walhook.xid", int64(m.Xid))))
		}
	case *pglogrepl.InsertMessage:
		return s.change(ctx, EventCreated, m.RelationID, 0, nil, m.Tuple)
	case *pglogrepl.UpdateMessage:
		return s.change(ctx, EventUpdated, m.RelationID, m.OldTupleType, m.OldTuple, m.NewTuple)
	case *pglogrepl.DeleteMessage:
		return s.change(ctx, EventDeleted, m.RelationID, m.OldTupleType, m.OldTuple, nil)
	case *pglogrepl.TruncateMessage:
		var names []string
		lo, _ := s.c.opts.Observer.(LossObserver)
		for _, id := range m.RelationIDs {
			if r := s.rels[id]; r != nil {
				t := r.schema + "." + r.name
				names = append(names, t)
				s.c.losses.add(&s.c.losses.truncated, t)
				if lo != nil {
					lo.Truncated(t)
				}
			}
		}
		s.log.Error().Strs("tables", names).Str("lsn", s.txnLSN.String()).
			Msg("TRUNCATE is not captured: no webhooks are sent for the removed rows (use walhook backfill or your own reconciliation)")
		s.seq++
	case *pglogrepl.CommitMessage:
		if err := s.flushCoalesced(ctx); err != nil {
			return err
		}
		if len(s.pending) > 0 {
			if err := s.flushPending(ctx); err != nil {
				return err
			}
		}
		b := batch{rows: s.rows, commit: true, endLSN: m.TransactionEndLSN}
		s.rows = nil
		s.inTxn = false
		if s.span != nil {
			s.span.SetAttributes(attribute.Int("walhook.changes", int(s.seq)), attribute.Int("walhook.deliveries", len(b.rows)))
			s.span.End()
			s.span = nil
		}
		if err := s.send(ctx, b); err != nil {
			return err
		}
		s.lastSentEnd = m.TransactionEndLSN
		s.c.received.Store(uint64(m.TransactionEndLSN))
		if s.c.stall.Load() != nil {
			s.c.setStall("") // the transaction went through
		}
	}
	return nil
}

// send hands a batch to the writer, still answering the server meanwhile.
func (s *stream) send(ctx context.Context, b batch) error {
	if s.collect != nil {
		s.collect(b)
		return nil
	}
	for {
		t := time.NewTimer(time.Until(s.nextStatus))
		select {
		case s.out <- b:
			t.Stop()
			return nil
		case err := <-s.werr:
			t.Stop()
			if err == nil {
				err = errors.New("outbox writer stopped")
			}
			return err
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
			if err := s.sendStatus(ctx); err != nil {
				return err
			}
		}
	}
}

// describe is the table description of a Relation message.
func describe(m *pglogrepl.RelationMessage) *tableDesc {
	t := &tableDesc{id: m.RelationID, schema: m.Namespace, name: m.RelationName, identity: m.ReplicaIdentity, cols: make([]colDesc, len(m.Columns))}
	for i, c := range m.Columns {
		t.cols[i] = colDesc{name: c.Name, oid: c.DataType, key: c.Flags&1 != 0}
	}
	return t
}

func (s *stream) relation(ctx context.Context, m *tableDesc) error {
	table := m.schema + "." + m.name
	model := s.c.byOID[m.id]
	if model == nil {
		model = s.c.models[table]
	} else if model.QualifiedTable() != table {
		s.log.Warn().Str("table", table).Str("model", model.Model).Str("configured", model.QualifiedTable()).
			Msgf("table %s was renamed or moved to %s: still captured as model %s, but the configuration names a table that no longer exists, so walhook will refuse to start until you set table: %s", model.QualifiedTable(), table, model.Model, table)
	}
	if model == nil {
		s.rels[m.id] = &relation{id: m.id, schema: m.schema, name: m.name}
		return nil
	}
	for _, col := range m.cols {
		if err := s.c.types.resolveOID(ctx, col.oid); err != nil {
			return err
		}
	}
	pk, err := primaryKey(ctx, s.c.source, m.id)
	if err != nil {
		return err
	}
	r := newRelation(m, model, pk)
	if len(model.Relations)+len(model.Computed) > 0 || model.Snapshot != nil {
		if err := s.planRelation(ctx, r); err != nil {
			return err
		}
	}
	if len(model.IgnoreChanges) > 0 && m.identity != 'f' {
		s.log.Warn().Str("table", m.schema+"."+m.name).
			Msg("ignore_changes applies only to updates of rows changed earlier in the same transaction: PostgreSQL logs the old row only with REPLICA IDENTITY FULL (ALTER TABLE ... REPLICA IDENTITY FULL)")
	}
	for e, ev := range config.Events {
		for _, n := range s.c.hooks[model.Model][ev] {
			sp := s.specs[n]
			if sp != nil && sp.coalesce {
				r.coal[e].add(n, sp)
				r.coalesce = true
			} else {
				r.hooks[e].add(n, sp)
			}
		}
	}
	s.rels[m.id] = r
	return nil
}

// planRelation builds the relation and computed-field queries of a table
// version. A relation or computed field that cannot be planned (its table
// was dropped, say) is logged and left out until the next schema change or
// restart; capture goes on.
func (s *stream) planRelation(ctx context.Context, r *relation) error {
	cat, err := tableColumns(ctx, s.c.source, r.schema, r.name)
	if err != nil {
		return err
	}
	byName := map[string]colInfo{}
	for _, c := range cat {
		byName[c.name] = c
	}
	cols := make([]colInfo, len(r.cols))
	for i, c := range r.cols {
		cols[i] = colInfo{name: c.name, oid: c.oid, typname: byName[c.name].typname}
		if cols[i].typname == "" {
			cols[i].typname = "pg_catalog.text"
		}
	}
	plan, probs, err := planLookups(ctx, s.c.source, r.model, cols)
	if err != nil {
		return err
	}
	if len(probs) > 0 && r.model.OnLookupError != config.LookupErrorOmit {
		msg := fmt.Sprintf("table %s: %s: capture holds its changes until this is fixed (or set on_lookup_error: omit on model %s to send them without the field)", r.schema+"."+r.name, probs[0].msg, r.model.Model)
		s.c.setStall(msg)
		return errors.New(msg)
	}
	for _, p := range probs {
		s.log.Error().Str("table", r.schema+"."+r.name).Msg(p.msg + ": rendered without it")
	}
	if plan != nil {
		for _, rl := range plan.rels {
			for _, oid := range rl.sel {
				if err := s.c.types.resolveOID(ctx, oid); err != nil {
					return err
				}
			}
		}
	}
	r.setPlan(plan)
	return nil
}

func (s *stream) change(ctx context.Context, event string, relID uint32, oldType uint8, oldT, newT *pglogrepl.TupleData) error {
	seq := s.seq
	s.seq++
	rel := s.rels[relID]
	if rel == nil {
		return fmt.Errorf("change for relation %d before its Relation message", relID)
	}
	if rel.model == nil {
		// A published table no model maps (added to the publication by
		// hand?): nothing can render it, but it must not pass unseen.
		t := rel.schema + "." + rel.name
		if s.c.losses.add(&s.c.losses.unmapped, t) {
			s.log.Error().Str("table", t).Str("lsn", s.txnLSN.String()).
				Msgf("changes of table %s are published but no model maps it: they are NOT sent (counted in walhook_changes_unmapped_total); add a model for it, or remove it from publication %s", t, s.c.cfg.Database.Publication)
		}
		if lo, ok := s.c.opts.Observer.(LossObserver); ok {
			lo.Unmapped(t)
		}
		return nil
	}
	hs := &rel.hooks[eventIndex(event)]
	if len(hs.names) == 0 && !rel.coalesce {
		if event == EventDeleted && oldType == 'O' && s.dels.wants(s.c.cfg, rel) {
			// No webhook takes the delete, but relations may point at the row.
			old, err := tupleRow(oldT, len(rel.cols))
			if err != nil {
				return fmt.Errorf("%s.%s: old row: %w", rel.schema, rel.name, err)
			}
			s.dels.keep(s.c.cfg, s.log, uint64(s.txnLSN), rel, old, false)
		}
		return nil
	}
	var vals, old row
	var err error
	if oldT != nil {
		if old, err = tupleRow(oldT, len(rel.cols)); err != nil {
			return fmt.Errorf("%s.%s: old row: %w", rel.schema, rel.name, err)
		}
	}
	keysOnly := false
	if event == EventDeleted {
		vals = old
		keysOnly = oldType != 'O'
		if vals == nil {
			return fmt.Errorf("%s.%s: delete without old row", rel.schema, rel.name)
		}
		s.dels.keep(s.c.cfg, s.log, uint64(s.txnLSN), rel, vals, keysOnly)
	} else {
		if vals, err = tupleRow(newT, len(rel.cols)); err != nil {
			return fmt.Errorf("%s.%s: new row: %w", rel.schema, rel.name, err)
		}
	}
	// Unchanged TOAST values not in the old row are read back with the
	// chunk's lookups: the change waits in pending.
	fill := event == EventUpdated && fillFromOld(vals, old, oldType)
	if rel.coalesce {
		// Webhooks with coalesce: transaction get their events at commit.
		c := change{rel: rel, event: event, vals: vals, keysOnly: keysOnly, old: old, oldType: oldType}
		if err := s.coalesceChange(ctx, &c, seq); err != nil {
			return err
		}
		if len(hs.names) == 0 {
			return nil
		}
	}
	if event == EventUpdated && oldType == 'O' && onlyIgnoredChanged(rel, vals, old) {
		return nil
	}
	if s.imgs.tracks(rel) {
		lsn := uint64(s.txnLSN)
		if event == EventUpdated && oldType != 'O' {
			if prev := s.imgs.get(lsn, rel, vals); prev != nil && onlyIgnoredChanged(rel, vals, prev) {
				s.imgs.put(lsn, rel, vals, false)
				return nil
			}
		}
		if !s.imgs.put(lsn, rel, vals, event == EventDeleted) && !s.imgs.warned {
			s.imgs.warned = true
			s.log.Warn().Str("table", rel.schema+"."+rel.name).Int("objects", maxTxnImages).
				Msg("ignore_changes: transaction changes more objects than are tracked without REPLICA IDENTITY FULL: their later updates are sent")
		}
	}
	if rel.plan == nil && !hs.special && len(s.pending) == 0 && !fill {
		// The plain path: render now, one body for every webhook.
		c := change{rel: rel, event: event, vals: vals, keysOnly: keysOnly}
		body := s.rd.netboxBody(&c, s.txnAt)
		key := objectKey(rel, vals)
		for _, h := range hs.names {
			s.rows = append(s.rows, Delivery{Webhook: h, Event: event, Model: rel.model.Model, Key: key,
				CommitLSN: s.txnLSN, Seq: seq, CommittedAt: s.txnAt, Body: body})
		}
		return s.sendFull(ctx)
	}
	p := pending{change: change{rel: rel, event: event, vals: vals, oldType: oldType, keysOnly: keysOnly}, hooks: hs, seq: seq, fill: fill}
	if event == EventUpdated && hs.special {
		p.old = old
	}
	if rel.plan == nil && len(s.pending) == 0 && !fill {
		return s.emit(ctx, &p) // nothing to look up: render now
	}
	// Buffer until the chunk's lookups (the values point into the message
	// buffer: copy them). Later changes of the transaction queue behind it
	// to keep their order.
	p.vals, p.old = copyRow(p.vals), copyRow(p.old)
	s.pending = append(s.pending, p)
	if len(s.pending) >= chunkRows {
		return s.flushPending(ctx)
	}
	return nil
}

// sendFull hands the rendered rows to the writer once a chunk is full.
func (s *stream) sendFull(ctx context.Context) error {
	if len(s.rows) >= chunkRows {
		b := batch{rows: s.rows}
		s.rows = nil
		return s.send(ctx, b)
	}
	return nil
}

// pending is a change waiting to be rendered.
type pending struct {
	change
	hooks    *hookSet
	seq      int32
	oldExtra []lookupVal // relation fields of old
	fill     bool        // vals has unchanged TOAST values to read back
}

// oldNeeded reports whether the old row is rendered (for .old).
func (p *pending) oldNeeded() bool { return p.old != nil }

// flushPending looks up the relations and computed fields of the buffered
// changes, then renders them.
func (s *stream) flushPending(ctx context.Context) error {
	if err := s.lookups(ctx, s.pending); err != nil {
		return err
	}
	for i := range s.pending {
		if err := s.emit(ctx, &s.pending[i]); err != nil {
			return err
		}
	}
	clear(s.pending)
	s.pending = s.pending[:0]
	return nil
}

// emit renders a change for each of its webhooks: the default body, or the
// webhook's template, unless the webhook's conditions reject it.
func (s *stream) emit(ctx context.Context, p *pending) error {
	rel := p.rel
	body := s.rd.netboxBody(&p.change, s.txnAt)
	key := objectKey(rel, p.vals)
	var payload map[string]any
	var v4 map[string]string // object_type -> netbox-v4 body
	for i, h := range p.hooks.names {
		r := Delivery{Webhook: h, Event: p.event, Model: rel.model.Model, Key: key,
			CommitLSN: s.txnLSN, Seq: p.seq, CommittedAt: s.txnAt, Body: body}
		if sp := p.hooks.specs[i]; sp != nil {
			if payload == nil {
				var err error
				if payload, err = s.payload(body, p); err != nil {
					// Cannot happen with PostgreSQL's values; do not stop
					// capture for it: conditions fail, templates see no data.
					s.log.Error().Err(err).Str("model", rel.model.Model).Str("key", key).Msg("cannot decode the rendered payload for templates and conditions")
					payload = map[string]any{"event": p.event, "model": rel.model.Model}
				}
			}
			if sp.cond != nil {
				ok, err := evalCondition(sp.cond, payload)
				if err != nil {
					if allow, n := sp.condLog.allow(); allow {
						s.log.Warn().Err(err).Str("webhook", h).Str("model", rel.model.Model).Str("event", p.event).
							Str("key", key).Int("not_logged", n).Msg("conditions cannot be evaluated on this change: not sent")
					}
				}
				if !ok {
					continue
				}
			}
			if sp.tmpl != nil {
				out, err := s.tpl.execute(sp.tmpl, payload)
				if err != nil {
					// Stored failed with the error, and the default body.
					r.State, r.LastError = "failed", "body_template: "+err.Error()
				} else {
					r.Body = out
				}
			} else if sp.format == FormatNetboxV4 {
				ot := sp.objectType(rel.model)
				b, ok := v4[ot]
				if !ok {
					b = s.rd.netboxV4Body(&p.change, s.txnAt, ot)
					if v4 == nil {
						v4 = map[string]string{}
					}
					v4[ot] = b
				}
				r.Body = b
			}
		}
		s.rows = append(s.rows, r)
	}
	return s.sendFull(ctx)
}

// payload decodes a change's default body (and old row) for its webhooks'
// templates and conditions.
func (s *stream) payload(body string, p *pending) (map[string]any, error) {
	var old []byte
	if p.old != nil {
		s.oldBuf = s.rd.appendData(s.oldBuf[:0], p.rel, p.old, p.oldType != 'O', p.oldExtra)
		old = s.oldBuf
	}
	return s.tpl.payload(body, old)
}

// onlyIgnoredChanged reports whether an UPDATE changed only columns listed
// in the model's ignore_changes (needs the full old row).
func onlyIgnoredChanged(rel *relation, vals, old row) bool {
	if len(rel.model.IgnoreChanges) == 0 {
		return false
	}
	for i, c := range rel.cols {
		if vals[i].kind == old[i].kind && string(vals[i].data) == string(old[i].data) {
			continue
		}
		if !slices.Contains(rel.model.IgnoreChanges, c.name) {
			return false
		}
	}
	return true
}

// fillFromOld replaces unchanged TOAST values ('u') with their values from
// the old row image (REPLICA IDENTITY FULL) and reports whether some are
// left: those are read back by key with the chunk's lookups (the current
// value, once the transaction is visible).
func fillFromOld(vals, old row, oldType uint8) (missing bool) {
	for i, v := range vals {
		if v.kind != 'u' {
			continue
		}
		if oldType == 'O' && old != nil && old[i].kind != 'u' {
			vals[i] = old[i]
			continue
		}
		missing = true
	}
	return missing
}

// hookIndex maps model -> event -> names of webhooks that take it.
func hookIndex(cfg *config.Config) map[string]map[string][]string {
	idx := map[string]map[string][]string{}
	for _, m := range cfg.Models {
		idx[m.Model] = map[string][]string{}
		for _, ev := range config.Events {
			for _, w := range cfg.Webhooks {
				if w.Wants(m.Model, ev) {
					idx[m.Model][ev] = append(idx[m.Model][ev], w.Name)
				}
			}
		}
	}
	return idx
}
