package cdc

import (
	"strconv"
	"time"
)

// Change events, as in the payload.
const (
	EventCreated = "created"
	EventUpdated = "updated"
	EventDeleted = "deleted"
)

// tupleValue is one column of a decoded row: kind is pgoutput's 'n' (NULL),
// 't' (text), 'u' (unchanged TOAST, not sent) or 'b' (binary).
type tupleValue struct {
	kind byte
	data []byte
}

// row is a change's column values in the relation's column order.
type row []tupleValue

// renderer renders rows to JSON. It reuses its buffer between calls and is
// owned by one goroutine.
type renderer struct {
	buf     []byte
	resolve TypeResolver
	// snapshot renders the snapshot form (format netbox-v4, as NetBox's
	// serialize_object): foreign-key columns that have a relation as their
	// raw value, a one-column key under the relation's field name
	// ("region": 51), the columns of a composite key under their own names;
	// raw choice values; no url; timestamps and numerics as Django's JSON
	// encoder writes them; the model's snapshot options.
	snapshot bool
}

// appendData renders the "data" object of a row. keysOnly renders only
// replica identity columns (a DELETE whose old row carries keys only). ex
// holds the looked-up relation fields, then the computed fields, of a model
// that has them (rel.plan): a field whose value is not present is left out,
// and computed fields are rendered only when ex has them (not for .old).
func (rd *renderer) appendData(dst []byte, rel *relation, vals row, keysOnly bool, ex []lookupVal) []byte {
	dst = append(dst, '{')
	first := true
	lastPK := -1
	if len(rel.urlParts) > 0 && len(rel.pkCols) > 0 {
		lastPK = rel.pkCols[len(rel.pkCols)-1]
	}
	urlDone := len(rel.urlParts) == 0 || rd.snapshot
	for i := range rel.cols {
		c := &rel.cols[i]
		excluded := c.exclude
		if rd.snapshot && rel.model != nil && rel.model.Snapshot != nil {
			excluded = c.snapExclude
		}
		skip := excluded || (c.hidden && !rd.snapshot) || (keysOnly && !c.key) || i >= len(vals)
		name := c.outName
		if !skip && c.rel > 0 && rd.snapshot {
			if rl := rel.plan.rels[c.rel-1]; len(rl.fk) == 1 {
				name = rl.field
			}
		} else if !skip && c.rel > 0 {
			if n := c.rel - 1; n < len(ex) && ex[n].present {
				if !first {
					dst = append(dst, ',')
				}
				first = false
				dst = AppendJSONString(dst, rel.plan.rels[n].field)
				dst = append(dst, ':')
				dst = append(dst, ex[n].json...)
			}
			skip = true
		}
		if skip {
			if i == lastPK && !urlDone {
				dst, first = rd.appendURL(dst, rel, vals, first), false
				urlDone = true
			}
			continue
		}
		if rd.snapshot && c.snapName != "" {
			name = c.snapName
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = AppendJSONString(dst, name)
		dst = append(dst, ':')
		v := vals[i]
		switch {
		case v.kind == 'n' || v.kind == 'u':
			dst = append(dst, "null"...)
		case rd.snapshot:
			dst = appendSnapshotValue(dst, c.oid, v.data, rd.resolve)
		case c.choices != nil && len(v.data) == 0:
			// An empty choice renders as null, as NetBox's ChoiceField does.
			dst = append(dst, "null"...)
		case c.choices != nil:
			label, ok := c.choices[string(v.data)]
			if !ok {
				label = string(v.data)
			}
			dst = append(dst, `{"value":`...)
			dst = AppendValue(dst, c.oid, v.data, rd.resolve)
			dst = append(dst, `,"label":`...)
			dst = AppendJSONString(dst, label)
			dst = append(dst, '}')
		default:
			dst = AppendValue(dst, c.oid, v.data, rd.resolve)
		}
		if i == lastPK && !urlDone {
			dst, first = rd.appendURL(dst, rel, vals, first), false
			urlDone = true
		}
	}
	if !urlDone {
		dst, first = rd.appendURL(dst, rel, vals, first), false
	}
	if rel.plan != nil {
		base := len(rel.plan.rels)
		for j, cl := range rel.plan.comps {
			if cl.snap != rd.snapshot || base+j >= len(ex) || !ex[base+j].present {
				continue
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = AppendJSONString(dst, cl.name)
			dst = append(dst, ':')
			dst = append(dst, ex[base+j].json...)
		}
	}
	return append(dst, '}')
}

func (rd *renderer) appendURL(dst []byte, rel *relation, vals row, first bool) []byte {
	if !first {
		dst = append(dst, ',')
	}
	dst = append(dst, `"url":`...)
	var u []byte
	for _, p := range rel.urlParts {
		if p.col < 0 {
			u = append(u, p.lit...)
		} else if p.col < len(vals) && vals[p.col].kind == 't' {
			u = append(u, vals[p.col].data...)
		}
	}
	return AppendJSONStringBytes(dst, u)
}

// appendTimestamp writes t as Unix seconds with microseconds, a JSON number.
func appendTimestamp(dst []byte, t time.Time) []byte {
	us := t.UnixMicro()
	sec, frac := us/1e6, us%1e6
	if frac < 0 {
		sec--
		frac += 1e6
	}
	dst = strconv.AppendInt(dst, sec, 10)
	dst = append(dst, '.')
	f := strconv.AppendInt(nil, frac, 10)
	for i := len(f); i < 6; i++ {
		dst = append(dst, '0')
	}
	return append(dst, f...)
}

// change is one row change to render: the table version it belongs to, its
// event, its row images and the values looked up for it.
type change struct {
	rel      *relation
	event    string
	vals     row         // the new row; for a delete the deleted row (or its keys)
	keysOnly bool        // vals holds only the replica identity columns
	extra    []lookupVal // relation fields, then computed fields (rel.plan)
	// old is the row before an UPDATE (or, coalesced, before the
	// transaction), kept for templates, conditions and snapshots; oldType is
	// pgoutput's 'O' when old is the whole row, 'K' for keys only, oldNone
	// for an object created in the same transaction.
	old     row
	oldType uint8
}

// netboxBody renders the default NetBox v2 webhook body of a change
// committed at committed.
func (rd *renderer) netboxBody(c *change, committed time.Time) string {
	b := rd.buf[:0]
	b = append(b, `{"event":"`...)
	b = append(b, c.event...)
	b = append(b, `","signal_received_timestamp":`...)
	b = appendTimestamp(b, committed)
	b = append(b, `,"model":`...)
	b = AppendJSONString(b, c.rel.model.Model)
	b = append(b, `,"data":`...)
	b = rd.appendData(b, c.rel, c.vals, c.keysOnly, c.extra)
	b = append(b, '}')
	rd.buf = b
	return string(b)
}

// objectKey is the row's primary key as text: the value itself for a
// one-column key, a JSON array of the values' text otherwise.
func objectKey(rel *relation, vals row) string {
	if len(rel.pkCols) == 1 {
		i := rel.pkCols[0]
		if i < len(vals) {
			return string(vals[i].data)
		}
		return ""
	}
	b := []byte{'['}
	for n, i := range rel.pkCols {
		if n > 0 {
			b = append(b, ',')
		}
		if i < len(vals) && vals[i].kind == 't' {
			b = AppendJSONStringBytes(b, vals[i].data)
		} else {
			b = append(b, "null"...)
		}
	}
	return string(append(b, ']'))
}

// copyRow copies a row's values out of the message buffer, into one block.
func copyRow(r row) row {
	if r == nil {
		return nil
	}
	n := 0
	for _, v := range r {
		n += len(v.data)
	}
	buf := make([]byte, 0, n)
	out := make(row, len(r))
	for i, v := range r {
		out[i].kind = v.kind
		if v.data != nil {
			start := len(buf)
			buf = append(buf, v.data...)
			out[i].data = buf[start:len(buf):len(buf)]
		}
	}
	return out
}

// hasUnchanged reports whether vals holds unchanged TOAST values ('u').
func hasUnchanged(vals row) bool {
	for _, v := range vals {
		if v.kind == 'u' {
			return true
		}
	}
	return false
}
