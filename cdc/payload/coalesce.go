package payload

import "slices"

// coalKey is an object: model and object_key.
type coalKey struct{ model, key string }

// Coalesced is an object's changes in the current transaction, folded.
type Coalesced struct {
	Rel      *Relation // table version of the last change
	Seq      int32     // seq of the last change: the coalesced event's seq
	Before   bool      // the object existed before the transaction (first change not an insert)
	after    bool      // it exists after the last change (last change not a delete)
	Vals     Row       // the last row: new row, or the deleted row of a delete
	KeysOnly bool      // vals is a delete's keys-only image
	Old      Row       // the row before the transaction, when PostgreSQL logged it whole
	OldType  uint8     // 'O' when old is set
}

// Coalescer folds the changes of a transaction per object, for the
// webhooks with coalesce: transaction.
type Coalescer struct {
	objs map[coalKey]*Coalesced
}

// Reset forgets every object, for the next transaction.
func (c *Coalescer) Reset() { clear(c.objs) }

// Len is the number of objects held.
func (c *Coalescer) Len() int { return len(c.objs) }

// Has reports whether ch's object has an entry.
func (c *Coalescer) Has(ch *Change) bool {
	_, ok := c.objs[coalKey{ch.Rel.Model.Model, ObjectKey(ch.Rel, ch.Vals)}]
	return ok
}

// Add folds change ch, the seq-th of its transaction, into its object's
// entry. Its rows may point into the message buffer: they are copied.
func (c *Coalescer) Add(ch *Change, seq int32) {
	if c.objs == nil {
		c.objs = map[coalKey]*Coalesced{}
	}
	k := coalKey{ch.Rel.Model.Model, ObjectKey(ch.Rel, ch.Vals)}
	e := c.objs[k]
	if e == nil {
		e = &Coalesced{Before: ch.Event != EventCreated}
		switch {
		case ch.Event == EventUpdated && ch.OldType == 'O':
			e.Old, e.OldType = CopyRow(ch.Old), 'O'
		case ch.Event == EventDeleted && !ch.KeysOnly:
			e.Old, e.OldType = CopyRow(ch.Vals), 'O'
		}
		c.objs[k] = e
	}
	e.Rel, e.Seq = ch.Rel, seq
	e.after = ch.Event != EventDeleted
	e.Vals, e.KeysOnly = CopyRow(ch.Vals), ch.KeysOnly
}

// Take returns the entries in the order of their objects' last changes, and
// forgets them.
func (c *Coalescer) Take() []*Coalesced {
	entries := make([]*Coalesced, 0, len(c.objs))
	for _, e := range c.objs {
		entries = append(entries, e)
	}
	clear(c.objs)
	slices.SortFunc(entries, func(a, b *Coalesced) int { return int(a.Seq) - int(b.Seq) })
	return entries
}

// Event is the one event of an object's changes in a transaction, as
// NetBox's enqueue_event (extras/events.py) folds them: the first change's
// event, turned into deleted by a later delete; data and postchange are the
// last change's, prechange is the first change's. So: created then updated:
// created (prechange null); updated twice: updated (prechange = the row
// before the transaction); updated then deleted: deleted (prechange = the
// row before the transaction); created then deleted: deleted (prechange
// null, data = the row as deleted). One deliberate difference: deleted then
// created again (same key) is updated here, where NetBox keeps "deleted"
// for an object that exists.
func (e *Coalesced) Event() string {
	switch {
	case !e.after:
		return EventDeleted
	case !e.Before:
		return EventCreated
	}
	return EventUpdated
}
