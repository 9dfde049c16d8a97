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

// writeOutcomes writes results in batches until results is closed and
// everything is written. A batch is written once it has flushTarget rows or
// its first row has waited flushDelay; while one is written the next
// accumulates, so batches grow with the load. Failed writes are retried with
// backoff and kept in memory meanwhile; after results closes they are tried
// for at most shutdownWait.
func (d *Dispatcher) writeOutcomes(ctx context.Context, results <-chan result) {
	var (
		buf      []result
		open     = true
		retry    <-chan time.Time
		failures int
		deadline time.Time
	)
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
		if err := d.flush(ctx, buf[:n]); err != nil {
			if !open && time.Now().After(deadline) {
				d.log.Error().Err(err).Int("rows", len(buf)).
					Msg("could not write delivery outcomes before shutting down; their lease will return them to pending")
				d.unwritten.Add(-int64(len(buf)))
				return
			}
			failures++
			delay := d.retryDelay(failures)
			d.log.Warn().Err(err).Int("rows", len(buf)).Dur("retry_in_ms", delay).Msg("writing delivery outcomes failed")
			retry = time.After(delay)
			continue
		}
		failures = 0
		d.unwritten.Add(-int64(n))
		buf = append(buf[:0], buf[n:]...)
		// An outcome may have closed an object whose next change waits.
		signal(d.closed)
	}
}

// flush writes batch with one statement. If the database rejects the data
// itself (which cleanText should make impossible), rows are written one by
// one and those still rejected are dropped with an error log: their lease
// returns them to pending rather than blocking every other outcome.
func (d *Dispatcher) flush(ctx context.Context, batch []result) error {
	err := d.write(ctx, batch)
	if err == nil || len(batch) == 1 || !rejected(err) {
		return err
	}
	for i := range batch {
		if err := d.write(ctx, batch[i:i+1]); err != nil {
			if !rejected(err) {
				return err
			}
			d.log.Error().Err(err).Int64("delivery", batch[i].ID).Msg("dropping an outcome the database rejects")
		}
	}
	return nil
}

// rejected reports whether the database refused the data itself (data
// exception or integrity violation), so that retrying cannot help.
func rejected(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pgerrcode.IsDataException(pe.Code) || pgerrcode.IsIntegrityConstraintViolation(pe.Code))
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
		// another took these rows over; its outcome is the one that counts.
		d.log.Warn().Int64("rows", lost).Msg("outcomes not written: the rows were taken back by another dispatcher meanwhile")
	}
	return nil
}
