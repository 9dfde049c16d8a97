package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// result is the outcome of one claimed row, waiting to be written.
type result struct {
	id            int64
	claimedAt     time.Time
	prevAttemptAt pgtype.Timestamptz
	state         string        // stateDelivered, statePending or stateFailed
	undo          bool          // released unsent: no attempt was made
	status        int           // HTTP status; 0 writes NULL
	err           string        // last_error; "" writes NULL
	delay         time.Duration // for a retry: next_attempt_at = now() + delay
}

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
			d.log.Warn().Err(err).Int("rows", len(buf)).Dur("retry_in", delay).Msg("writing delivery outcomes failed")
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
			d.log.Error().Err(err).Int64("delivery", batch[i].id).Msg("dropping an outcome the database rejects")
		}
	}
	return nil
}

// rejected reports whether the database refused the data itself (data
// exception or integrity violation), so that retrying cannot help.
func rejected(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "22") || strings.HasPrefix(pe.Code, "23"))
}

func (d *Dispatcher) write(ctx context.Context, batch []result) error {
	n := len(batch)
	ids := make([]int64, n)
	for i, r := range batch {
		ids[i] = r.id
	}
	ctx, cancel := context.WithTimeout(ctx, dbTimeout)
	defer cancel()
	tag, err := d.pool.Exec(ctx, d.sql.outcome, outcomeJSON(batch), ids, d.id)
	if err != nil {
		return fmt.Errorf("write %d outcomes: %w", n, err)
	}
	if lost := int64(n) - tag.RowsAffected(); lost > 0 {
		// The lease ran out and another sender took these rows over; its
		// outcome is the one that counts.
		d.log.Warn().Int64("rows", lost).Msg("outcomes not written: the rows' lease had expired and they were taken back")
	}
	return nil
}

// outcomeJSON encodes batch as the jsonb object the outcome statement
// reads: {"<id>": [state, undo, status, error, delay_us, claimed_at,
// prev_attempt_at], ...}, with null for absent values.
func outcomeJSON(batch []result) string {
	b := make([]byte, 0, 96*len(batch))
	b = append(b, '{')
	for i, r := range batch {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = strconv.AppendInt(b, r.id, 10)
		b = append(b, `":["`...)
		b = append(b, r.state...)
		if r.undo {
			b = append(b, `",1,`...)
		} else {
			b = append(b, `",0,`...)
		}
		if r.status != 0 {
			b = strconv.AppendInt(b, int64(r.status), 10)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, ',')
		if r.err != "" {
			q, _ := json.Marshal(r.err)
			b = append(b, q...)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, ',')
		if r.state == statePending && !r.undo {
			b = strconv.AppendInt(b, r.delay.Microseconds(), 10)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, ',')
		b = appendTime(b, r.claimedAt)
		b = append(b, ',')
		if r.prevAttemptAt.Valid {
			b = appendTime(b, r.prevAttemptAt.Time)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, ']')
	}
	b = append(b, '}')
	return string(b)
}

// appendTime appends t as a quoted timestamp PostgreSQL reads back exactly.
func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, "2006-01-02T15:04:05.999999Z07:00")
	return append(b, '"')
}
