package dispatch

import (
	"context"
	"errors"
	"time"

	"github.com/walhook/walhook/internal/outbox"
)

// The status page charts each webhook's last hour from the minutes table:
// attempts per minute by outcome and the backlog. An attempt only adds one
// to an atomic counter of its webhook; maintain takes the counters every
// minutesEvery (aligned on the clock, so that each interval lies within one
// minute) and adds them to the row of the minute they were counted in, and
// the first dispatcher to reach a new minute samples the backlog. Run
// writes what was counted since the last time before it returns.

// minuteCounts carries the counts between writes.
type minuteCounts struct {
	hooks []*hook
	// since is when the counters were last taken: what they hold now was
	// counted in its minute (or in the next one, for an interval that
	// does not divide a minute).
	since time.Time
	// unwritten holds counts taken whose write failed, written with the
	// next ones.
	unwritten []outbox.MinuteCounts
	// sampled is the last minute whose backlog this dispatcher sampled.
	sampled time.Time
}

func newMinuteCounts(hooks []*hook, now time.Time) *minuteCounts {
	return &minuteCounts{hooks: hooks, since: now}
}

// nextMinutesTick is when the counts are next taken: the next multiple of
// minutesEvery on the clock.
func (d *Dispatcher) nextMinutesTick() time.Time {
	return d.now().Truncate(d.minutesEvery).Add(d.minutesEvery)
}

// writeMinutes takes the webhooks' counters and adds them to the minutes
// table; unless final, it also samples the backlog once per minute (and
// trims old minutes). A failed write is retried with the next one; counts
// older than outbox.MinutesKept, or still unwritten when Run returns, are
// dropped with an error log.
func (d *Dispatcher) writeMinutes(ctx context.Context, final bool) {
	m := d.minutes
	now := d.now()
	minute := outbox.Minute(m.since)
	m.since = now
	for _, h := range m.hooks {
		c := outbox.MinuteCounts{Minute: minute, Webhook: h.name,
			Delivered: h.delivered.Swap(0), Retried: h.retried.Swap(0), Failed: h.failed.Swap(0)}
		if c.Delivered != 0 || c.Retried != 0 || c.Failed != 0 {
			m.unwritten = append(m.unwritten, c)
		}
	}
	timeout := dbTimeout
	if final {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if len(m.unwritten) > 0 {
		if err := d.store.AddMinutes(ctx, m.unwritten); err != nil {
			keep := m.unwritten[:0]
			var dropped int64
			for _, c := range m.unwritten {
				if final || now.Sub(c.Minute) > outbox.MinutesKept {
					dropped += c.Delivered + c.Retried + c.Failed
					continue
				}
				keep = append(keep, c)
			}
			m.unwritten = keep
			switch {
			case dropped > 0:
				d.log.Error().Err(err).Int64("attempts", dropped).
					Msg("could not write attempt counts to the minutes table: the status page charts miss them")
			case ctx.Err() != nil && errors.Is(err, context.Canceled):
				// Shutting down: Run writes them.
			default:
				d.log.Warn().Err(err).Msg("writing attempt counts to the minutes table failed; retrying with the next ones")
			}
		} else {
			m.unwritten = m.unwritten[:0]
		}
	}
	if final || len(m.hooks) == 0 || !outbox.Minute(now).After(m.sampled) {
		return
	}
	names := make([]string, len(m.hooks))
	for i, h := range m.hooks {
		names[i] = h.name
	}
	if err := d.store.SampleBacklog(ctx, now, names); err != nil {
		if !errors.Is(err, context.Canceled) {
			d.log.Warn().Err(err).Msg("sampling the backlog for the status page charts failed")
		}
		return
	}
	m.sampled = outbox.Minute(now)
}
