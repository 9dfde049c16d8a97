package dispatch

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/walhook/walhook/internal/outbox"
)

// job is one claimed delivery.
type job struct {
	id       int64
	hook     *hook
	model    string
	body     []byte
	attempts int
	// claimedAt is the last_attempt_at the claim wrote; it identifies the
	// claim when the outcome is written.
	claimedAt time.Time
	// prevAttemptAt is last_attempt_at before the claim, restored when the
	// row is released unsent.
	prevAttemptAt pgtype.Timestamptz
	// committedAt is the commit time of the change (for the Observer).
	committedAt time.Time
	// deadline is the local (monotonic) time after which the row must not
	// be sent any more: the request could outlive the lease.
	deadline time.Time
	// probe: the row was claimed to probe an open circuit breaker.
	probe bool
}

// claimLoop claims deliveries into the webhooks' queues until ctx is done.
// It claims when woken (NOTIFY, rows rescued), on every poll, and again at
// once after a full batch, as long as some webhook has room; after outcomes
// are written it claims once no claim is running. Up to claimsInFlight
// claims run at once, so that sending never waits for a claim's round trip;
// each reserves its rows before it starts.
func (d *Dispatcher) claimLoop(ctx, hard context.Context) {
	type claimed struct {
		full bool
		err  error
	}
	done := make(chan claimed, claimsInFlight)
	inFlight := 0
	defer func() {
		// The queues are closed after we return: wait for running claims.
		for ; inFlight > 0; inFlight-- {
			<-done
		}
	}()
	poll := time.NewTimer(0)
	defer poll.Stop()
	// probe wakes the loop when an open breaker may be probed.
	probe := time.NewTicker(250 * time.Millisecond)
	defer probe.Stop()
	var retry <-chan time.Time
	failures := 0
	want := true
	// wantClosed: outcomes were written since the last claim started. A
	// claim that starts later sees them, whatever started it; one for
	// them alone waits until no claim runs, so that it never takes the
	// slot a claim for newly enqueued rows needs.
	wantClosed := false
	// unheld: a claim failed, and may have committed without its answer
	// reaching us (the connection died after the commit, the server
	// failed over): its rows would be delivering under our id, unknown
	// to us, until their lease ran out. They are put back before the next
	// claim, once no claim runs.
	unheld := false
	for ctx.Err() == nil {
		if unheld && inFlight == 0 && retry == nil {
			if err := d.releaseUnheld(hard); err != nil {
				failures++
				delay := d.retryDelay(failures)
				d.log.Warn().Err(err).Dur("retry_in_ms", delay).Msg("putting back the rows of a claim whose answer was lost failed")
				retry = time.After(delay)
			} else {
				unheld = false
			}
		}
		if !unheld && (want || (wantClosed && inFlight == 0)) && retry == nil && inFlight < claimsInFlight && len(d.order) > 0 {
			if req := d.claimRequest(); req != nil {
				inFlight++
				want, wantClosed = false, false
				go func() {
					full, err := d.claim(hard, req)
					done <- claimed{full, err}
				}()
				continue
			}
		}
		select {
		case <-ctx.Done():
		case c := <-done:
			inFlight--
			if c.err != nil {
				unheld = true
				failures++
				delay := d.retryDelay(failures)
				d.log.Warn().Err(c.err).Dur("retry_in_ms", delay).Msg("claiming deliveries failed")
				retry = time.After(delay)
				want = true
				continue
			}
			failures = 0
			// A full batch suggests more is due.
			want = want || c.full
		case <-d.wake:
			want = true
		case <-d.closed:
			wantClosed = true
		case <-poll.C:
			want = true
			poll.Reset(jitter(d.poll, d.rand()))
		case <-probe.C:
			if d.probeDue() {
				want = true
			}
		case <-d.freed:
		case <-retry:
			retry = nil
		}
	}
}

// jitter spreads d by ±10%.
func jitter(d time.Duration, r float64) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*r))
}

// claimReq is one claim in preparation: per webhook, the rows reserved.
type claimReq struct {
	outbox.ClaimRequest
	hooks  []*hook
	probes []bool
}

// probeDue reports whether some webhook's breaker waits for a probe.
func (d *Dispatcher) probeDue() bool {
	now := time.Now()
	for _, h := range d.order {
		if h.breaker.probeDue(now) {
			return true
		}
	}
	return false
}

// claimRequest reserves rows for one claim: for each webhook, as many as it
// has room for (see limitFor), one for a breaker's probe, none while its
// breaker is open. It returns nil when no webhook has room. Every webhook
// with room gets its own LIMIT in the same statement: a webhook with a
// backlog never takes another's turn.
func (d *Dispatcher) claimRequest() *claimReq {
	if int(d.unwritten.Load()) >= d.maxUnwritten {
		return nil
	}
	now := time.Now()
	var req *claimReq
	for _, h := range d.order {
		limit, probe := h.breaker.admit(now, d.limitFor(h))
		if limit <= 0 {
			continue
		}
		if req == nil {
			req = &claimReq{ClaimRequest: outbox.ClaimRequest{By: d.id}}
		}
		h.held.Add(int64(limit))
		d.unwritten.Add(int64(limit))
		req.Webhooks = append(req.Webhooks, h.name)
		req.Limits = append(req.Limits, int32(limit))
		req.Leases = append(req.Leases, h.lease)
		req.hooks = append(req.hooks, h)
		req.probes = append(req.probes, probe)
	}
	return req
}

// limitFor is how many rows of h to claim now; 0 means wait for room.
// Rows of running claims count as held. While enough rows are queued to
// keep every slot of the webhook busy, it waits until half of its queue is
// free, so claims stay large. Each claim takes at most its share of the
// queue, so that another can start while it runs.
func (d *Dispatcher) limitFor(h *hook) int {
	held := int(h.held.Load())
	free := h.maxHeld - held
	if free <= 0 {
		return 0
	}
	if free < h.maxHeld/2 && held >= h.limit {
		return 0
	}
	return min(free, maxClaimBatch, max(h.maxHeld/claimsInFlight, 1))
}

// claim runs req and queues the claimed rows. It gives back the rows it
// reserved but did not claim, and reports whether some webhook's claim was
// full (claimed and parked rows filled its limit: more may be due). Rows
// are queued only once the statement has completed: the server sends
// RETURNING rows before its implicit transaction commits, and an outcome
// written before that commit would not see the claim.
func (d *Dispatcher) claim(ctx context.Context, req *claimReq) (full bool, err error) {
	got := make([]int, len(req.hooks))
	defer func() {
		for i, h := range req.hooks {
			back := int64(got[i] - int(req.Limits[i]))
			h.held.Add(back)
			d.unwritten.Add(back)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	start := time.Now()
	claimed, parked, err := d.store.Claim(ctx, req.ClaimRequest)
	if err != nil {
		for i, h := range req.hooks {
			if req.probes[i] {
				h.breaker.noProbe(time.Now())
			}
		}
		return false, err
	}
	index := make(map[string]int, len(req.hooks))
	for i, h := range req.hooks {
		index[h.name] = i
	}
	jobs := make([]job, len(claimed))
	for k, c := range claimed {
		i, ok := index[c.Webhook]
		if !ok {
			// Impossible: the statement only claims the webhooks asked.
			return false, fmt.Errorf("claim: row %d names unknown webhook %q", c.ID, c.Webhook)
		}
		h := req.hooks[i]
		got[i]++
		jobs[k] = job{
			id: c.ID, hook: h, model: c.Model, body: c.Body, attempts: c.Attempts,
			claimedAt: c.ClaimedAt, prevAttemptAt: c.PrevAttemptAt, committedAt: c.CommittedAt,
			deadline: start.Add(h.lease - h.timeout - leaseSafety),
			probe:    req.probes[i],
		}
	}
	for k := range jobs {
		d.holding.add(claimKey{jobs[k].id, jobs[k].claimedAt})
	}
	for k := range jobs {
		jobs[k].hook.queue <- &jobs[k] // never blocks: the queue holds maxHeld and held <= maxHeld
	}
	for i, h := range req.hooks {
		if req.probes[i] && got[i] == 0 {
			h.breaker.noProbe(time.Now())
		}
		if got[i]+parked[h.name] >= int(req.Limits[i]) {
			full = true
		}
	}
	if len(claimed) > 0 || len(parked) > 0 {
		d.log.Debug().Int("claimed", len(claimed)).Any("parked", parked).Msg("claimed deliveries")
	}
	return full, nil
}

// holding is the set of rows this Dispatcher claimed and has not written
// an outcome for: the rows it knows to be delivering under its id.
type holding struct {
	mu   sync.Mutex
	rows map[claimKey]struct{}
}

func (h *holding) add(k claimKey) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.rows == nil {
		h.rows = map[claimKey]struct{}{}
	}
	h.rows[k] = struct{}{}
}

func (h *holding) remove(k claimKey) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.rows, k)
}

// ids returns the ids of the rows held.
func (h *holding) ids() []int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]int64, 0, len(h.rows))
	for k := range h.rows {
		out = append(out, k.id)
	}
	return out
}

// releaseUnheld puts back to pending the rows delivering under this
// Dispatcher's id that it does not hold: a claim committed whose answer
// was lost. No claim may be in flight.
func (d *Dispatcher) releaseUnheld(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	n, err := d.store.ReleaseUnheld(ctx, d.id, d.holding.ids())
	if err != nil {
		return err
	}
	if n > 0 {
		d.log.Warn().Int64("rows", n).Msg("put back deliveries claimed by a claim whose answer was lost (the connection died after its commit); they are sent now")
		signal(d.wake)
	}
	return nil
}

// maintain keeps the heartbeat, takes back the rows of dead dispatchers,
// makes due the retries of webhooks whose breaker closed, deletes old
// delivered and failed rows, and writes the per-minute counts.
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
		signal(d.wake)
	}
}

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
		_, err := conn.WaitForNotification(wctx)
		cancel()
		if err == nil {
			signal(d.wake)
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
