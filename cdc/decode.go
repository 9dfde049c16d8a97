package cdc

import (
	"encoding/binary"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/walhook/walhook/cdc/payload"
)

// parseMessage decodes one pgoutput message. pglogrepl has no bounds checks,
// so malformed input panics inside it; that panic is turned into an error
// here, at the boundary.
func parseMessage(data []byte) (msg pglogrepl.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, fmt.Errorf("malformed pgoutput message (%d bytes, type %q): %v", len(data), firstByte(data), r)
		}
	}()
	if len(data) == 0 {
		return nil, fmt.Errorf("empty pgoutput message")
	}
	if err := checkTuples(data); err != nil {
		return nil, err
	}
	msg, err = pglogrepl.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("parse pgoutput message: %w", err)
	}
	return msg, nil
}

// checkTuples verifies the length fields of Insert, Update and Delete
// messages before pglogrepl trusts them (a bad length would otherwise make it
// allocate or slice out of range).
func checkTuples(data []byte) error {
	switch data[0] {
	case 'I', 'U', 'D':
	case 'T': // relation count, options, relation ids
		if len(data) < 6 || int64(binary.BigEndian.Uint32(data[1:]))*4 != int64(len(data)-6) {
			return fmt.Errorf("malformed pgoutput TRUNCATE message (%d bytes)", len(data))
		}
		return nil
	default:
		return nil
	}
	i := 5 // type byte + relation id
	for tuples := 0; ; tuples++ {
		if i >= len(data) {
			if tuples == 0 {
				return fmt.Errorf("malformed pgoutput %q message: no tuple", data[0])
			}
			return nil
		}
		switch data[i] {
		case 'K', 'O', 'N':
		default:
			return fmt.Errorf("malformed pgoutput %q message: tuple marker %q", data[0], data[i])
		}
		i++
		if i+2 > len(data) {
			return fmt.Errorf("malformed pgoutput %q message: truncated tuple", data[0])
		}
		n := int(binary.BigEndian.Uint16(data[i:]))
		i += 2
		for c := 0; c < n; c++ {
			if i >= len(data) {
				return fmt.Errorf("malformed pgoutput %q message: truncated tuple", data[0])
			}
			kind := data[i]
			i++
			if kind == 't' || kind == 'b' {
				if i+4 > len(data) {
					return fmt.Errorf("malformed pgoutput %q message: truncated value", data[0])
				}
				l := int(binary.BigEndian.Uint32(data[i:]))
				i += 4
				if l < 0 || l > len(data)-i {
					return fmt.Errorf("malformed pgoutput %q message: value length %d beyond the message", data[0], l)
				}
				i += l
			}
		}
	}
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// tupleRow converts a pgoutput tuple into a row. The values point into the
// message buffer, so a row must be rendered before the next receive.
func tupleRow(t *pglogrepl.TupleData, ncols int) (payload.Row, error) {
	if t == nil {
		return nil, fmt.Errorf("change without a tuple")
	}
	if len(t.Columns) != ncols {
		return nil, fmt.Errorf("tuple has %d columns, relation has %d", len(t.Columns), ncols)
	}
	r := make(payload.Row, ncols)
	for i, c := range t.Columns {
		switch c.DataType {
		case 'n', 't', 'u':
			r[i] = payload.TupleValue{Kind: c.DataType, Data: c.Data}
		case 'b':
			return nil, fmt.Errorf("column %d in binary format, which walhook does not request", i)
		default:
			return nil, fmt.Errorf("column %d has unknown kind %q", i, c.DataType)
		}
	}
	return r, nil
}
