package dispatch_test

import (
	"math"
	"testing"
	"time"

	"github.com/walhook/walhook/dispatch"
)

func TestBackoff(t *testing.T) {
	const s = time.Second
	tests := []struct {
		name         string
		attempt      int
		initial, max time.Duration
		jitter       float64
		want         time.Duration
	}{
		{"first retry, mid jitter", 1, 5 * s, time.Hour, 0.5, 5 * s},
		{"second retry doubles", 2, 5 * s, time.Hour, 0.5, 10 * s},
		{"third retry doubles again", 3, 5 * s, time.Hour, 0.5, 20 * s},
		{"low jitter is -20%", 3, 5 * s, time.Hour, 0, 16 * s},
		{"attempt 0 treated as 1", 0, 5 * s, time.Hour, 0.5, 5 * s},
		{"negative attempt treated as 1", -3, 5 * s, time.Hour, 0.5, 5 * s},
		{"capped at max", 20, 5 * s, time.Hour, 0.5, time.Hour},
		{"jitter below the cap", 20, 5 * s, time.Hour, 0, 48 * time.Minute},
		{"jitter never exceeds the cap", 20, 5 * s, time.Hour, 0.99, time.Hour},
		{"huge attempt does not overflow", 1_000_000, 5 * s, time.Hour, 0.5, time.Hour},
		{"max below initial caps", 1, 5 * s, 2 * s, 0.5, 2 * s},
		{"zero initial", 3, 0, time.Hour, 0.5, 0},
		{"jitter >= 1 is clamped", 1, 10 * s, time.Hour, 1, 12*s - 1},
		{"negative jitter is clamped", 1, 10 * s, time.Hour, -1, 8 * s},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := dispatch.Backoff(tt.attempt, tt.initial, tt.max, tt.jitter)
			if diff := got - tt.want; diff < -time.Microsecond || diff > time.Microsecond {
				t.Errorf("Backoff(%d, %s, %s, %v) = %s, want %s", tt.attempt, tt.initial, tt.max, tt.jitter, got, tt.want)
			}
		})
	}

	t.Run("bounds", func(t *testing.T) {
		initial, max := 100*time.Millisecond, 10*time.Minute
		for attempt := 1; attempt <= 80; attempt++ {
			base := max
			if attempt < 40 {
				base = time.Duration(math.Min(float64(initial)*math.Pow(2, float64(attempt-1)), float64(max)))
			}
			prevLow := time.Duration(0)
			for _, j := range []float64{0, 0.25, 0.5, 0.75, 0.999999} {
				got := dispatch.Backoff(attempt, initial, max, j)
				lo := time.Duration(float64(base) * 0.8)
				hi := min(time.Duration(float64(base)*1.2), max)
				if got < lo-time.Microsecond || got > hi {
					t.Fatalf("attempt %d jitter %v: %s outside [%s, %s]", attempt, j, got, lo, hi)
				}
				if got < prevLow {
					t.Fatalf("attempt %d: not monotonic in jitter", attempt)
				}
				prevLow = got
			}
		}
		// No cap: keeps growing, never negative.
		prev := time.Duration(0)
		for attempt := 1; attempt < 200; attempt++ {
			got := dispatch.Backoff(attempt, time.Second, 0, 0.5)
			if got < prev || got <= 0 {
				t.Fatalf("uncapped attempt %d: %s after %s", attempt, got, prev)
			}
			prev = got
		}
	})
}
