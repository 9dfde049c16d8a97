package dispatch

import (
	"testing"
	"time"
)

// A claim prepared before a reset must not move the floor past rows the
// reset was for; a later claim may.
func TestClaimFloorResetWins(t *testing.T) {
	var f claimFloor
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	since, epoch := f.since()
	if !since.IsZero() {
		t.Fatalf("a new floor is %s, want zero (every due row)", since)
	}
	f.advance(epoch, t0)
	if got, _ := f.since(); !got.Equal(t0) {
		t.Fatalf("after advance: %s, want %s", got, t0)
	}
	_, inFlight := f.since()
	f.reset()
	f.advance(inFlight, t0.Add(time.Minute)) // prepared before the reset
	if got, _ := f.since(); !got.IsZero() {
		t.Fatalf("a claim prepared before the reset moved the floor to %s", got)
	}
	_, epoch = f.since()
	f.advance(epoch, t0.Add(2*time.Minute))
	f.advance(epoch, t0.Add(time.Minute)) // never backwards
	if got, _ := f.since(); !got.Equal(t0.Add(2 * time.Minute)) {
		t.Fatalf("floor = %s, want %s", got, t0.Add(2*time.Minute))
	}
}
