package payload

import (
	"strings"
	"time"

	"github.com/walhook/walhook/internal/config"
)

// Payload formats of a webhook (config format). Their names are kept by
// internal/config, which checks them at load and is below this package.
const (
	FormatNetbox   = config.FormatNetbox   // NetBox v2 shape (SPEC §3)
	FormatNetboxV4 = config.FormatNetboxV4 // NetBox v4 shape with snapshots
)

// AppendISOTime writes t as a JSON string in UTC, ISO 8601 with "+00:00",
// as NetBox (Python's datetime.isoformat) writes it: six fractional digits
// when the microseconds are not zero ("2024-01-02T03:04:05.120000+00:00"),
// none when they are ("2024-01-02T03:04:05+00:00").
func AppendISOTime(dst []byte, t time.Time) []byte {
	t = t.UTC().Truncate(time.Microsecond)
	dst = append(dst, '"')
	if t.Nanosecond() == 0 {
		dst = t.AppendFormat(dst, "2006-01-02T15:04:05")
	} else {
		dst = t.AppendFormat(dst, "2006-01-02T15:04:05.000000")
	}
	return append(dst, `+00:00"`...)
}

// OldNone is the oldType of a coalesced delete of an object created in the
// same transaction: it has no prechange snapshot.
const OldNone uint8 = 'N'

// appendSnapshot renders a snapshot: the row in the form of NetBox's
// serialize_object (see renderer.snapshot and config.Snapshot) with the
// model's snapshot computed fields from ex. A nil row renders null.
func (rd *Renderer) appendSnapshot(dst []byte, rel *Relation, vals Row, keysOnly bool, ex []LookupVal) []byte {
	if vals == nil {
		return append(dst, "null"...)
	}
	rd.snapshot = true
	dst = rd.AppendData(dst, rel, vals, keysOnly, ex)
	rd.snapshot = false
	return dst
}

// appendSnapshotValue renders a column value in a snapshot as Django's JSON
// encoder writes a model field: timestamps in ISO 8601 with milliseconds
// ("2021-12-30T15:45:37.458Z"), numeric (Python's Decimal) as a string of its
// digits, everything else as in "data".
func appendSnapshotValue(dst []byte, oid uint32, text []byte, resolve TypeResolver) []byte {
	switch oid {
	case vtNumeric:
		return AppendJSONStringBytes(dst, text)
	case vtTimestamptz, vtTimestamp:
		start := len(dst)
		dst = AppendValue(dst, oid, text, resolve)
		// "...T15:45:37.458000Z": keep three of the six fractional digits.
		if dot := lastIndexByte(dst[start:], '.'); dot >= 0 && start+dot+7 <= len(dst) && hasDigits(dst, start+dot+1, 6) {
			i := start + dot + 4
			dst = append(dst[:i], dst[i+3:]...)
		}
		return dst
	}
	return AppendValue(dst, oid, text, resolve)
}

func lastIndexByte(b []byte, c byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == c {
			return i
		}
	}
	return -1
}

// NetboxV4Body renders the NetBox v4 webhook body of a change, with the keys
// of NetBox 4.0-4.3 (event, timestamp, model, username, request_id, data,
// snapshots) and 4.4's object_type:
//
//	{"event", "timestamp", "object_type", "model", "username": null,
//	 "request_id": null, "data", "snapshots": {"prechange", "postchange"}}
//
// username and request_id are null: a change read from the WAL carries no
// NetBox user or request.
//
// data is as in the netbox format (with the looked-up fields). prechange
// is the old row image: for an update only when it is complete (oldType
// 'O', REPLICA IDENTITY FULL), else null; for a delete old when given with
// oldType 'O' (a coalesced delete: the row before the transaction), null
// with oldType oldNone (created in the same transaction), else the deleted
// row (keys only without FULL); null for a create. postchange is the new
// row, null for a delete.
func (rd *Renderer) NetboxV4Body(c *Change, committed time.Time, objectType string) string {
	event, rel, vals, keysOnly, ex, old, oldType := c.Event, c.Rel, c.Vals, c.KeysOnly, c.Extra, c.Old, c.OldType
	b := rd.buf[:0]
	b = append(b, `{"event":"`...)
	b = append(b, event...)
	b = append(b, `","timestamp":`...)
	b = AppendISOTime(b, committed)
	b = append(b, `,"object_type":`...)
	b = AppendJSONString(b, objectType)
	b = append(b, `,"model":`...)
	b = AppendJSONString(b, v4ModelName(objectType, rel.Model.Model))
	b = append(b, `,"username":null,"request_id":null,"data":`...)
	b = rd.AppendData(b, rel, vals, keysOnly, ex)
	b = append(b, `,"snapshots":{"prechange":`...)
	switch event {
	case EventDeleted:
		switch {
		case oldType == OldNone:
			b = append(b, "null"...)
		case oldType == 'O' && old != nil:
			b = rd.appendSnapshot(b, rel, old, false, ex)
		default:
			b = rd.appendSnapshot(b, rel, vals, keysOnly, ex)
		}
		b = append(b, `,"postchange":null}}`...)
	case EventUpdated:
		if oldType != 'O' {
			old = nil
		}
		b = rd.appendSnapshot(b, rel, old, false, ex)
		b = append(b, `,"postchange":`...)
		b = rd.appendSnapshot(b, rel, vals, false, ex)
		b = append(b, "}}"...)
	default:
		b = append(b, `null,"postchange":`...)
		b = rd.appendSnapshot(b, rel, vals, false, ex)
		b = append(b, "}}"...)
	}
	rd.buf = b
	return string(b)
}

// v4ModelName is the "model" of a netbox-v4 body: the lowercase model name
// as NetBox sends it (its ContentType's model, "site" for "dcim.site"),
// from the object type, else the configured model name in lower case.
func v4ModelName(objectType, model string) string {
	if i := strings.LastIndexByte(objectType, '.'); i >= 0 && i+1 < len(objectType) {
		return objectType[i+1:]
	}
	return strings.ToLower(model)
}
