package dispatch

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/walhook/walhook/internal/outbox"
)

// heartbeat records the heartbeat every heartbeatEvery until ctx is done.
// Run stops it only once every request has finished and every outcome is
// written, so that no other dispatcher takes back a row while this one is
// still sending it.
func (d *Dispatcher) heartbeat(ctx context.Context) {
	t := time.NewTicker(heartbeatEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d.beat(ctx)
		}
	}
}

// beat records this dispatcher's heartbeat with its breakers' states.
func (d *Dispatcher) beat(ctx context.Context) {
	states := map[string]outbox.BreakerStatus{}
	for _, h := range d.order {
		if st := h.breaker.status(); st.State != outbox.BreakerClosed {
			states[h.name] = st
		}
	}
	ctx, cancel := context.WithTimeout(ctx, heartbeatEvery*3)
	defer cancel()
	// The server's heartbeat_at is its now() for the statement, which
	// cannot come before the statement is sent: liveness counts from
	// here, not from the answer, so it lapses before the others'
	// rescue horizon however slow the statement was.
	sent := time.Now()
	if err := d.store.Heartbeat(ctx, d.id, states); err != nil {
		if !errors.Is(err, context.Canceled) {
			d.log.Warn().Err(err).Msg("recording the heartbeat failed; sending stops if it keeps failing")
		}
		return
	}
	d.live.extend(sent)
}

// errHeartbeatLapsed is the cause of the requests cancelled because this
// dispatcher could not record its heartbeat in time.
var errHeartbeatLapsed = errors.New("heartbeat not recorded for " + stopSendingAfter.String() +
	": another dispatcher may take the row back")

// liveness is the horizon up to which this dispatcher may send: its last
// recorded heartbeat plus stopSendingAfter. Requests run under its
// context, which is cancelled (cause errHeartbeatLapsed) when the horizon
// passes without a new heartbeat; the next heartbeat starts a new one.
type liveness struct {
	base  context.Context
	mu    sync.Mutex
	until time.Time // monotonic; zero: never alive
	ctx   context.Context
	// cancel ends ctx; nil once it has.
	cancel context.CancelCauseFunc
	timer  *time.Timer
}

func newLiveness(base context.Context) *liveness {
	return &liveness{base: base}
}

// extend records a heartbeat sent at sent.
func (l *liveness) extend(sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	until := sent.Add(stopSendingAfter)
	if until.Before(l.until) {
		return
	}
	l.until = until
	if l.cancel == nil {
		l.ctx, l.cancel = context.WithCancelCause(l.base)
	}
	if l.timer == nil {
		l.timer = time.AfterFunc(time.Until(until), l.check)
	} else {
		l.timer.Reset(time.Until(until))
	}
}

// check cancels the requests in flight once the horizon has passed.
func (l *liveness) check() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel != nil && !time.Now().Before(l.until) {
		l.cancel(errHeartbeatLapsed)
		l.cancel = nil
	}
}

// current returns the context to send under, and false when the horizon
// has passed (nothing may be sent).
func (l *liveness) current() (context.Context, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel == nil || !time.Now().Before(l.until) {
		return nil, false
	}
	return l.ctx, true
}

// stop ends the liveness when Run returns.
func (l *liveness) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
	}
	if l.cancel != nil {
		l.cancel(context.Canceled)
		l.cancel = nil
	}
}
