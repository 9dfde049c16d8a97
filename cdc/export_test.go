package cdc

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
)

// What the external tests (package cdc_test) see of the internals.

// SetMaxCoalesceObjects sets maxCoalesceObjects until restore is called.
func SetMaxCoalesceObjects(n int) (restore func()) {
	prev := maxCoalesceObjects
	maxCoalesceObjects = n
	return func() { maxCoalesceObjects = prev }
}

// Attached reports whether a stream takes reloads.
func (c *Capture) Attached() bool {
	c.reload.mu.Lock()
	defer c.reload.mu.Unlock()
	return c.reload.attached
}

// Sessions counts the replication sessions started.
func (c *Capture) Sessions() int64 { return c.sessions.Load() }

// Renders reports whether the newest configuration the capture may render
// with is cfg.
func (c *Capture) Renders(cfg *config.Config) bool {
	c.reload.mu.Lock()
	defer c.reload.mu.Unlock()
	g := c.reload.gens
	return len(g) > 0 && g[len(g)-1].cfg == cfg
}

// WriteAfterGap writes rows as one transaction ending at end, with the LSNs
// from (exclusive) to to (inclusive) a gap window, and returns how many
// collided with the old history.
func WriteAfterGap(ctx context.Context, pool *pgxpool.Pool, slot string, from, to pglogrepl.LSN, rows []Delivery, end pglogrepl.LSN, log zerolog.Logger) (int64, error) {
	var window atomic.Pointer[gapWindow]
	window.Store(&gapWindow{from: from, to: to, before: time.Now()})
	var collided, n atomic.Int64
	var safe atomic.Bool
	w := newWriter(pool, outbox.New(pool, "walhook"), slot, 2000, 20*time.Millisecond, &n, &safe, nil, log)
	w.window, w.collided = &window, &collided
	ch := make(chan batch, 1)
	ch <- batch{rows: rows, commit: true, endLSN: end}
	close(ch)
	err := w.run(ctx, ch)
	return collided.Load(), err
}
