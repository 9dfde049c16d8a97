package dispatch

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walhook/walhook/internal/outbox"
)

// result is the outcome of one claimed row, waiting to be written.
type result = outbox.Outcome

// Outcome-writer tuning.
const (
	// After isolateAfter consecutive failed writes, a batch is written row
	// by row, so that one outcome the database keeps refusing cannot hold
	// up the others; from then on Stall reports the writer, and the
	// failures are logged at error level.
	isolateAfter = 3
	// dropAfter is how many times one outcome may fail on its own, with an
	// error from the database, before it is dropped.
	dropAfter = 5
)

// claimKey identifies one claim's outcome.
type claimKey struct {
	id int64
	at time.Time
}

// writeOutcomes writes results in batches until results is closed and
// everything is written. A batch is written once it has flushTarget rows or
// its first row has waited flushDelay; while one is written the next
// accumulates, so batches grow with the load. Failed writes are retried with
// backoff and kept in memory meanwhile (see flush for what is dropped);
// after results closes they are tried for at most shutdownWait.
func (d *Dispatcher) writeOutcomes(ctx context.Context, results <-chan result) {
	var (
		buf      []result
		open     = true
		retry    <-chan time.Time
		failures int
		deadline time.Time
		// tries counts the failures of outcomes written on their own.
		tries = map[claimKey]int{}
	)
	defer d.outcomesFailing.Store(0)
	receive := func(r result, ok bool) {
		if !ok {
			open, results = false, nil
			deadline = time.Now().Add(shutdownWait)
			return
		}
		buf = append(buf, r)
	}
	// gathered is true once the current batch has waited flushDelay, or
	// has reached flushTarget rows: then it is written.
	var gather <-chan time.Time
	gathered := false
	for open || len(buf) > 0 {
		if len(buf) == 0 {
			gathered = false
		}
		if len(buf) == 0 || retry != nil || (open && !gathered && len(buf) < flushTarget) {
			if len(buf) > 0 && !gathered && gather == nil {
				gather = time.After(flushDelay)
			}
			select {
			case r, ok := <-results:
				receive(r, ok)
			case <-retry:
				retry = nil
			case <-gather:
				gather, gathered = nil, true
			}
			continue
		}
		n := min(len(buf), maxFlushBatch)
		kept, err := d.flush(ctx, buf[:n], failures >= isolateAfter, tries)
		if d.letGo(buf[:n], kept) {
			// Rows put back as they were may be due before the floors.
			d.resetFloors()
		}
		if done := n - len(kept); done > 0 {
			d.unwritten.Add(-int64(done))
			// An outcome may have closed an object whose next change waits.
			signal(d.closed)
		}
		buf = append(kept, buf[n:]...)
		if err == nil {
			if failures >= isolateAfter {
				d.log.Info().Msg("delivery outcomes are written again")
			}
			failures = 0
			d.outcomesFailing.Store(0)
			continue
		}
		if !open && time.Now().After(deadline) {
			d.log.Error().Err(err).Int("rows", len(buf)).
				Msg("could not write delivery outcomes before shutting down; their lease will return them to pending")
			d.unwritten.Add(-int64(len(buf)))
			return
		}
		failures++
		if o, ok := d.obs.(OutcomeObserver); ok {
			o.OutcomeWriteFailed()
		}
		delay := d.retryDelay(failures)
		if failures < isolateAfter {
			d.log.Warn().Err(err).Int("rows", len(buf)).Dur("retry_in_ms", delay).Msg("writing delivery outcomes failed")
		} else {
			d.outcomesFailing.CompareAndSwap(0, time.Now().UnixNano())
			d.log.Error().Err(err).Int("rows", len(buf)).Int("failures", failures).Dur("retry_in_ms", delay).
				Msg("writing delivery outcomes keeps failing: rows are written one at a time, claiming waits while too many are unwritten, and /readyz reports it")
		}
		retry = time.After(delay)
	}
}

// letGo removes from d.holding the rows of batch not in kept (their
// outcome is written, or dropped: then their lease returns them), and
// reports whether one of them was released unsent.
func (d *Dispatcher) letGo(batch, kept []result) (released bool) {
	if len(kept) == len(batch) {
		return false
	}
	stay := make(map[claimKey]bool, len(kept))
	for _, r := range kept {
		stay[claimKey{r.ID, r.ClaimedAt}] = true
	}
	for _, r := range batch {
		if k := (claimKey{r.ID, r.ClaimedAt}); !stay[k] {
			d.holding.remove(k)
			released = released || r.Mode == outbox.Released
		}
	}
	return released
}

// Stall says why this Dispatcher is not making progress ("" when it is):
// writing delivery outcomes has failed isolateAfter times in a row and has
// not succeeded since. It is safe for concurrent use; /readyz reports it.
func (d *Dispatcher) Stall() string {
	since := d.outcomesFailing.Load()
	if since == 0 {
		return ""
	}
	return "writing delivery outcomes keeps failing (since " + time.Unix(0, since).UTC().Format(time.RFC3339) + ")"
}

// flush writes batch and returns the outcomes still to write, with the last
// error. Normally one statement writes the whole batch. When the database
// rejects the data itself (which cleanText should make impossible), or
// when isolate is set (writes kept failing), rows are written one by one,
// so that one outcome cannot block the others: a row the database rejects
// is dropped at once; a row that fails on its own with another error from
// the database is kept for the next try and dropped after dropAfter such
// failures. A dropped outcome is logged at error level and counted; its
// row stays delivering until its lease returns it to pending, and it is
// sent again. An error that is not the database's answer (connection,
// timeout, the server going down) keeps every row: it says nothing about
// the rows.
func (d *Dispatcher) flush(ctx context.Context, batch []result, isolate bool, tries map[claimKey]int) ([]result, error) {
	if len(batch) > 1 {
		err := d.write(ctx, batch)
		if err == nil {
			return nil, nil
		}
		if !rejected(err) && !isolate {
			return batch, err
		}
	}
	var kept []result
	var last error
	for i := range batch {
		r := &batch[i]
		k := claimKey{r.ID, r.ClaimedAt}
		err := d.write(ctx, batch[i:i+1])
		if err == nil {
			delete(tries, k)
			continue
		}
		if !answered(err) {
			return append(kept, batch[i:]...), err
		}
		tries[k]++
		if n := tries[k]; rejected(err) || n >= dropAfter {
			delete(tries, k)
			d.log.Error().Err(err).Int64("delivery", r.ID).Int("tries", n).
				Msg("dropping a delivery outcome the database keeps refusing: the row is sent again once its lease runs out")
			if o, ok := d.obs.(OutcomeObserver); ok {
				o.OutcomesDropped(1)
			}
			continue
		}
		kept = append(kept, *r)
		last = err
	}
	return kept, last
}

// rejected reports whether the database refused the data itself (data
// exception or integrity violation), so that retrying cannot help.
func rejected(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pgerrcode.IsDataException(pe.Code) || pgerrcode.IsIntegrityConstraintViolation(pe.Code))
}

// answered reports whether err is the database's answer to the statement
// itself, not a sign that the database is unreachable, out of resources or
// shutting down (connection exception, insufficient resources, operator
// intervention such as a cancelled statement).
func answered(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && !pgerrcode.IsConnectionException(pe.Code) &&
		!pgerrcode.IsInsufficientResources(pe.Code) && !pgerrcode.IsOperatorIntervention(pe.Code)
}

func (d *Dispatcher) write(ctx context.Context, batch []result) error {
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	n, err := d.store.WriteOutcomes(ctx, d.id, batch)
	if err != nil {
		return err
	}
	if lost := int64(len(batch)) - n; lost > 0 {
		// This dispatcher was taken for dead (or the lease ran out) and
		// another took these rows over, whose outcome is the one that
		// counts; or an earlier try wrote them and its answer was lost.
		d.log.Warn().Int64("rows", lost).Msg("outcomes not written: the rows were taken back by another dispatcher meanwhile, or an earlier try whose answer was lost wrote them")
	}
	return nil
}
