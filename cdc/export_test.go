package cdc

import (
	"github.com/walhook/walhook/internal/config"
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
