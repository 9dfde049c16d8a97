package dispatch

import (
	"context"
	"time"

	"github.com/walhook/walhook/internal/outbox"
)

// maintain runs the periodic work beside claiming and sending: it takes
// back the rows of dead dispatchers, makes due the retries of webhooks
// whose breaker closed, deletes old delivered and failed rows, promotes
// parked rows left without a predecessor and writes the per-minute
// counts. The heartbeat runs on its own goroutine.
func (d *Dispatcher) maintain(ctx context.Context) {
	d.warnUnserved(ctx)
	rescue := time.NewTimer(0)
	defer rescue.Stop()
	purge := time.NewTimer(0)
	defer purge.Stop()
	sweep := time.NewTimer(sweepEvery)
	defer sweep.Stop()
	minutes := time.NewTimer(d.nextMinutesTick().Sub(d.now()))
	defer minutes.Stop()
	var cursor outbox.ObjectCursor
	for {
		select {
		case <-ctx.Done():
			return
		case <-minutes.C:
			d.writeMinutes(ctx, false)
			minutes.Reset(d.nextMinutesTick().Sub(d.now()))
		case name := <-d.reopened:
			d.releaseBackoff(ctx, name)
		case <-rescue.C:
			d.rescue(ctx)
			rescue.Reset(jitter(rescueEvery, d.rand()))
		case <-purge.C:
			d.purge(ctx)
			purge.Reset(jitter(retentionEvery, d.rand()))
		case <-sweep.C:
			cursor = d.sweep(ctx, cursor)
			sweep.Reset(jitter(sweepEvery, d.rand()))
		}
	}
}

// releaseBackoff makes due the rows of webhook name that wait for a retry:
// its receiver answers again.
func (d *Dispatcher) releaseBackoff(ctx context.Context, name string) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	n, err := d.store.ReleaseBackoff(ctx, name)
	if err != nil {
		d.log.Warn().Err(err).Str("webhook", name).Msg("could not make retries due after the circuit closed; they wait for their backoff")
		return
	}
	if n > 0 {
		d.log.Info().Str("webhook", name).Int64("rows", n).Msg("receiver answers again: deliveries waiting for a retry are due now")
		signal(d.wake)
	}
}

// warnUnserved logs the webhooks with pending rows that this Dispatcher
// does not serve.
func (d *Dispatcher) warnUnserved(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	names, err := d.store.WebhooksWithPending(ctx)
	if err != nil {
		return
	}
	for _, name := range names {
		if _, ok := d.hooks[name]; !ok {
			d.log.Warn().Str("webhook", name).
				Msg("pending deliveries for a webhook that is not configured or is disabled are not sent")
		}
	}
}
