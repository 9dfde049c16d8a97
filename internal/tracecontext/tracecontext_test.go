package tracecontext

import (
	"errors"
	"regexp"
	"testing"
)

// traceparentRE is the version-00 ABNF of W3C Trace Context §3.2.2.
var traceparentRE = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)

func TestFormatParse(t *testing.T) {
	for id := int64(1); id <= 1000; id++ {
		tr := ForDelivery("inventory", id)
		sp := NewSpanID()
		v := Format(tr, sp, FlagSampled)
		if !traceparentRE.MatchString(v) {
			t.Fatalf("Format = %q: not a version-00 traceparent", v)
		}
		gt, gs, gf, err := Parse(v)
		if err != nil || gt != tr || gs != sp || gf != FlagSampled {
			t.Fatalf("Parse(%q) = %s %s %02x %v", v, gt, gs, gf, err)
		}
	}
	if a, b := ForDelivery("inventory", 7), ForDelivery("inventory", 7); a != b {
		t.Error("ForDelivery is not deterministic")
	}
	if ForDelivery("inventory", 7) == ForDelivery("billing", 7) || ForDelivery("inventory", 7) == ForDelivery("inventory", 8) {
		t.Error("ForDelivery collides")
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		name, v string
		wantErr bool
	}{
		{name: "spec example", v: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
		{name: "not sampled", v: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"},
		{name: "future version with more fields", v: "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds"},
		{name: "version ff", v: "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", wantErr: true},
		{name: "version 00 too long", v: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", wantErr: true},
		{name: "upper case", v: "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", wantErr: true},
		{name: "zero trace id", v: "00-00000000000000000000000000000000-00f067aa0ba902b7-01", wantErr: true},
		{name: "zero parent id", v: "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", wantErr: true},
		{name: "short", v: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", wantErr: true},
		{name: "bad separator", v: "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", wantErr: true},
		{name: "non-hex", v: "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := Parse(tc.v)
			if tc.wantErr != (err != nil) || (err != nil && !errors.Is(err, ErrInvalid)) {
				t.Errorf("Parse(%q) error = %v, wantErr %v", tc.v, err, tc.wantErr)
			}
		})
	}
}
