package cdc

import (
	"fmt"

	"github.com/jackc/pglogrepl"
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
	msg, err = pglogrepl.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("parse pgoutput message: %w", err)
	}
	return msg, nil
}

func firstByte(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

// tupleRow converts a pgoutput tuple into a row. The values point into the
// message buffer, so a row must be rendered before the next receive.
func tupleRow(t *pglogrepl.TupleData, ncols int) (row, error) {
	if t == nil {
		return nil, fmt.Errorf("change without a tuple")
	}
	if len(t.Columns) != ncols {
		return nil, fmt.Errorf("tuple has %d columns, relation has %d", len(t.Columns), ncols)
	}
	r := make(row, ncols)
	for i, c := range t.Columns {
		switch c.DataType {
		case 'n', 't', 'u':
			r[i] = tupleValue{kind: c.DataType, data: c.Data}
		case 'b':
			return nil, fmt.Errorf("column %d in binary format, which walhook does not request", i)
		default:
			return nil, fmt.Errorf("column %d has unknown kind %q", i, c.DataType)
		}
	}
	return r, nil
}
