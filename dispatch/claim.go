package dispatch

import (
	"context"
	"fmt"
	"sync"
	"time"

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
				d.resetFloors()
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
			// A poll looks at every due row: rows made pending by hand,
			// or whose capture transaction outlasted floorMargin.
			d.resetFloors()
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
	epochs []uint64 // of each hook's floor when the claim was prepared
}

// floorMargin is how far behind a claim's time the next claims of a
// webhook start looking (see claimFloor): longer than an outbox
// transaction takes between its now() and its commit.
const floorMargin = 2 * time.Second

// claimFloor is how far back a claim of one webhook must look for due rows
// (ClaimRequest.Since). A claim that did not fill its limit saw every row
// pending and due when it ran; a row that becomes pending later is due no
// earlier than the now() of the statement that made it pending (capture's
// insert, a retry, a promotion, a retry by hand), so the next claims may
// skip what was due floorMargin before. That skips the entries of finished
// rows at the head of deliveries_due, which stay until VACUUM. Rows put
// back as they were (released unsent, rescued, a lost claim's) reset the
// floors of the dispatcher that put them back; a row made pending another
// way (by another dispatcher, an UPDATE by hand, a capture transaction
// longer than floorMargin) is found by the claim after the next poll,
// which looks at every due row.
type claimFloor struct {
	mu    sync.Mutex
	at    time.Time // server time; zero: look at every due row
	epoch uint64
}

// since returns where the next claim starts, and the epoch to pass to
// advance.
func (f *claimFloor) since() (time.Time, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.at, f.epoch
}

// advance moves the floor to at after a claim prepared in epoch that did
// not fill its limit, unless the floor was reset since.
func (f *claimFloor) advance(epoch uint64, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch == f.epoch && at.After(f.at) {
		f.at = at
	}
}

// reset makes the next claim look at every due row.
func (f *claimFloor) reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.at = time.Time{}
	f.epoch++
}

// resetFloors makes the next claim of every webhook look at every due row.
func (d *Dispatcher) resetFloors() {
	for _, h := range d.order {
		h.floor.reset()
	}
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
		since, epoch := h.floor.since()
		req.Since = append(req.Since, since)
		req.epochs = append(req.epochs, epoch)
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
	res, err := d.store.Claim(ctx, req.ClaimRequest)
	claimed, parked := res.Rows, res.Parked
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
		} else {
			h.floor.advance(req.epochs[i], res.Now.Add(-floorMargin))
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
		d.resetFloors()
		signal(d.wake)
	}
	return nil
}
