package cdc

import "time"

// Payload formats of a webhook (config format).
const (
	FormatNetbox   = "netbox"    // NetBox v2 shape (SPEC §3)
	FormatNetboxV4 = "netbox-v4" // NetBox v4 shape with snapshots
)

// appendISOTime writes t as a JSON string in UTC, ISO 8601 with "+00:00",
// as NetBox (Python's datetime.isoformat) writes it: six fractional digits
// when the microseconds are not zero ("2024-01-02T03:04:05.120000+00:00"),
// none when they are ("2024-01-02T03:04:05+00:00").
func appendISOTime(dst []byte, t time.Time) []byte {
	t = t.UTC().Truncate(time.Microsecond)
	dst = append(dst, '"')
	if t.Nanosecond() == 0 {
		dst = t.AppendFormat(dst, "2006-01-02T15:04:05")
	} else {
		dst = t.AppendFormat(dst, "2006-01-02T15:04:05.000000")
	}
	return append(dst, `+00:00"`...)
}

// oldNone is the oldType of a coalesced delete of an object created in the
// same transaction: it has no prechange snapshot.
const oldNone uint8 = 'N'

// appendSnapshot renders a snapshot: the row with the model's column
// options (exclude, rename, url, choices) but without relation or computed
// lookups; foreign keys render as their raw values. A nil row renders null.
func (rd *renderer) appendSnapshot(dst []byte, rel *relation, vals row, keysOnly bool) []byte {
	if vals == nil {
		return append(dst, "null"...)
	}
	rd.rawFK = true
	dst = rd.appendData(dst, rel, vals, keysOnly, nil)
	rd.rawFK = false
	return dst
}

// netboxV4Body renders the NetBox v4 webhook body of a change:
//
//	{"event", "timestamp", "object_type", "username": null, "request_id": null,
//	 "data", "snapshots": {"prechange", "postchange"}}
//
// data is as in the netbox format (with the looked-up fields ex). prechange
// is the old row image: for an update only when it is complete (oldType
// 'O', REPLICA IDENTITY FULL), else null; for a delete old when given with
// oldType 'O' (a coalesced delete: the row before the transaction), null
// with oldType oldNone (created in the same transaction), else the deleted
// row (keys only without FULL); null for a create. postchange is the new
// row, null for a delete.
func (rd *renderer) netboxV4Body(event string, committed time.Time, objectType string, rel *relation, vals row, keysOnly bool, ex []lookupVal, old row, oldType uint8) string {
	b := rd.buf[:0]
	b = append(b, `{"event":"`...)
	b = append(b, event...)
	b = append(b, `","timestamp":`...)
	b = appendISOTime(b, committed)
	b = append(b, `,"object_type":`...)
	b = AppendJSONString(b, objectType)
	b = append(b, `,"username":null,"request_id":null,"data":`...)
	b = rd.appendData(b, rel, vals, keysOnly, ex)
	b = append(b, `,"snapshots":{"prechange":`...)
	switch event {
	case EventDeleted:
		switch {
		case oldType == oldNone:
			b = append(b, "null"...)
		case oldType == 'O' && old != nil:
			b = rd.appendSnapshot(b, rel, old, false)
		default:
			b = rd.appendSnapshot(b, rel, vals, keysOnly)
		}
		b = append(b, `,"postchange":null}}`...)
	case EventUpdated:
		if oldType != 'O' {
			old = nil
		}
		b = rd.appendSnapshot(b, rel, old, false)
		b = append(b, `,"postchange":`...)
		b = rd.appendSnapshot(b, rel, vals, false)
		b = append(b, "}}"...)
	default:
		b = append(b, `null,"postchange":`...)
		b = rd.appendSnapshot(b, rel, vals, false)
		b = append(b, "}}"...)
	}
	rd.buf = b
	return string(b)
}
