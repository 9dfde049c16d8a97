package cdc

import (
	"context"

	"github.com/walhook/walhook/cdc/enqueue"
	"github.com/walhook/walhook/cdc/lookup"
	"github.com/walhook/walhook/cdc/payload"
)

// maxCoalesceObjects bounds the objects a transaction coalesces at once:
// when a transaction changes more distinct objects than this (for the
// models of webhooks with coalesce: transaction), the events coalesced so
// far are emitted and coalescing starts again for the rest of the
// transaction, so an object may then get more than one event. Memory stays
// bounded by this many rows (each kept once, whatever the number of
// webhooks).
var maxCoalesceObjects = 10000

// coalesceChange folds a change into its object's entry (see coalescer).
func (s *stream) coalesceChange(ctx context.Context, c *payload.Change, seq int32) error {
	if s.coal.Len() >= maxCoalesceObjects && !s.coal.Has(c) {
		if !s.coalWarned {
			s.coalWarned = true
			s.log.Warn().Str("lsn", s.txnLSN.String()).Int("objects", maxCoalesceObjects).
				Msg("coalesce: transaction changes more objects than are coalesced at once: events so far are sent, objects changed again later in this transaction get another event")
		}
		if err := s.flushCoalesced(ctx); err != nil {
			return err
		}
	}
	s.coal.Add(c, seq)
	return nil
}

// flushCoalesced queues the coalesced events of the transaction so far, in
// the order of their objects' last changes, and forgets them.
func (s *stream) flushCoalesced(ctx context.Context) error {
	if s.coal.Len() == 0 {
		return nil
	}
	for _, e := range s.coal.Take() {
		ev := e.Event()
		if ev == "" {
			continue
		}
		hs := &e.Rel.Coal[payload.EventIndex(ev)]
		if len(hs.Names) == 0 {
			continue
		}
		p := pending{Change: lookup.Change{Change: payload.Change{Rel: e.Rel, Event: ev, Vals: e.Vals}, Fill: payload.HasUnchanged(e.Vals)}, hooks: hs, seq: e.Seq}
		switch ev {
		case payload.EventUpdated:
			if e.Old != nil && len(e.Old) == len(e.Vals) && onlyIgnoredChanged(e.Rel, e.Vals, e.Old) {
				continue
			}
			p.Old, p.OldType = e.Old, e.OldType
		case payload.EventDeleted:
			p.KeysOnly = e.KeysOnly
			switch {
			case !e.Before:
				p.OldType = payload.OldNone // created in this transaction: no prechange
			case e.Old != nil && len(e.Old) == len(e.Vals):
				p.Old, p.OldType = e.Old, 'O' // the row before the transaction
			case !e.KeysOnly:
				p.OldType = 'O'
			}
		}
		s.pending = append(s.pending, p)
		if len(s.pending) >= enqueue.ChunkRows {
			if err := s.flushPending(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}
