// Package tracecontext builds and parses W3C Trace Context traceparent
// headers (https://www.w3.org/TR/trace-context/). Every delivery is one
// trace: its trace id is derived from the webhook name and the delivery id,
// so that it is the same for every attempt and can be shown for any
// delivery row without being stored; each attempt is a span with an id of
// its own.
package tracecontext

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strconv"
)

// TraceID is a 16-byte trace id.
type TraceID [16]byte

// SpanID is an 8-byte span (parent) id.
type SpanID [8]byte

// String is the id as 32 lowercase hex digits.
func (t TraceID) String() string { return hex.EncodeToString(t[:]) }

// String is the id as 16 lowercase hex digits.
func (s SpanID) String() string { return hex.EncodeToString(s[:]) }

// ForDelivery is the trace id of a delivery: the first 16 bytes of
// SHA-256("walhook\x00" + webhook + "\x00" + id). It is never all zeros
// (the one invalid value): that hash is replaced by one with a 1 in its
// last byte.
func ForDelivery(webhook string, id int64) TraceID {
	var arr [128]byte // on the stack for names up to ~100 bytes
	buf := arr[:0]
	buf = append(buf, "walhook\x00"...)
	buf = append(buf, webhook...)
	buf = append(buf, 0)
	buf = strconv.AppendInt(buf, id, 10)
	sum := sha256.Sum256(buf)
	var t TraceID
	copy(t[:], sum[:16])
	if t == (TraceID{}) {
		t[15] = 1
	}
	return t
}

// NewSpanID returns a random, non-zero span id.
func NewSpanID() SpanID {
	var s SpanID
	for s == (SpanID{}) {
		binary.BigEndian.PutUint64(s[:], rand.Uint64())
	}
	return s
}

// FlagSampled is the sampled bit of trace-flags.
const FlagSampled = 0x01

// Format returns a version-00 traceparent header value:
// 00-<trace id>-<span id>-<flags>.
func Format(t TraceID, s SpanID, flags byte) string {
	var b [55]byte
	b[0], b[1], b[2] = '0', '0', '-'
	hex.Encode(b[3:35], t[:])
	b[35] = '-'
	hex.Encode(b[36:52], s[:])
	b[52] = '-'
	hex.Encode(b[53:55], []byte{flags})
	return string(b[:])
}

// ErrInvalid is returned by Parse for a value that is not a valid
// traceparent.
var ErrInvalid = errors.New("invalid traceparent")

// Parse reads a traceparent value as a receiver must: two lowercase hex
// digits of version (ff is invalid), then trace id, parent id and flags,
// each lowercase hex, separated by dashes; all-zero ids are invalid.
// Version 00 must be exactly 55 characters; later versions may append
// fields after a dash.
func Parse(v string) (TraceID, SpanID, byte, error) {
	var t TraceID
	var s SpanID
	if len(v) < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return t, s, 0, ErrInvalid
	}
	if !lowerHex(v[:2]) || !lowerHex(v[3:35]) || !lowerHex(v[36:52]) || !lowerHex(v[53:55]) {
		return t, s, 0, ErrInvalid
	}
	switch {
	case v[:2] == "ff":
		return t, s, 0, ErrInvalid
	case v[:2] == "00" && len(v) != 55:
		return t, s, 0, ErrInvalid
	case len(v) > 55 && v[55] != '-':
		return t, s, 0, ErrInvalid
	}
	var f [1]byte
	_, _ = hex.Decode(t[:], []byte(v[3:35]))
	_, _ = hex.Decode(s[:], []byte(v[36:52]))
	_, _ = hex.Decode(f[:], []byte(v[53:55]))
	if t == (TraceID{}) || s == (SpanID{}) {
		return t, s, 0, ErrInvalid
	}
	return t, s, f[0], nil
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
