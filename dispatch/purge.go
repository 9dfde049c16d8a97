package dispatch

import (
	"context"
	"time"

	"github.com/walhook/walhook/internal/outbox"
)

// purge deletes delivered and failed rows older than their retention, a
// batch at a time, and the heartbeat rows of long-gone dispatchers.
func (d *Dispatcher) purge(ctx context.Context) {
	for _, p := range []struct {
		what string
		age  time.Duration
		del  func(context.Context, time.Duration) (int64, error)
	}{
		{"delivered", d.retention, d.store.PurgeDelivered},
		{"failed", d.failedRetention, d.store.PurgeFailed},
	} {
		if p.age <= 0 {
			continue
		}
		var total int64
		for ctx.Err() == nil {
			qctx, cancel := context.WithTimeout(ctx, dbTimeout)
			n, err := p.del(qctx, p.age)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					d.log.Warn().Err(err).Msgf("deleting old %s rows failed", p.what)
				}
				break
			}
			total += n
			if n < outbox.PurgeBatch {
				break
			}
		}
		if total > 0 {
			d.log.Info().Int64("rows", total).Dur("retention_ms", p.age).Msgf("deleted old %s rows", p.what)
		}
	}
	qctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	if err := d.store.PruneDispatchers(qctx); err != nil && ctx.Err() == nil {
		d.log.Warn().Err(err).Msg("deleting old dispatcher rows failed")
	}
}
