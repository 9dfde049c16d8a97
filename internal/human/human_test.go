package human

import (
	"testing"
	"time"
)

func TestDuration(t *testing.T) {
	for _, tc := range []struct {
		in   time.Duration
		want string
	}{
		{0, "0s"},
		{850 * time.Millisecond, "850ms"},
		{42 * time.Second, "42s"},
		{-42 * time.Second, "42s"},
		{3*time.Minute + 12*time.Second, "3m12s"},
		{59*time.Minute + 59*time.Second + 600*time.Millisecond, "1h00m"},
		{5*time.Hour + 3*time.Minute, "5h03m"},
		{52 * time.Hour, "2d04h"},
	} {
		if got := Duration(tc.in); got != tc.want {
			t.Errorf("Duration(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestBytes(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 B"}, {512, "512 B"}, {-512, "-512 B"}, {1536, "1.5 KiB"}, {3 << 20, "3.0 MiB"},
		{20 << 30, "20.0 GiB"}, {1 << 62, "4096.0 PiB"},
	} {
		if got := Bytes(tc.in); got != tc.want {
			t.Errorf("Bytes(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSince(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	if got := Since(now.Add(-90*time.Second), now); got != "1m30s ago" {
		t.Errorf("past: %q", got)
	}
	if got := Since(now.Add(5*time.Second), now); got != "in 5s" {
		t.Errorf("future: %q", got)
	}
}
