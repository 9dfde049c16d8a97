package cdc

import (
	"encoding/binary"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/internal/config"
)

// tupleBytes encodes pgoutput TupleData: values nil = NULL, "\x00u" = unchanged TOAST.
func tupleBytes(vals ...*string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(vals)))
	for _, v := range vals {
		switch {
		case v == nil:
			b = append(b, 'n')
		case *v == "\x00u":
			b = append(b, 'u')
		default:
			b = append(b, 't')
			b = binary.BigEndian.AppendUint32(b, uint32(len(*v)))
			b = append(b, *v...)
		}
	}
	return b
}

func sp(s string) *string { return &s }

func insertMsg(rel uint32, vals ...*string) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'I'}, rel)
	return append(append(b, 'N'), tupleBytes(vals...)...)
}

// fuzzRelation is a relation of five columns of assorted types.
func fuzzRelation() *payload.Relation {
	m := &pglogrepl.RelationMessage{RelationID: 16400, Namespace: "public", RelationName: "t", ReplicaIdentity: 'd',
		Columns: []*pglogrepl.RelationMessageColumn{
			{Flags: 1, Name: "id", DataType: 20}, {Name: "name", DataType: 25}, {Name: "tags", DataType: 1009},
			{Name: "at", DataType: 1184}, {Name: "amount", DataType: 1700},
		}}
	t := describe(m)
	t.PrimaryKey = []string{"id"}
	return payload.NewRelation(t, &config.Model{Model: "T", URL: "/t/{id}/", Choices: map[string]config.Choices{"name": {"a": "A"}}})
}

// FuzzDecodeChange feeds arbitrary pgoutput bytes through the same path a
// received change takes: parse (panics recovered), tuple check, render. It
// must never panic, and every rendered body must be valid JSON.
func FuzzDecodeChange(f *testing.F) {
	f.Add(insertMsg(16400, sp("1"), sp("a"), sp(`{x,"y z",NULL}`), sp("2024-01-02 03:04:05+00"), sp("1.50")))
	f.Add(insertMsg(16400, sp("2"), nil, sp("\x00u"), sp("infinity"), sp("NaN")))
	f.Add(insertMsg(16400, sp("3")))
	f.Add([]byte{'U', 0, 0, 0x40, 0x10, 'N', 0, 1, 'n'})
	f.Add([]byte{'D', 0, 0, 0x40, 0x10, 'K', 0, 5, 't', 0, 0, 0, 1, '9', 'n', 'n', 'n', 'n'})
	f.Add([]byte{'B', 0, 0, 0, 0, 0, 0, 0, 1})
	f.Add([]byte{'R', 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		rel := fuzzRelation()
		rd := payload.Renderer{}
		msg, err := parseMessage(data)
		if err != nil {
			return
		}
		var tuple *pglogrepl.TupleData
		keysOnly := false
		switch m := msg.(type) {
		case *pglogrepl.InsertMessage:
			tuple = m.Tuple
		case *pglogrepl.UpdateMessage:
			tuple = m.NewTuple
		case *pglogrepl.DeleteMessage:
			tuple, keysOnly = m.OldTuple, m.OldTupleType == 'K'
		default:
			return
		}
		vals, err := tupleRow(tuple, len(rel.Cols))
		if err != nil {
			return
		}
		c := payload.Change{Rel: rel, Event: payload.EventCreated, Vals: vals, KeysOnly: keysOnly}
		body := rd.NetboxBody(&c, time.Unix(1700000000, 123456000))
		if !json.Valid([]byte(body)) {
			t.Fatalf("invalid JSON body: %s", body)
		}
		_ = payload.ObjectKey(rel, vals)
	})
}

func TestParseMessageMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"truncated insert", []byte{'I', 0, 0}},
		{"tuple longer than message", []byte{'I', 0, 0, 0x40, 0x10, 'N', 0, 9, 't', 0, 0, 0, 99}},
		{"unknown type", []byte{'?'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseMessage(tc.data); err == nil {
				t.Error("no error for malformed message")
			}
		})
	}
}

func TestTimestampAndObjectKey(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		{time.Unix(1508769597, 123456000), "1508769597.123456"},
		{time.Unix(1508769597, 0), "1508769597.000000"},
		{time.Unix(1, 5000), "1.000005"},
	} {
		if got := string(payload.AppendTimestamp(nil, tc.t)); got != tc.want {
			t.Errorf("appendTimestamp(%v) = %s, want %s", tc.t, got, tc.want)
		}
	}
	// The netbox-v4 envelope's timestamp: Python's isoformat.
	for _, tc := range []struct {
		t    time.Time
		want string
	}{
		{time.Date(2024, 1, 2, 3, 4, 5, 221080000, time.UTC), `"2024-01-02T03:04:05.221080+00:00"`},
		{time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), `"2024-01-02T03:04:05+00:00"`},
		{time.Date(2024, 1, 2, 4, 4, 5, 999, time.FixedZone("x", 3600)), `"2024-01-02T03:04:05+00:00"`},
	} {
		if got := string(payload.AppendISOTime(nil, tc.t)); got != tc.want {
			t.Errorf("appendISOTime(%v) = %s, want %s", tc.t, got, tc.want)
		}
	}
	m := &pglogrepl.RelationMessage{Columns: []*pglogrepl.RelationMessageColumn{{Name: "a", DataType: 23}, {Name: "b", DataType: 25}, {Name: "c", DataType: 25}}}
	desc := describe(m)
	desc.PrimaryKey = []string{"a", "b"}
	rel := payload.NewRelation(desc, &config.Model{Model: "X"})
	vals := payload.Row{{Kind: 't', Data: []byte("1")}, {Kind: 't', Data: []byte(`x"y`)}, {Kind: 'n'}}
	if got := payload.ObjectKey(rel, vals); got != `["1","x\"y"]` {
		t.Errorf("composite key = %s", got)
	}
}
