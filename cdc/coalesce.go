package cdc

import (
	"context"
	"slices"
)

// maxCoalesceObjects bounds the objects a transaction coalesces at once:
// when a transaction changes more distinct objects than this (for the
// models of webhooks with coalesce: transaction), the events coalesced so
// far are emitted and coalescing starts again for the rest of the
// transaction, so an object may then get more than one event. Memory stays
// bounded by this many rows (each kept once, whatever the number of
// webhooks).
var maxCoalesceObjects = 10000

// coalKey is an object: model and object_key.
type coalKey struct{ model, key string }

// coalEntry is an object's changes in the current transaction, folded.
type coalEntry struct {
	rel      *relation // table version of the last change
	seq      int32     // seq of the last change: the coalesced event's seq
	before   bool      // the object existed before the transaction (first change not an insert)
	after    bool      // it exists after the last change (last change not a delete)
	vals     row       // the last row: new row, or the deleted row of a delete
	keysOnly bool      // vals is a delete's keys-only image
	old      row       // the row before the transaction, when PostgreSQL logged it whole
	oldType  uint8     // 'O' when old is set
}

// coalescer holds the per-object state of the current transaction.
type coalescer struct {
	objs   map[coalKey]*coalEntry
	warned bool // the size warning was logged for this transaction
}

func (c *coalescer) reset() {
	clear(c.objs)
	c.warned = false
}

// add appends a webhook to a hook set.
func (hs *hookSet) add(name string, sp *hookSpec) {
	hs.names = append(hs.names, name)
	hs.specs = append(hs.specs, sp)
	if sp != nil {
		hs.special = true
	}
}

// coalesceChange folds a change into its object's entry. vals and old may
// point into the message buffer: they are copied.
func (s *stream) coalesceChange(ctx context.Context, rel *relation, event string, seq int32, vals, old row, oldType uint8, keysOnly bool) error {
	if s.coal.objs == nil {
		s.coal.objs = map[coalKey]*coalEntry{}
	}
	k := coalKey{rel.model.Model, objectKey(rel, vals)}
	e := s.coal.objs[k]
	if e == nil {
		if len(s.coal.objs) >= maxCoalesceObjects {
			if !s.coal.warned {
				s.coal.warned = true
				s.log.Warn().Str("lsn", s.txnLSN.String()).Int("objects", maxCoalesceObjects).
					Msg("coalesce: transaction changes more objects than are coalesced at once: events so far are sent, objects changed again later in this transaction get another event")
			}
			if err := s.flushCoalesced(ctx); err != nil {
				return err
			}
		}
		e = &coalEntry{before: event != EventCreated}
		switch {
		case event == EventUpdated && oldType == 'O':
			e.old, e.oldType = copyRow(old), 'O'
		case event == EventDeleted && !keysOnly:
			e.old, e.oldType = copyRow(vals), 'O'
		}
		s.coal.objs[k] = e
	}
	e.rel, e.seq = rel, seq
	e.after = event != EventDeleted
	e.vals, e.keysOnly = copyRow(vals), keysOnly
	return nil
}

// event is the one event of an object's changes in a transaction, as
// NetBox's enqueue_event (extras/events.py) folds them: the first change's
// event, turned into deleted by a later delete; data and postchange are the
// last change's, prechange is the first change's. So: created then updated:
// created (prechange null); updated twice: updated (prechange = the row
// before the transaction); updated then deleted: deleted (prechange = the
// row before the transaction); created then deleted: deleted (prechange
// null, data = the row as deleted). One deliberate difference: deleted then
// created again (same key) is updated here, where NetBox keeps "deleted"
// for an object that exists.
func (e *coalEntry) event() string {
	switch {
	case !e.after:
		return EventDeleted
	case !e.before:
		return EventCreated
	case !e.after:
		return EventDeleted
	}
	return EventUpdated
}

// flushCoalesced queues the coalesced events of the transaction so far, in
// the order of their objects' last changes, and forgets them.
func (s *stream) flushCoalesced(ctx context.Context) error {
	if len(s.coal.objs) == 0 {
		return nil
	}
	entries := make([]*coalEntry, 0, len(s.coal.objs))
	for _, e := range s.coal.objs {
		entries = append(entries, e)
	}
	clear(s.coal.objs)
	slices.SortFunc(entries, func(a, b *coalEntry) int { return int(a.seq) - int(b.seq) })
	for _, e := range entries {
		ev := e.event()
		if ev == "" {
			continue
		}
		hs := &e.rel.coal[eventIndex(ev)]
		if len(hs.names) == 0 {
			continue
		}
		p := pending{change: change{rel: e.rel, event: ev, vals: e.vals}, hooks: hs, seq: e.seq, fill: hasUnchanged(e.vals)}
		switch ev {
		case EventUpdated:
			if e.old != nil && len(e.old) == len(e.vals) && onlyIgnoredChanged(e.rel, e.vals, e.old) {
				continue
			}
			p.old, p.oldType = e.old, e.oldType
		case EventDeleted:
			p.keysOnly = e.keysOnly
			switch {
			case !e.before:
				p.oldType = oldNone // created in this transaction: no prechange
			case e.old != nil && len(e.old) == len(e.vals):
				p.old, p.oldType = e.old, 'O' // the row before the transaction
			case !e.keysOnly:
				p.oldType = 'O'
			}
		}
		s.pending = append(s.pending, p)
		if len(s.pending) >= chunkRows {
			if err := s.flushPending(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}
