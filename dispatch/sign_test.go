package dispatch_test

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"math"
	"testing"
	"time"

	"github.com/walhook/walhook/dispatch"
)

func TestSign(t *testing.T) {
	tests := []struct {
		name, secret, body string
		want               string // "" means: compute independently
	}{
		// Vectors computed with: printf '%s' BODY | openssl dgst -sha512 -hmac SECRET
		{name: "openssl netbox body", secret: "It's a secret!",
			body: `{"event": "created", "model": "Site", "data": {"id": 1}}`,
			want: "411b84837908fdc5d066c467c19a7d4cb32bdeb443503ccafa7c3abe8db99a6f5b36e8fd34219819a7a2c930a4b1cee14292bd967fba8f82bf5382f6ef09003c"},
		{name: "openssl short", secret: "key", body: "abc",
			want: "3926a207c8c42b0c41792cbd3e1a1aaaf5f7a25704f62dfc939c4987dd7ce060009c5bb1c2447355b3216f10b537e9afa7b64a4e5391b0d631172d07939e087a"},
		{name: "utf-8 secret", secret: "søcrét ✓", body: `{"name":"Zürich"}`},
		{name: "empty body", secret: "s", body: ""},
		{name: "long secret", secret: string(make([]byte, 300)), body: "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := hmac.New(sha512.New, []byte(tt.secret))
			m.Write([]byte(tt.body))
			independent := hex.EncodeToString(m.Sum(nil))
			got := dispatch.Sign(tt.secret, []byte(tt.body))
			if got != independent {
				t.Errorf("Sign = %s, crypto/hmac says %s", got, independent)
			}
			if tt.want != "" && got != tt.want {
				t.Errorf("Sign = %s, want %s", got, tt.want)
			}
		})
	}
}

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
