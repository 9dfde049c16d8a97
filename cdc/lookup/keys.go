package lookup

import (
	"strconv"

	"github.com/walhook/walhook/cdc/payload"
)

// keySet collects the distinct key tuples of a chunk, as text arrays (one
// per tuple position; nil elements are NULL): the parameters of a query
// that unnests them WITH ORDINALITY, so that its rows name their tuple.
type keySet struct {
	idx  map[string]int
	keys []string // the encoded tuples, by index
	cols [][]*string
	buf  []byte
}

func newKeySet(width int) *keySet {
	return &keySet{idx: map[string]int{}, cols: make([][]*string, width)}
}

// appendKey appends the encoding of the tuple vals[cols] to buf: for each
// value 't', its length, ':' and its text, or 'n' for NULL (and an
// unchanged TOAST value, which has no text here).
func appendKey(buf []byte, vals payload.Row, cols []int) []byte {
	for _, c := range cols {
		v := vals[c]
		if v.Kind != 't' {
			buf = append(buf, 'n')
			continue
		}
		buf = append(buf, 't')
		buf = strconv.AppendInt(buf, int64(len(v.Data)), 10)
		buf = append(buf, ':')
		buf = append(buf, v.Data...)
	}
	return buf
}

// add returns the index of the tuple of vals at positions cols.
func (ks *keySet) add(vals payload.Row, cols []int) int {
	ks.buf = appendKey(ks.buf[:0], vals, cols)
	if i, ok := ks.idx[string(ks.buf)]; ok {
		return i
	}
	i := len(ks.keys)
	k := string(ks.buf)
	ks.idx[k] = i
	ks.keys = append(ks.keys, k)
	for n, c := range cols {
		var p *string
		if vals[c].Kind == 't' {
			s := string(vals[c].Data)
			p = &s
		}
		ks.cols[n] = append(ks.cols[n], p)
	}
	return i
}

func (ks *keySet) len() int { return len(ks.keys) }

func (ks *keySet) args() []any {
	out := make([]any, len(ks.cols))
	for i, c := range ks.cols {
		out[i] = c
	}
	return out
}

// ordinal returns the tuple index a result row names in its first value
// (the ordinality, from 1), or false when it names none of n tuples.
func ordinal(vals [][]byte, n int) (int, bool) {
	i, err := strconv.Atoi(string(vals[0]))
	if err != nil || i < 1 || i > n {
		return 0, false
	}
	return i - 1, true
}
