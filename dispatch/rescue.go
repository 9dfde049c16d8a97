package dispatch

import "context"

// rescue puts back to pending the rows of dispatchers that stopped beating
// and rows whose lease expired.
func (d *Dispatcher) rescue(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	n, err := d.store.Rescue(ctx, deadAfter)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn().Err(err).Msg("taking back the deliveries of dead dispatchers failed")
		}
		return
	}
	if n > 0 {
		d.log.Warn().Int64("rows", n).Msg("took back deliveries claimed by a dispatcher that stopped (they are sent again)")
		d.resetFloors()
		signal(d.wake)
	}
}
