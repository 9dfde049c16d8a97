package payload

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

// TupleValue is one column of a decoded row: kind is pgoutput's 'n' (NULL),
// 't' (text), 'u' (unchanged TOAST, not sent) or 'b' (binary).
type TupleValue struct {
	Kind byte
	Data []byte
}

// Row is a change's column values in the relation's column order.
type Row []TupleValue

// Renderer renders rows to JSON. It reuses its buffer between calls and is
// owned by one goroutine.
type Renderer struct {
	buf     []byte
	Resolve TypeResolver
	// snapshot renders the snapshot form (format netbox-v4, as NetBox's
	// serialize_object): foreign-key columns that have a relation as their
	// raw value, a one-column key under the relation's field name
	// ("region": 51), the columns of a composite key under their own names;
	// raw choice values; no url; timestamps and numerics as Django's JSON
	// encoder writes them; the model's snapshot options.
	snapshot bool
}

// AppendData renders the "data" object of a row. keysOnly renders only
// replica identity columns (a DELETE whose old row carries keys only). ex
// holds the looked-up relation fields, then the computed fields, of a model
// that has them (rel.plan): a field whose value is not present is left out,
// and computed fields are rendered only when ex has them (not for .old).
func (rd *Renderer) AppendData(dst []byte, rel *Relation, vals Row, keysOnly bool, ex []LookupVal) []byte {
	dst = append(dst, '{')
	first := true
	lastPK := -1
	if len(rel.urlParts) > 0 && len(rel.PKCols) > 0 {
		lastPK = rel.PKCols[len(rel.PKCols)-1]
	}
	urlDone := len(rel.urlParts) == 0 || rd.snapshot
	for i := range rel.Cols {
		c := &rel.Cols[i]
		excluded := c.exclude
		if rd.snapshot && rel.Model != nil && rel.Model.Snapshot != nil {
			excluded = c.snapExclude
		}
		skip := excluded || (c.hidden && !rd.snapshot) || (keysOnly && !c.Key) || i >= len(vals)
		name := c.outName
		if !skip && c.rel > 0 && rd.snapshot {
			if rl := rel.Plan.Rels[c.rel-1]; len(rl.FK) == 1 {
				name = rl.field
			}
		} else if !skip && c.rel > 0 {
			if n := c.rel - 1; n < len(ex) && ex[n].Present {
				if !first {
					dst = append(dst, ',')
				}
				first = false
				dst = AppendJSONString(dst, rel.Plan.Rels[n].field)
				dst = append(dst, ':')
				dst = append(dst, ex[n].JSON...)
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
		case v.Kind == 'n' || v.Kind == 'u':
			dst = append(dst, "null"...)
		case rd.snapshot:
			dst = appendSnapshotValue(dst, c.OID, v.Data, rd.Resolve)
		case c.choices != nil && len(v.Data) == 0:
			// An empty choice renders as null, as NetBox's ChoiceField does.
			dst = append(dst, "null"...)
		case c.choices != nil:
			label, ok := c.choices[string(v.Data)]
			if !ok {
				label = string(v.Data)
			}
			dst = append(dst, `{"value":`...)
			dst = AppendValue(dst, c.OID, v.Data, rd.Resolve)
			dst = append(dst, `,"label":`...)
			dst = AppendJSONString(dst, label)
			dst = append(dst, '}')
		default:
			dst = AppendValue(dst, c.OID, v.Data, rd.Resolve)
		}
		if i == lastPK && !urlDone {
			dst, first = rd.appendURL(dst, rel, vals, first), false
			urlDone = true
		}
	}
	if !urlDone {
		dst, first = rd.appendURL(dst, rel, vals, first), false
	}
	if rel.Plan != nil {
		base := len(rel.Plan.Rels)
		for j, cl := range rel.Plan.Comps {
			if cl.Snap != rd.snapshot || base+j >= len(ex) || !ex[base+j].Present {
				continue
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = AppendJSONString(dst, cl.Name)
			dst = append(dst, ':')
			dst = append(dst, ex[base+j].JSON...)
		}
	}
	return append(dst, '}')
}

func (rd *Renderer) appendURL(dst []byte, rel *Relation, vals Row, first bool) []byte {
	if !first {
		dst = append(dst, ',')
	}
	dst = append(dst, `"url":`...)
	var u []byte
	for _, p := range rel.urlParts {
		if p.col < 0 {
			u = append(u, p.lit...)
		} else if p.col < len(vals) && vals[p.col].Kind == 't' {
			u = append(u, vals[p.col].Data...)
		}
	}
	return AppendJSONStringBytes(dst, u)
}

// AppendTimestamp writes t as Unix seconds with microseconds, a JSON number.
func AppendTimestamp(dst []byte, t time.Time) []byte {
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

// Change is one row change to render: the table version it belongs to, its
// event, its row images and the values looked up for it.
type Change struct {
	Rel      *Relation
	Event    string
	Vals     Row         // the new row; for a delete the deleted row (or its keys)
	KeysOnly bool        // vals holds only the replica identity columns
	Extra    []LookupVal // relation fields, then computed fields (rel.plan)
	// Old is the row before an UPDATE (or, coalesced, before the
	// transaction), kept for templates, conditions and snapshots; oldType is
	// pgoutput's 'O' when old is the whole row, 'K' for keys only, oldNone
	// for an object created in the same transaction.
	Old     Row
	OldType uint8
}

// NetboxBody renders the default NetBox v2 webhook body of a change
// committed at committed.
func (rd *Renderer) NetboxBody(c *Change, committed time.Time) string {
	b := rd.buf[:0]
	b = append(b, `{"event":"`...)
	b = append(b, c.Event...)
	b = append(b, `","signal_received_timestamp":`...)
	b = AppendTimestamp(b, committed)
	b = append(b, `,"model":`...)
	b = AppendJSONString(b, c.Rel.Model.Model)
	b = append(b, `,"data":`...)
	b = rd.AppendData(b, c.Rel, c.Vals, c.KeysOnly, c.Extra)
	b = append(b, '}')
	rd.buf = b
	return string(b)
}

// ObjectKey is the row's primary key as text: the value itself for a
// one-column key, a JSON array of the values' text otherwise.
func ObjectKey(rel *Relation, vals Row) string {
	if len(rel.PKCols) == 1 {
		i := rel.PKCols[0]
		if i < len(vals) {
			return string(vals[i].Data)
		}
		return ""
	}
	b := []byte{'['}
	for n, i := range rel.PKCols {
		if n > 0 {
			b = append(b, ',')
		}
		if i < len(vals) && vals[i].Kind == 't' {
			b = AppendJSONStringBytes(b, vals[i].Data)
		} else {
			b = append(b, "null"...)
		}
	}
	return string(append(b, ']'))
}

// CopyRow copies a row's values out of the message buffer, into one block.
func CopyRow(r Row) Row {
	if r == nil {
		return nil
	}
	n := 0
	for _, v := range r {
		n += len(v.Data)
	}
	buf := make([]byte, 0, n)
	out := make(Row, len(r))
	for i, v := range r {
		out[i].Kind = v.Kind
		if v.Data != nil {
			start := len(buf)
			buf = append(buf, v.Data...)
			out[i].Data = buf[start:len(buf):len(buf)]
		}
	}
	return out
}

// HasUnchanged reports whether vals holds unchanged TOAST values ('u').
func HasUnchanged(vals Row) bool {
	for _, v := range vals {
		if v.Kind == 'u' {
			return true
		}
	}
	return false
}

// LookupVal is a looked-up field of one change: present false leaves the
// field out (its lookup failed).
type LookupVal struct {
	Present bool
	JSON    []byte
}

// JSONNull is the JSON text of a missing related row.
var JSONNull = []byte("null")

// Render appends the nested object of a related row; vals are the selected
// columns in text format.
func (rl *RelLookup) Render(dst []byte, vals [][]byte, resolve TypeResolver) []byte {
	dst = append(dst, '{')
	first := true
	sep := func() {
		if !first {
			dst = append(dst, ',')
		}
		first = false
	}
	url := func() {
		sep()
		dst = append(dst, `"url":`...)
		var u []byte
		for _, p := range rl.urlParts {
			if p.col < 0 {
				u = append(u, p.lit...)
			} else if vals[p.col] != nil {
				u = append(u, vals[p.col]...)
			}
		}
		dst = AppendJSONStringBytes(dst, u)
	}
	for i, o := range rl.out {
		if i == rl.urlAt {
			url()
		}
		sep()
		dst = AppendJSONString(dst, o.name)
		dst = append(dst, ':')
		if v := vals[o.sel]; v == nil {
			dst = append(dst, "null"...)
		} else {
			dst = AppendValue(dst, rl.Sel[o.sel], v, resolve)
		}
	}
	if rl.urlAt >= len(rl.out) {
		url()
	}
	return append(dst, '}')
}
