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
	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/cdc/enqueue"
	"github.com/walhook/walhook/cdc/lookup"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/cdc/source"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/pgnet"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// statusMinGap is the shortest time between two status updates sent to
// confirm keepalive positions.
const statusMinGap = 200 * time.Millisecond

// errSilent ends a session whose server stopped answering: the path to it
// may be dead without anything being closed.
var errSilent = errors.New("the server sent nothing, not even the reply asked for: taking the connection for dead")

// stream owns one replication connection: it receives pgoutput messages,
// renders changes, hands them to the writer and confirms LSNs. It runs on a
// single goroutine (a PgConn is not safe for concurrent use).
type stream struct {
	conn     *pgconn.PgConn
	c        *Capture
	w        *enqueue.Writer
	out      chan<- enqueue.Batch
	werr     <-chan error
	log      zerolog.Logger
	interval time.Duration
	// collect, in a stream that renders rows without a connection
	// (RowRenderer), takes the batches instead of the writer.
	collect func(enqueue.Batch)

	rels    map[uint32]*payload.Relation
	rd      payload.Renderer
	rows    []enqueue.Delivery
	pending []pending // changes waiting for their chunk's lookups (or behind one that is)
	specs   map[string]*payload.HookSpec
	tpl     *payload.Templater
	oldBuf  []byte
	inTxn   bool
	span    trace.Span // the open transaction's span (Options.Tracer)
	txnLSN  pglogrepl.LSN
	txnAt   time.Time
	txnXid  uint32 // the source transaction's id, to wait until it is visible to lookups
	// visibleXid is the last transaction id found visible (waitVisible).
	visibleXid uint32
	seq        int32
	coal       payload.Coalescer
	coalWarned bool               // the coalescer's size warning was logged for this transaction
	dels       lookup.DeletedRows // rows deleted by the transaction, for relations to them
	imgs       txnImages          // last images of objects changed by the transaction, for ignore_changes

	lastSentEnd pglogrepl.LSN // end of the last transaction (or idle position) handed to the writer
	kaEnd       pglogrepl.LSN // the server's WAL end from the last keepalive outside a transaction
	lastIdle    time.Time     // when an idle position was last handed to the writer
	idlePending pglogrepl.LSN // an idle position handed to the writer and not confirmed yet
	confirmed   pglogrepl.LSN
	nextStatus  time.Time
	lastStatus  time.Time
	// guard, when the outbox server has synchronized_standby_slots, holds
	// confirmations back until those standbys have the outbox commits.
	guard *standbyGuard

	// silence is how long the server may stay silent before the session
	// ends (errSilent); a status update asks for a reply once a third of it
	// has passed. lastHeard is when the server was last heard from, or when
	// the stream came back from work that kept it from reading (whatever
	// arrived meanwhile is buffered); asked: a reply was asked for since.
	silence   time.Duration
	lastHeard time.Time
	asked     bool

	// rowsBytes is enqueue.RowsBytes(rows[:counted]): the size of the rows not
	// handed to the writer yet, counted up to counted. pendingBytes is
	// the size of the values copied into pending.
	rowsBytes, pendingBytes int64
	counted                 int

	// descs are the tables' descriptions from their Relation messages, to
	// build rels again when the configuration changes.
	descs map[uint32]*catalog.Table
	// gen is the configuration transactions are rendered with; next are
	// reloaded ones that apply from later commit LSNs (Reload). wake
	// is cancelled by Reload to end a wait for the next message.
	gen  *rendering
	next []*rendering
	wake context.Context
}

// idleBytes is how far the server's WAL may run ahead of the checkpoint,
// while the captured tables are idle, before the position is written at
// once (otherwise it is written once per status interval): other tables'
// and databases' writes must not be retained by the slot, and walhook's own
// checkpoint write must not make the next one due.
const idleBytes = 1 << 20

// idleCheckpoint hands the server's WAL end from a keepalive to the writer
// as a checkpoint without rows, when the captured tables are idle: the slot
// may only be confirmed up to the checkpoint (so that a slot found ahead of
// it at a start is a gap, never a skip), and an idle slot must not hold
// WAL back. It runs between transactions only.
func (s *stream) idleCheckpoint(ctx context.Context) error {
	if s.inTxn || s.collect != nil || s.kaEnd <= s.lastSentEnd {
		return nil
	}
	since := time.Since(s.lastIdle)
	if since < s.interval && (s.kaEnd-s.lastSentEnd < idleBytes || since < statusMinGap) {
		return nil
	}
	end := s.kaEnd
	if err := s.c.checkPublication(ctx, s.confirmed); err != nil {
		return err
	}
	if err := s.send(ctx, enqueue.Batch{Commit: true, EndLSN: end}); err != nil {
		return err
	}
	s.lastSentEnd, s.lastIdle, s.idlePending = end, time.Now(), end
	// Confirm it as soon as the writer has it: the server waits for our
	// reply before it sends the next keepalive.
	if due := time.Now().Add(idleConfirmPoll); due.Before(s.nextStatus) {
		s.nextStatus = due
	}
	return nil
}

// idleConfirmPoll is how soon after handing an idle position to the writer
// the stream checks whether it can confirm it.
const idleConfirmPoll = 10 * time.Millisecond

// confirmLSN is what may be reported as flushed: the writer's committed
// checkpoint (of changes, or of an idle position), held back by the guard
// until the standbys have the outbox commit.
func (s *stream) confirmLSN(ctx context.Context) pglogrepl.LSN {
	f := s.w.Flushed()
	if s.guard != nil {
		f = s.guard.safe(ctx, f)
		if s.guard.waiting() {
			if due := time.Now().Add(guardRecheck); due.Before(s.nextStatus) {
				s.nextStatus = due
			}
		}
	}
	if f > s.confirmed {
		s.confirmed = f
	}
	return s.confirmed
}

func (s *stream) sendStatus(ctx context.Context) error {
	lsn := s.confirmLSN(ctx)
	reply := s.silence > 0 && time.Since(s.lastHeard) >= s.silence/3
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn, ClientTime: time.Now(),
		ReplyRequested: reply,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.asked = s.asked || reply
	s.c.confirmed.Store(uint64(lsn))
	s.lastStatus = time.Now()
	next := s.lastStatus.Add(s.interval)
	switch {
	case s.idlePending > lsn && (s.guard == nil || !s.guard.waiting()):
		next = s.lastStatus.Add(idleConfirmPoll)
	case s.guard != nil && s.guard.waiting():
		next = s.lastStatus.Add(guardRecheck)
	default:
		s.idlePending = 0
	}
	s.nextStatus = next
	return nil
}

// receiveDeadline is when to stop waiting for a message: the next status
// update, the moment to ask the server for a reply, or the end of the
// silence allowed.
func (s *stream) receiveDeadline() time.Time {
	d := s.nextStatus
	if s.silence <= 0 {
		return d
	}
	if t := s.lastHeard.Add(s.silence); t.Before(d) {
		d = t
	}
	if t := s.lastHeard.Add(s.silence / 3); !s.asked && t.Before(d) {
		d = t
	}
	return d
}

func (s *stream) run(ctx context.Context) error {
	s.nextStatus = time.Now().Add(s.interval)
	s.lastHeard = time.Now()
	s.specs, s.tpl = s.gen.specs, s.gen.tpl
	for {
		select {
		case err := <-s.werr: // the writer failed while the stream was idle
			if err == nil {
				err = errors.New("outbox writer stopped")
			}
			return err
		default:
		}
		if now := time.Now(); !now.Before(s.nextStatus) ||
			(s.silence > 0 && !s.asked && now.Sub(s.lastHeard) >= s.silence/3) {
			if err := s.sendStatus(ctx); err != nil {
				return err
			}
			if err := s.idleCheckpoint(ctx); err != nil {
				return err
			}
		}
		if s.wake.Err() != nil && ctx.Err() == nil {
			var wake context.CancelFunc
			s.wake, wake = context.WithCancel(ctx)
			s.c.setWake(wake)
		}
		if !s.inTxn {
			if err := s.takeReload(ctx); err != nil {
				return err
			}
		}
		rctx, cancel := context.WithDeadline(s.wake, s.receiveDeadline())
		raw, err := s.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, context.Canceled) && s.wake.Err() != nil {
				// Reload woke the stream: the connection is still usable.
				continue
			}
			if pgconn.Timeout(err) {
				if s.silence > 0 && time.Since(s.lastHeard) >= s.silence {
					if busy := s.c.walsenderBusy(ctx); busy != "" {
						// Decoding a large transaction (of tables not
						// captured, say), the server answers only now and
						// then: give it another while.
						s.log.Info().Str("wait_event", busy).Dur("silent", time.Since(s.lastHeard)).
							Msg("replication stream silent, but its walsender is busy (decoding a large transaction?): waiting on")
						s.lastHeard, s.asked = time.Now(), false
						continue
					}
					return fmt.Errorf("replication stream: nothing received for %s: %w", s.silence, errSilent)
				}
				continue
			}
			return fmt.Errorf("receive from replication stream: %w", err)
		}
		s.lastHeard, s.asked = time.Now(), false
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
					s.kaEnd = ka.ServerWALEnd
					if err := s.idleCheckpoint(ctx); err != nil {
						return err
					}
					// A position past the confirmed one is (or soon will be)
					// checkpointed: confirm it soon (the server waits for our
					// reply before it sends the next keepalive), so the slot
					// does not retain WAL.
					if due := s.lastStatus.Add(statusMinGap); s.lastSentEnd > s.confirmed && due.Before(s.nextStatus) {
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
				// Handling may have waited (the writer, lookups): the
				// silence counts only time spent waiting for the server.
				s.lastHeard, s.asked = time.Now(), false
			}
		}
	}
}

func (s *stream) handle(ctx context.Context, data []byte) error {
	msg, err := parseMessage(data)
	if err != nil {
		return &source.FatalError{Err: err}
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		return s.relation(ctx, describe(m))
	case *pglogrepl.TypeMessage:
		s.c.types.named(m.DataType, m.Namespace+"."+m.Name)
	case *pglogrepl.BeginMessage:
		if err := s.switchRendering(ctx, m.FinalLSN); err != nil {
			return err
		}
		s.inTxn, s.txnLSN, s.txnAt, s.txnXid, s.seq = true, m.FinalLSN, m.CommitTime, m.Xid, 0
		s.coal.Reset()
		s.coalWarned = false
		if t := s.c.opts.Tracer; t != nil {
			_, s.span = t.Start(ctx, "capture transaction", trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(attribute.String("walhook.commit_lsn", m.FinalLSN.String()), attribute.Int64("walhook.xid", int64(m.Xid))))
		}
	case *pglogrepl.InsertMessage:
		return s.change(ctx, payload.EventCreated, m.RelationID, 0, nil, m.Tuple)
	case *pglogrepl.UpdateMessage:
		return s.change(ctx, payload.EventUpdated, m.RelationID, m.OldTupleType, m.OldTuple, m.NewTuple)
	case *pglogrepl.DeleteMessage:
		return s.change(ctx, payload.EventDeleted, m.RelationID, m.OldTupleType, m.OldTuple, nil)
	case *pglogrepl.TruncateMessage:
		var names []string
		lo, _ := s.c.opts.Observer.(LossObserver)
		for _, id := range m.RelationIDs {
			if r := s.rels[id]; r != nil {
				t := r.Schema + "." + r.Name
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
		b := enqueue.Batch{Rows: s.rows, Commit: true, EndLSN: m.TransactionEndLSN, Bytes: s.takeRows()}
		s.rows = nil
		s.inTxn = false
		if s.span != nil {
			s.span.SetAttributes(attribute.Int("walhook.changes", int(s.seq)), attribute.Int("walhook.deliveries", len(b.Rows)))
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
func (s *stream) send(ctx context.Context, b enqueue.Batch) error {
	if s.collect != nil {
		s.collect(b)
		return nil
	}
	for {
		// Rows wait here, not in the writer's queue, while those already
		// handed over fill the in-flight budget.
		out := s.out
		if !s.w.Room(b.Bytes) {
			out = nil
		}
		t := time.NewTimer(time.Until(s.nextStatus))
		select {
		case out <- b:
			t.Stop()
			s.w.Reserve(b.Bytes)
			return nil
		case <-s.w.Freed():
			t.Stop()
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
func describe(m *pglogrepl.RelationMessage) *catalog.Table {
	t := &catalog.Table{OID: m.RelationID, Schema: m.Namespace, Name: m.RelationName, Identity: catalog.ReplicaIdentity(m.ReplicaIdentity),
		Columns: make([]catalog.Column, len(m.Columns))}
	for i, c := range m.Columns {
		t.Columns[i] = catalog.Column{Name: c.Name, TypeOID: c.DataType, Key: c.Flags&1 != 0}
	}
	return t
}

// relation builds the relation of table version m, which a Relation
// message (or RowRenderer) described: its model, webhooks and lookups.
func (s *stream) relation(ctx context.Context, m *catalog.Table) error {
	table := m.Schema + "." + m.Name
	if s.descs == nil {
		s.descs = map[uint32]*catalog.Table{}
	}
	s.descs[m.OID] = m
	model := s.gen.byOID[m.OID]
	if model == nil {
		model = s.gen.models[table]
	} else if model.QualifiedTable() != table {
		s.log.Warn().Str("table", table).Str("model", model.Model).Str("configured", model.QualifiedTable()).
			Msgf("table %s was renamed or moved to %s: still captured as model %s, but the configuration names a table that no longer exists, so walhook will refuse to start until you set table: %s", model.QualifiedTable(), table, model.Model, table)
	}
	if model == nil {
		s.rels[m.OID] = &payload.Relation{ID: m.OID, Schema: m.Schema, Name: m.Name}
		return nil
	}
	for _, col := range m.Columns {
		if err := s.c.types.resolveOID(ctx, col.TypeOID); err != nil {
			return err
		}
	}
	t, err := s.withCatalog(ctx, m)
	if err != nil {
		return err
	}
	r := payload.NewRelation(t, model)
	if len(model.Relations)+len(model.Computed) > 0 || model.Snapshot != nil {
		if err := s.planRelation(ctx, r, t.Columns); err != nil {
			return err
		}
	}
	if len(model.IgnoreChanges) > 0 && m.Identity != catalog.IdentityFull {
		s.log.Warn().Str("table", m.Schema+"."+m.Name).
			Msg("ignore_changes applies only to updates of rows changed earlier in the same transaction: PostgreSQL logs the old row only with REPLICA IDENTITY FULL (ALTER TABLE ... REPLICA IDENTITY FULL)")
	}
	for e, ev := range config.Events {
		for _, n := range s.gen.hooks[model.Model][ev] {
			sp := s.specs[n]
			if sp != nil && sp.Coalesce {
				r.Coal[e].Add(n, sp)
				r.Coalesce = true
			} else {
				r.Hooks[e].Add(n, sp)
			}
		}
	}
	s.rels[m.OID] = r
	return nil
}

// withCatalog returns a copy of m with what the Relation message lacks: the
// primary key, and the type names of the columns the catalog has (for
// casts). The catalog is today's, m the version of the change's commit.
func (s *stream) withCatalog(ctx context.Context, m *catalog.Table) (*catalog.Table, error) {
	qctx, cancel := pgnet.Bound(ctx)
	defer cancel()
	cat, err := catalog.ReadColumns(qctx, s.c.source, m.OID)
	if err != nil {
		return nil, fmt.Errorf("%s.%s: %w", m.Schema, m.Name, err)
	}
	t := *m
	if t.PrimaryKey, err = catalog.PrimaryKey(qctx, s.c.source, m.OID); err != nil {
		return nil, fmt.Errorf("%s.%s: %w", m.Schema, m.Name, err)
	}
	t.Columns = slices.Clone(m.Columns)
	for i, c := range t.Columns {
		if j := slices.IndexFunc(cat, func(cc catalog.Column) bool { return cc.Name == c.Name }); j >= 0 {
			t.Columns[i].TypeName = cat[j].TypeName
		}
	}
	return &t, nil
}

// planRelation builds the relation and computed-field queries of a table
// version whose columns, in row order, are cols. A relation or computed
// field that cannot be planned (its table was dropped, say) is logged and
// left out until the next schema change or restart; capture goes on.
func (s *stream) planRelation(ctx context.Context, r *payload.Relation, cols []catalog.Column) error {
	qctx, cancel := pgnet.Bound(ctx)
	defer cancel()
	plan, probs, err := payload.PlanLookups(qctx, s.c.source, r.Model, cols)
	if err != nil {
		return err
	}
	if len(probs) > 0 && r.Model.OnLookupError != config.LookupErrorOmit {
		msg := fmt.Sprintf("table %s: %s: capture holds its changes until this is fixed (or set on_lookup_error: omit on model %s to send them without the field)", r.Schema+"."+r.Name, probs[0].Msg, r.Model.Model)
		s.c.setStall(msg)
		return errors.New(msg)
	}
	for _, p := range probs {
		s.log.Error().Str("table", r.Schema+"."+r.Name).Msg(p.Msg + ": rendered without it")
	}
	if plan != nil {
		for _, rl := range plan.Rels {
			for _, oid := range rl.Sel {
				if err := s.c.types.resolveOID(ctx, oid); err != nil {
					return err
				}
			}
		}
	}
	r.SetPlan(plan)
	return nil
}

func (s *stream) change(ctx context.Context, event string, relID uint32, oldType uint8, oldT, newT *pglogrepl.TupleData) error {
	seq := s.seq
	s.seq++
	rel := s.rels[relID]
	if rel == nil {
		return fmt.Errorf("change for relation %d before its Relation message", relID)
	}
	if rel.Model == nil {
		// A published table no model maps (added to the publication by
		// hand?): nothing can render it, but it must not pass unseen.
		t := rel.Schema + "." + rel.Name
		if s.c.losses.add(&s.c.losses.unmapped, t) {
			s.log.Error().Str("table", t).Str("lsn", s.txnLSN.String()).
				Msgf("changes of table %s are published but no model maps it: they are NOT sent (counted in walhook_changes_unmapped_total); add a model for it, or remove it from publication %s", t, s.gen.cfg.Database.Publication)
		}
		if lo, ok := s.c.opts.Observer.(LossObserver); ok {
			lo.Unmapped(t)
		}
		return nil
	}
	hs := &rel.Hooks[payload.EventIndex(event)]
	if len(hs.Names) == 0 && !rel.Coalesce {
		if event == payload.EventDeleted && oldType == 'O' && s.dels.Wants(s.gen.cfg, rel) {
			// No webhook takes the delete, but relations may point at the row.
			old, err := tupleRow(oldT, len(rel.Cols))
			if err != nil {
				return fmt.Errorf("%s.%s: old row: %w", rel.Schema, rel.Name, err)
			}
			s.dels.Keep(s.gen.cfg, s.log, uint64(s.txnLSN), rel, old, false)
		}
		return nil
	}
	var vals, old payload.Row
	var err error
	if oldT != nil {
		if old, err = tupleRow(oldT, len(rel.Cols)); err != nil {
			return fmt.Errorf("%s.%s: old row: %w", rel.Schema, rel.Name, err)
		}
	}
	keysOnly := false
	if event == payload.EventDeleted {
		vals = old
		keysOnly = oldType != 'O'
		if vals == nil {
			return fmt.Errorf("%s.%s: delete without old row", rel.Schema, rel.Name)
		}
		s.dels.Keep(s.gen.cfg, s.log, uint64(s.txnLSN), rel, vals, keysOnly)
	} else {
		if vals, err = tupleRow(newT, len(rel.Cols)); err != nil {
			return fmt.Errorf("%s.%s: new row: %w", rel.Schema, rel.Name, err)
		}
	}
	// Unchanged TOAST values not in the old row are read back with the
	// chunk's lookups: the change waits in pending.
	fill := event == payload.EventUpdated && fillFromOld(vals, old, oldType)
	if rel.Coalesce {
		// Webhooks with coalesce: transaction get their events at commit.
		c := payload.Change{Rel: rel, Event: event, Vals: vals, KeysOnly: keysOnly, Old: old, OldType: oldType}
		if err := s.coalesceChange(ctx, &c, seq); err != nil {
			return err
		}
		if len(hs.Names) == 0 {
			return nil
		}
	}
	if event == payload.EventUpdated && oldType == 'O' && onlyIgnoredChanged(rel, vals, old) {
		return nil
	}
	if s.imgs.tracks(rel) {
		lsn := uint64(s.txnLSN)
		if event == payload.EventUpdated && oldType != 'O' {
			if prev := s.imgs.get(lsn, rel, vals); prev != nil && onlyIgnoredChanged(rel, vals, prev) {
				s.imgs.put(lsn, rel, vals, false)
				return nil
			}
		}
		if !s.imgs.put(lsn, rel, vals, event == payload.EventDeleted) && !s.imgs.warned {
			s.imgs.warned = true
			s.log.Warn().Str("table", rel.Schema+"."+rel.Name).Int("objects", maxTxnImages).
				Msg("ignore_changes: transaction changes more objects than are tracked without REPLICA IDENTITY FULL: their later updates are sent")
		}
	}
	if rel.Plan == nil && !hs.Special && len(s.pending) == 0 && !fill {
		// The plain path: render now, one body for every webhook.
		c := payload.Change{Rel: rel, Event: event, Vals: vals, KeysOnly: keysOnly}
		body := s.rd.NetboxBody(&c, s.txnAt)
		key := payload.ObjectKey(rel, vals)
		for _, h := range hs.Names {
			s.rows = append(s.rows, enqueue.Delivery{Webhook: h, Event: event, Model: rel.Model.Model, Key: key,
				CommitLSN: s.txnLSN, Seq: seq, CommittedAt: s.txnAt, Body: body})
		}
		return s.sendFull(ctx)
	}
	p := pending{Change: lookup.Change{Change: payload.Change{Rel: rel, Event: event, Vals: vals, OldType: oldType, KeysOnly: keysOnly}, Fill: fill}, hooks: hs, seq: seq}
	if event == payload.EventUpdated && hs.Special {
		p.Old = old
	}
	if rel.Plan == nil && len(s.pending) == 0 && !fill {
		return s.emit(ctx, &p) // nothing to look up: render now
	}
	// Buffer until the chunk's lookups (the values point into the message
	// buffer: copy them). Later changes of the transaction queue behind it
	// to keep their order.
	p.Vals, p.Old = payload.CopyRow(p.Vals), payload.CopyRow(p.Old)
	s.pending = append(s.pending, p)
	s.pendingBytes += rowBytes(p.Vals) + rowBytes(p.Old)
	if len(s.pending) >= enqueue.ChunkRows || s.pendingBytes >= enqueue.ChunkBytes {
		return s.flushPending(ctx)
	}
	return nil
}

// rowBytes is the size of a row's values.
func rowBytes(r payload.Row) int64 {
	var n int64
	for _, v := range r {
		n += int64(len(v.Data))
	}
	return n
}

// takeRows returns the size of s.rows, which are about to be handed to the
// writer, and starts counting again.
func (s *stream) takeRows() int64 {
	n := s.rowsBytes + enqueue.RowsBytes(s.rows[s.counted:])
	s.rowsBytes, s.counted = 0, 0
	return n
}

// sendFull hands the rendered rows to the writer once a chunk is full (in
// rows or in bytes).
func (s *stream) sendFull(ctx context.Context) error {
	s.rowsBytes += enqueue.RowsBytes(s.rows[s.counted:])
	s.counted = len(s.rows)
	if len(s.rows) >= enqueue.ChunkRows || s.rowsBytes >= enqueue.ChunkBytes {
		b := enqueue.Batch{Rows: s.rows, Bytes: s.takeRows()}
		s.rows = nil
		return s.send(ctx, b)
	}
	return nil
}

// pending is a change waiting to be rendered.
type pending struct {
	lookup.Change
	hooks *payload.HookSet
	seq   int32
}

// lookups fills in the unchanged TOAST values and the relation and computed
// fields of a chunk of pending changes (package lookup), on up to half of
// the source pool's connections.
func (s *stream) lookups(ctx context.Context, ps []pending) error {
	cs := make([]*lookup.Change, len(ps))
	for i := range ps {
		cs[i] = &ps[i].Change
	}
	r := lookup.Runner{
		Pool: s.c.source, Workers: max(1, int(s.c.source.Config().MaxConns)/2), Log: s.log, Resolve: s.rd.Resolve, Deleted: &s.dels,
		Visible:   func(ctx context.Context) error { return s.waitVisible(ctx, s.txnXid) },
		Stall:     s.c.setStall,
		Failed:    func(n int) { s.c.lookupErrors.Add(int64(n)) },
		KeepAlive: s.keepAlive,
	}
	return r.Run(ctx, s.txnLSN, cs)
}

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
	s.pendingBytes = 0
	return nil
}

// emit renders a change for each of its webhooks: the default body, or the
// webhook's template, unless the webhook's conditions reject it.
func (s *stream) emit(ctx context.Context, p *pending) error {
	rel := p.Rel
	body := s.rd.NetboxBody(&p.Change.Change, s.txnAt)
	key := payload.ObjectKey(rel, p.Vals)
	var decoded map[string]any // the default body decoded, for templates and conditions
	var v4 map[string]string   // object_type -> netbox-v4 body
	for i, h := range p.hooks.Names {
		r := enqueue.Delivery{Webhook: h, Event: p.Event, Model: rel.Model.Model, Key: key,
			CommitLSN: s.txnLSN, Seq: p.seq, CommittedAt: s.txnAt, Body: body}
		if sp := p.hooks.Specs[i]; sp != nil {
			if decoded == nil {
				var err error
				if decoded, err = s.decode(body, p); err != nil {
					// Cannot happen with PostgreSQL's values; do not stop
					// capture for it: conditions fail, templates see no data.
					s.log.Error().Err(err).Str("model", rel.Model.Model).Str("key", key).Msg("cannot decode the rendered payload for templates and conditions")
					decoded = map[string]any{"event": p.Event, "model": rel.Model.Model}
				}
			}
			if sp.Cond != nil {
				ok, err := payload.EvalCondition(sp.Cond, decoded)
				if err != nil {
					if allow, n := sp.CondLog.Allow(); allow {
						s.log.Warn().Err(err).Str("webhook", h).Str("model", rel.Model.Model).Str("event", p.Event).
							Str("key", key).Int("not_logged", n).Msg("conditions cannot be evaluated on this change: not sent")
					}
				}
				if !ok {
					continue
				}
			}
			if sp.Tmpl != nil {
				out, err := s.tpl.Execute(sp.Tmpl, decoded)
				if err != nil {
					// Stored failed with the error, and the default body.
					r.State, r.LastError = outbox.StateFailed, "body_template: "+err.Error()
				} else {
					r.Body = out
				}
			} else if sp.Format == payload.FormatNetboxV4 {
				ot := sp.ObjectType(rel.Model)
				b, ok := v4[ot]
				if !ok {
					b = s.rd.NetboxV4Body(&p.Change.Change, s.txnAt, ot)
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

// decode decodes a change's default body (and old row) for its webhooks'
// templates and conditions.
func (s *stream) decode(body string, p *pending) (map[string]any, error) {
	var old []byte
	if p.Old != nil {
		s.oldBuf = s.rd.AppendData(s.oldBuf[:0], p.Rel, p.Old, p.OldType != 'O', p.OldExtra)
		old = s.oldBuf
	}
	return s.tpl.Payload(body, old)
}

// onlyIgnoredChanged reports whether an UPDATE changed only columns listed
// in the model's ignore_changes (needs the full old row).
func onlyIgnoredChanged(rel *payload.Relation, vals, old payload.Row) bool {
	if len(rel.Model.IgnoreChanges) == 0 {
		return false
	}
	for i, c := range rel.Cols {
		if vals[i].Kind == old[i].Kind && string(vals[i].Data) == string(old[i].Data) {
			continue
		}
		if !slices.Contains(rel.Model.IgnoreChanges, c.Name) {
			return false
		}
	}
	return true
}

// fillFromOld replaces unchanged TOAST values ('u') with their values from
// the old row image (REPLICA IDENTITY FULL) and reports whether some are
// left: those are read back by key with the chunk's lookups (the current
// value, once the transaction is visible).
func fillFromOld(vals, old payload.Row, oldType uint8) (missing bool) {
	for i, v := range vals {
		if v.Kind != 'u' {
			continue
		}
		if oldType == 'O' && old != nil && old[i].Kind != 'u' {
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
