package cdc

import (
	"context"

	"github.com/walhook/walhook/cdc/lost"
	"github.com/walhook/walhook/internal/pgnet"
)

// walsenderWaits are the wait events of a walsender with nothing to do
// but wait: for WAL, for the client's messages or for room to send. One of
// them while the stream hears nothing, not even a reply it asked for, means
// the path between them is dead. (PostgreSQL 17 spells WalSenderWaitForWal
// with a lowercase "al".)
const walsenderWaits = "'walsendermain', 'walsenderwaitforwal', 'walsenderwritedata'"

// walsenderBusy reports, when the stream has heard nothing past its bound,
// what its walsender is doing if it is busy ("" when it waits, is gone or
// cannot be asked: then the path counts as dead). A walsender decoding a
// large transaction answers status updates only every wal_sender_timeout/2.
func (c *Capture) walsenderBusy(ctx context.Context) string {
	b := c.walsender
	if b == nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, pgnet.PingTimeout)
	defer cancel()
	var event string
	err := c.source.QueryRow(ctx, "SELECT coalesce(wait_event_type || ':' || wait_event, 'running') FROM pg_stat_activity WHERE pid = $1 AND "+
		lost.StartSQL+" = $2 AND state = 'active' AND lower(coalesce(wait_event, '')) NOT IN ("+walsenderWaits+")",
		int64(b.PID), b.Start).Scan(&event)
	if err != nil {
		return ""
	}
	return event
}
