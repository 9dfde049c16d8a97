package cdc

import "slices"

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

// coalescer folds the changes of a transaction per object, for the
// webhooks with coalesce: transaction.
type coalescer struct {
	objs map[coalKey]*coalEntry
}

func (c *coalescer) reset() { clear(c.objs) }

// len is the number of objects held.
func (c *coalescer) len() int { return len(c.objs) }

// has reports whether ch's object has an entry.
func (c *coalescer) has(ch *change) bool {
	_, ok := c.objs[coalKey{ch.rel.model.Model, objectKey(ch.rel, ch.vals)}]
	return ok
}

// add folds change ch, the seq-th of its transaction, into its object's
// entry. Its rows may point into the message buffer: they are copied.
func (c *coalescer) add(ch *change, seq int32) {
	if c.objs == nil {
		c.objs = map[coalKey]*coalEntry{}
	}
	k := coalKey{ch.rel.model.Model, objectKey(ch.rel, ch.vals)}
	e := c.objs[k]
	if e == nil {
		e = &coalEntry{before: ch.event != EventCreated}
		switch {
		case ch.event == EventUpdated && ch.oldType == 'O':
			e.old, e.oldType = copyRow(ch.old), 'O'
		case ch.event == EventDeleted && !ch.keysOnly:
			e.old, e.oldType = copyRow(ch.vals), 'O'
		}
		c.objs[k] = e
	}
	e.rel, e.seq = ch.rel, seq
	e.after = ch.event != EventDeleted
	e.vals, e.keysOnly = copyRow(ch.vals), ch.keysOnly
}

// take returns the entries in the order of their objects' last changes, and
// forgets them.
func (c *coalescer) take() []*coalEntry {
	entries := make([]*coalEntry, 0, len(c.objs))
	for _, e := range c.objs {
		entries = append(entries, e)
	}
	clear(c.objs)
	slices.SortFunc(entries, func(a, b *coalEntry) int { return int(a.seq) - int(b.seq) })
	return entries
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
