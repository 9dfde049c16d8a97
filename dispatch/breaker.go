package dispatch

import (
	"sync"
	"time"

	"github.com/walhook/walhook/internal/outbox"
)

// Circuit-breaker tuning.
const (
	// breakerThreshold consecutive failed attempts (no response, timeout,
	// 5xx or 429) open the breaker.
	breakerThreshold = 5
	// The first probe comes breakerMinInterval after the breaker opens;
	// each failed probe doubles the wait, up to breakerMaxInterval.
	breakerMinInterval = time.Second
	breakerMaxInterval = time.Minute
)

// breaker is one webhook's circuit breaker in one dispatcher. While it is
// open the dispatcher claims nothing for the webhook and releases, unsent,
// what it had claimed; every interval it claims one row as a probe. The
// first success closes it. Pausing never counts against a row's attempts:
// rows released are put back as they were, and a failed probe is recorded
// without using up one of the row's attempts.
type breaker struct {
	mu       sync.Mutex
	state    outbox.BreakerState
	failures int           // consecutive failures while closed
	interval time.Duration // current wait between probes
	since    time.Time     // when the current state began
	probeAt  time.Time     // open: when the next probe may be claimed
	lastErr  string        // the failure that opened it (or the last probe's)
}

func newBreaker() *breaker {
	return &breaker{state: outbox.BreakerClosed, interval: breakerMinInterval}
}

// admit says how many rows may be claimed now, given the normal limit, and
// whether the claim is a probe. An open breaker whose wait is over turns
// to probing and admits one row.
func (b *breaker) admit(now time.Time, limit int) (int, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case outbox.BreakerClosed:
		return limit, false
	case outbox.BreakerOpen:
		if limit > 0 && !now.Before(b.probeAt) {
			b.state = outbox.BreakerProbing
			return 1, true
		}
	}
	return 0, false
}

// noProbe is called when a probe claim found nothing due: the breaker
// stays open and probes again after the same interval.
func (b *breaker) noProbe(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == outbox.BreakerProbing {
		b.state, b.probeAt = outbox.BreakerOpen, now.Add(b.interval)
	}
}

// sending says whether a claimed row may be sent: every row while closed,
// only the probe otherwise.
func (b *breaker) sending(probe bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == outbox.BreakerClosed || probe
}

// record counts an attempt's result (ok: the receiver answered with
// anything but 5xx or 429) and returns the new state when it changed.
func (b *breaker) record(now time.Time, ok, probe bool, errText string) (outbox.BreakerState, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if ok {
		b.failures = 0
		if b.state == outbox.BreakerClosed {
			return "", false
		}
		b.state, b.since, b.interval = outbox.BreakerClosed, now, breakerMinInterval
		return outbox.BreakerClosed, true
	}
	switch {
	case b.state == outbox.BreakerClosed:
		b.failures++
		if b.failures < breakerThreshold {
			return "", false
		}
		b.failures = 0
		b.state, b.since, b.interval, b.lastErr = outbox.BreakerOpen, now, breakerMinInterval, errText
		b.probeAt = now.Add(b.interval)
		return outbox.BreakerOpen, true
	case probe:
		b.interval = min(2*b.interval, breakerMaxInterval)
		b.state, b.probeAt, b.lastErr = outbox.BreakerOpen, now.Add(b.interval), errText
	}
	return "", false
}

// probeDue reports whether the breaker is open and its wait is over.
func (b *breaker) probeDue(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == outbox.BreakerOpen && !now.Before(b.probeAt)
}

func (b *breaker) status() outbox.BreakerStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == outbox.BreakerClosed {
		return outbox.BreakerStatus{State: outbox.BreakerClosed}
	}
	st := outbox.BreakerStatus{State: b.state, Since: b.since, LastError: logText(b.lastErr)}
	if b.state == outbox.BreakerOpen {
		st.NextProbe = b.probeAt
	}
	return st
}
