package cdc

import "context"

// maxCoalesceObjects bounds the objects a transaction coalesces at once:
// when a transaction changes more distinct objects than this (for the
// models of webhooks with coalesce: transaction), the events coalesced so
// far are emitted and coalescing starts again for the rest of the
// transaction, so an object may then get more than one event. Memory stays
// bounded by this many rows (each kept once, whatever the number of
// webhooks).
var maxCoalesceObjects = 10000

// coalesceChange folds a change into its object's entry (see coalescer).
func (s *stream) coalesceChange(ctx context.Context, c *change, seq int32) error {
	if s.coal.len() >= maxCoalesceObjects && !s.coal.has(c) {
		if !s.coalWarned {
			s.coalWarned = true
			s.log.Warn().Str("lsn", s.txnLSN.String()).Int("objects", maxCoalesceObjects).
				Msg("coalesce: transaction changes more objects than are coalesced at once: events so far are sent, objects changed again later in this transaction get another event")
		}
		if err := s.flushCoalesced(ctx); err != nil {
			return err
		}
	}
	s.coal.add(c, seq)
	return nil
}

// flushCoalesced queues the coalesced events of the transaction so far, in
// the order of their objects' last changes, and forgets them.
func (s *stream) flushCoalesced(ctx context.Context) error {
	if s.coal.len() == 0 {
		return nil
	}
	for _, e := range s.coal.take() {
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
