package dispatch

import (
	"context"

	"github.com/walhook/walhook/internal/outbox"
)

// sweep promotes, among the next sweepObjects objects with open changes,
// parked changes left without an earlier open change (their predecessor
// was finished or deleted by hand), and returns where to go on next time.
func (d *Dispatcher) sweep(ctx context.Context, c outbox.ObjectCursor) outbox.ObjectCursor {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	n, next, err := d.store.PromoteOrphans(ctx, c, sweepObjects)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn().Err(err).Msg("looking for parked deliveries left without a predecessor failed")
		}
		return c
	}
	if n > 0 {
		d.log.Warn().Int64("rows", n).Msg("parked deliveries whose earlier change was finished by hand are pending again")
		signal(d.wake)
	}
	return next
}
