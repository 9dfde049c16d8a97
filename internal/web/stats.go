package web

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/replslot"
)

const (
	// statsTimeout bounds the queries behind one scrape or page.
	statsTimeout = 5 * time.Second
	// statsMaxAge is how long a result is reused: scrapes and page views
	// arriving together run the queries once.
	statsMaxAge = time.Second
)

// hookStats are one webhook's outbox counts. Delivered rows are not
// counted: there can be millions of them, and the delivery counters say
// how many were sent.
type hookStats struct {
	Pending, Delivering, Failed int64
	// OldestAge is how long ago the oldest pending or delivering change
	// was committed; 0 when there is none.
	OldestAge time.Duration
}

// slotStats describe the replication slot.
type slotStats struct {
	Active bool
	// LagBytes is WAL written since the slot's confirmed_flush_lsn;
	// RetainedBytes is WAL the server keeps for it (since restart_lsn).
	LagBytes, RetainedBytes int64
	// Failover is true for a failover slot; FailoverReady when the
	// standbys in synchronized_standby_slots keep a copy (FailoverWhy says
	// what is missing otherwise); Invalidation why PostgreSQL gave the slot
	// up ("" while usable).
	Failover, FailoverReady   bool
	FailoverWhy, Invalidation string
}

// outboxStats is one reading of the outbox and the slot.
type outboxStats struct {
	Hooks map[string]*hookStats
	// Err is why the outbox could not be read (Hooks is then empty).
	Err error
	// Slot is nil when the slot is unknown: no slot database, no such
	// slot, or SlotErr.
	Slot    *slotStats
	SlotErr error
}

// hookNames returns the webhooks of s and extra, sorted.
func (s *outboxStats) hookNames(extra []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range extra {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	for n := range s.Hooks {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// statsReader runs the stats queries, at most once per statsMaxAge.
type statsReader struct {
	store  *outbox.Store
	slotDB *pgxpool.Pool // nil: no slot stats
	slot   string

	mu   sync.Mutex
	last *outboxStats
	at   time.Time
}

func newStatsReader(store *outbox.Store, slotDB *pgxpool.Pool, slot string) *statsReader {
	return &statsReader{store: store, slotDB: slotDB, slot: slot}
}

// read returns the current stats, reusing a reading younger than
// statsMaxAge. Errors are in the result.
func (r *statsReader) read(ctx context.Context) *outboxStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last != nil && time.Since(r.at) < statsMaxAge {
		return r.last
	}
	ctx, cancel := context.WithTimeout(ctx, statsTimeout)
	defer cancel()
	s := &outboxStats{Hooks: map[string]*hookStats{}}
	if err := r.readOutbox(ctx, s); err != nil {
		s.Err = err
		s.Hooks = map[string]*hookStats{}
	}
	if r.slotDB != nil {
		s.Slot, s.SlotErr = r.readSlot(ctx)
	}
	if ctx.Err() == nil || s.Err == nil {
		// A reading cut short by the caller going away is not kept.
		r.last, r.at = s, time.Now()
	}
	return s
}

// invalidate makes the next read query the database, after a change the
// page must show at once.
func (r *statsReader) invalidate() {
	r.mu.Lock()
	r.last = nil
	r.mu.Unlock()
}

func (r *statsReader) readOutbox(ctx context.Context, s *outboxStats) error {
	counts, err := r.store.CountOpen(ctx)
	if err != nil {
		return err
	}
	for name, c := range counts {
		h := &hookStats{Pending: c.Pending, Delivering: c.Delivering, Failed: c.Failed}
		if c.OldestPendingAge != nil {
			h.OldestAge = *c.OldestPendingAge
		}
		s.Hooks[name] = h
	}
	return nil
}

func (r *statsReader) readSlot(ctx context.Context) (*slotStats, error) {
	sl, found, err := replslot.Read(ctx, r.slotDB, r.slot)
	if err != nil || !found {
		return nil, err
	}
	s := slotStats{Active: sl.Active, Failover: sl.Failover, Invalidation: sl.Invalidation}
	if st, err := replslot.ReadStandbys(ctx, r.slotDB); err == nil {
		s.FailoverReady, s.FailoverWhy = replslot.FailoverReady(sl, st)
	}
	if sl.LagBytes != nil {
		s.LagBytes = *sl.LagBytes
	}
	if sl.RetainedBytes != nil {
		s.RetainedBytes = *sl.RetainedBytes
	}
	return &s, nil
}

// collector exposes the stats and the capture state at scrape time.
type collector struct {
	stats    *statsReader
	capture  CaptureStatus
	webhooks []string // configured, always exposed
	slot     string

	depth, oldest, up        *prometheus.Desc
	slotLag, slotWAL, slotUp *prometheus.Desc
	slotFailover, slotLost   *prometheus.Desc
	connected, confirmed     *prometheus.Desc
	stalled, lookupErrors    *prometheus.Desc
	collisions               *prometheus.Desc
}

func newCollector(stats *statsReader, capture CaptureStatus, webhooks []string, slot string) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	return &collector{
		stats: stats, capture: capture, webhooks: webhooks, slot: slot,
		depth:        d("outbox_deliveries", "Deliveries in the outbox by webhook and state (pending, delivering, failed; delivered rows are not counted).", "webhook", "state"),
		oldest:       d("outbox_oldest_pending_seconds", "Age since commit of the oldest pending or delivering delivery, by webhook; 0 when there is none.", "webhook"),
		up:           d("outbox_up", "1 if the outbox could be read at this scrape, else 0.", nil...),
		slotLag:      d("slot_lag_bytes", "WAL bytes written since the replication slot's confirmed_flush_lsn.", "slot"),
		slotWAL:      d("slot_retained_wal_bytes", "WAL bytes the server keeps for the replication slot (since its restart_lsn).", "slot"),
		slotUp:       d("slot_active", "1 if a walhook process is streaming from the replication slot, else 0.", "slot"),
		slotFailover: d("slot_failover_ready", "1 if the replication slot is a failover slot that the standbys in synchronized_standby_slots (connected) keep a copy of (PostgreSQL 17+), else 0.", "slot"),
		slotLost:     d("slot_invalidated", "1 if PostgreSQL gave the replication slot up (max_slot_wal_keep_size, idle_replication_slot_timeout, ...; the reason is in walhook status), else 0.", "slot"),
		connected:    d("replication_connected", "1 while this process's capture is streaming from the slot, else 0.", nil...),
		confirmed:    d("replication_confirmed_lsn", "The LSN this process's capture last confirmed to the server, as a number (bytes).", nil...),
		stalled:      d("capture_stalled", "1 while this process's capture holds changes back (a source transaction not yet visible, or a lookup that keeps failing), else 0.", nil...),
		lookupErrors: d("lookup_errors_total", "Relation and computed-field lookups of this process's capture that failed (each is retried, or the field omitted with on_lookup_error: omit).", nil...),
		collisions:   d("capture_collisions_total", "Changes this process's capture could not enqueue after a gap because an old delivery holds the same (webhook, commit LSN, seq): resend those objects with a backfill.", nil...),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.depth, c.oldest, c.up, c.slotLag, c.slotWAL, c.slotUp, c.slotFailover, c.slotLost, c.connected, c.confirmed,
		c.stalled, c.lookupErrors, c.collisions} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	if c.capture != nil {
		ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, boolValue(c.capture.Streaming()))
		ch <- prometheus.MustNewConstMetric(c.confirmed, prometheus.GaugeValue, float64(c.capture.ConfirmedLSN()))
		ch <- prometheus.MustNewConstMetric(c.stalled, prometheus.GaugeValue, boolValue(c.capture.Stall() != ""))
		ch <- prometheus.MustNewConstMetric(c.lookupErrors, prometheus.CounterValue, float64(c.capture.LookupErrors()))
		ch <- prometheus.MustNewConstMetric(c.collisions, prometheus.CounterValue, float64(c.capture.Collisions()))
	}
	s := c.stats.read(context.Background())
	if s.Err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
	} else {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
		for _, name := range s.hookNames(c.webhooks) {
			h := s.Hooks[name]
			if h == nil {
				h = &hookStats{}
			}
			ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(h.Pending), name, string(outbox.StatePending))
			ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(h.Delivering), name, string(outbox.StateDelivering))
			ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(h.Failed), name, string(outbox.StateFailed))
			ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, h.OldestAge.Seconds(), name)
		}
	}
	if s.Slot != nil {
		ch <- prometheus.MustNewConstMetric(c.slotLag, prometheus.GaugeValue, float64(s.Slot.LagBytes), c.slot)
		ch <- prometheus.MustNewConstMetric(c.slotWAL, prometheus.GaugeValue, float64(s.Slot.RetainedBytes), c.slot)
		ch <- prometheus.MustNewConstMetric(c.slotUp, prometheus.GaugeValue, boolValue(s.Slot.Active), c.slot)
		ch <- prometheus.MustNewConstMetric(c.slotFailover, prometheus.GaugeValue, boolValue(s.Slot.FailoverReady), c.slot)
		ch <- prometheus.MustNewConstMetric(c.slotLost, prometheus.GaugeValue, boolValue(s.Slot.Invalidation != ""), c.slot)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
