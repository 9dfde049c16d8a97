package cdc

import (
	"context"
	"fmt"
	"time"

	"github.com/walhook/walhook/internal/pgnet"
)

// keepAlive sends the server a status update when one is due, so that a
// long wait of the stream (for visibility, or retrying lookups) does not
// make the walsender drop the connection (wal_sender_timeout). It confirms
// only what the writer committed: the stream is inside a transaction.
func (s *stream) keepAlive(ctx context.Context) error {
	if s.conn == nil || time.Now().Before(s.nextStatus) {
		return nil
	}
	return s.sendStatus(ctx)
}

// visibleSQL reports whether the transaction with the 32-bit id $1 is
// visible to a new snapshot. The full 64-bit id is rebuilt from the
// snapshot's xmax (the nearest id with those low 32 bits); a transaction
// is visible when below xmin, or below xmax and not in progress. One that
// has committed but is not visible yet (its commit record is flushed, so the
// walsender may send it, while the backend still waits, e.g. for a
// synchronous standby) is at or above xmax when it holds the newest id.
const visibleSQL = `SELECT txid_visible_in_snapshot(greatest(3, x + (($1::bigint - x) % 4294967296 + 6442450944) % 4294967296 - 2147483648), s)
	FROM (SELECT txid_current_snapshot() AS s) q, LATERAL (SELECT txid_snapshot_xmax(q.s) AS x) m`

// visibleWarnAfter is how long waitVisible waits before it says so, and
// then how often it repeats it.
var visibleWarnAfter = 2 * time.Second

// waitVisible waits until transaction xid is visible to new snapshots, so
// that lookups and read-backs see the committed state, not the one before
// it. The walsender can send a transaction as soon as its commit record is
// flushed, a moment (or, with synchronous replication waiting for a standby,
// much longer) before other sessions see it. It never gives up: rendering
// with data that may be stale would be wrong for good, so a long wait holds
// capture, visibly (a warning, and Capture.Stall).
func (s *stream) waitVisible(ctx context.Context, xid uint32) error {
	if xid == 0 || xid == s.visibleXid {
		return nil
	}
	start := time.Now()
	nextWarn := start.Add(visibleWarnAfter)
	pause := 200 * time.Microsecond
	for {
		var visible bool
		qctx, cancel := pgnet.Bound(ctx)
		err := s.c.source.QueryRow(qctx, visibleSQL, int64(xid)).Scan(&visible)
		cancel()
		if err != nil {
			return fmt.Errorf("wait until source transaction %d is visible: %w", xid, err)
		}
		if visible {
			s.visibleXid = xid
			if time.Since(start) >= visibleWarnAfter {
				s.c.setStall("")
				s.log.Info().Uint32("xid", xid).Dur("waited_ms", time.Since(start)).Msg("source transaction is visible: capture goes on")
			}
			return nil
		}
		if now := time.Now(); now.After(nextWarn) {
			msg := fmt.Sprintf("source transaction %d (commit LSN %s) is committed but not yet visible to other sessions (waiting for a synchronous standby? see pg_stat_activity wait_event SyncRep): capture holds its changes until it is, so that lookups do not read stale rows", xid, s.txnLSN)
			s.c.setStall(msg)
			s.log.Warn().Uint32("xid", xid).Dur("waited_ms", now.Sub(start)).Msg(msg)
			nextWarn = now.Add(30 * time.Second)
		}
		if err := s.keepAlive(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(pause*2, 100*time.Millisecond)
	}
}
