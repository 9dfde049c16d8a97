package dispatch

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// listen wakes the claimer on every NOTIFY on the outbox channel. It keeps a
// connection of its own and reconnects with backoff; polling goes on
// meanwhile.
func (d *Dispatcher) listen(ctx context.Context) {
	failures := 0
	for {
		listened, err := d.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if listened {
			failures = 0
		}
		failures++
		delay := d.retryDelay(failures)
		d.log.Warn().Err(err).Dur("retry_in_ms", delay).Msg("LISTEN connection lost; polling meanwhile")
		if !sleep(ctx, delay) {
			return
		}
	}
}

func (d *Dispatcher) listenOnce(ctx context.Context) (listened bool, err error) {
	actx, cancel := context.WithTimeout(ctx, dbTimeout)
	c, err := d.store.Pool().Acquire(actx)
	cancel()
	if err != nil {
		return false, fmt.Errorf("listen: acquire connection: %w", err)
	}
	// The connection leaves the pool: it carries a LISTEN and is closed
	// when done, and the pool may open another in its place.
	conn := c.Hijack()
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	lctx, cancel := context.WithTimeout(ctx, dbTimeout)
	_, err = conn.Exec(lctx, "LISTEN "+pgx.Identifier{d.store.Channel()}.Sanitize())
	cancel()
	if err != nil {
		return false, fmt.Errorf("listen: %w", err)
	}
	signal(d.wake) // catch up with anything enqueued while not listening
	for {
		wctx, cancel := context.WithTimeout(ctx, listenCheckEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err == nil {
			// Capture in this process woke us already.
			if d.ownNotify == "" || n.Payload != d.ownNotify {
				signal(d.wake)
			}
			continue
		}
		if ctx.Err() != nil || !pgconn.Timeout(err) {
			return true, fmt.Errorf("listen: wait for notification: %w", err)
		}
		// Quiet for a while: check that the connection still answers.
		pctx, cancel := context.WithTimeout(ctx, dbTimeout)
		err = conn.Ping(pctx)
		cancel()
		if err != nil {
			return true, fmt.Errorf("listen: the connection does not answer: %w", err)
		}
	}
}
