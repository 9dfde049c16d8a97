package cdc

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel/trace"

	"github.com/walhook/walhook/cdc/enqueue"
	"github.com/walhook/walhook/cdc/lost"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/cdc/source"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/pgnet"
	"github.com/walhook/walhook/internal/replslot"
)

// Options configure a Capture.
type Options struct {
	Config *config.Config
	// Source is a pool on the source database (catalog lookups, reading back
	// unchanged TOAST values). Its connections should use TimeZone=UTC and
	// DateStyle=ISO (SessionParams gives them).
	Source *pgxpool.Pool
	// Outbox is a pool on the database that holds the outbox.
	Outbox *pgxpool.Pool
	Logger zerolog.Logger
	// GroupRows and GroupDelay bound how many rows, and for how long, small
	// source transactions are grouped into one outbox transaction.
	GroupRows  int
	GroupDelay time.Duration
	// StatusInterval is how often the confirmed LSN is reported (default 10s).
	StatusInterval time.Duration
	// Silence is how long the replication stream may stay silent, once
	// walhook asked the server for a reply, before the connection is taken
	// for dead and replaced (default pgnet.Silence).
	Silence time.Duration
	// Observer, when set, is told about every committed batch of rows.
	Observer Observer
	// Enqueued, when set, is called right after every outbox commit that
	// enqueued rows: walhook run wakes its own dispatcher with it, without
	// waiting for the NOTIFY (which still wakes other processes).
	Enqueued func()
	// NotifyPayload is the payload of the NOTIFY after each such commit:
	// walhook run sets one of its own, which its dispatcher ignores.
	NotifyPayload string
	// Tracer, when set, records a span per captured source transaction
	// (Begin to Commit: its commit LSN and changes) and per outbox commit
	// (the rows enqueued). Nil costs nothing.
	Tracer trace.Tracer
}

// SessionParams are the runtime parameters that pin the text format of
// values, for both the replication connection and the source pool: a
// setting made with ALTER DATABASE or ALTER ROLE must not change a payload.
// extra_float_digits = 3 gives the shortest exact float text on PostgreSQL 12+
// (and 17 digits before); lc_monetary = C fixes the money format.
var SessionParams = map[string]string{
	"TimeZone":           "UTC",
	"DateStyle":          "ISO, YMD",
	"IntervalStyle":      "postgres",
	"bytea_output":       "hex",
	"extra_float_digits": "3",
	"lc_monetary":        "C",
	"application_name":   "walhook",
}

// Capture streams changes from the source database into the outbox.
type Capture struct {
	cfg    *config.Config
	source *pgxpool.Pool
	outbox *pgxpool.Pool
	store  *outbox.Store // the outbox's statements
	log    zerolog.Logger
	opts   Options
	models map[string]*config.Model
	// byOID maps the OIDs of the configured tables, resolved by Prepare, to
	// their models: a table renamed or moved while walhook runs keeps its
	// model (its Relation message carries the new name).
	byOID  map[uint32]*config.Model
	hooks  map[string]map[string][]string
	losses lossCounts
	// stall, when set, says why capture is holding changes back.
	stall atomic.Pointer[string]
	// lookupErrors counts failed lookup queries that were retried.
	lookupErrors atomic.Int64
	// gaps counts starts after a gap; window is the LSN range where new
	// changes may collide with the old history, collided counts those
	// (reconcileCheckpoint).
	gaps     atomic.Int64
	window   atomic.Pointer[enqueue.GapWindow]
	collided atomic.Int64
	types    *typeCache

	// confirmed is the last LSN reported to the server; received the end
	// LSN of the last source transaction received; both for status.
	confirmed atomic.Uint64
	received  atomic.Uint64
	streaming atomic.Bool
	enqueued  atomic.Int64
	// safeInserts makes the writer use INSERT ... ON CONFLICT instead of
	// COPY, after a replay met rows already enqueued.
	safeInserts atomic.Bool
	// sessions counts replication sessions started (the first follows
	// Prepare's checks; later ones check the slot again).
	sessions atomic.Int64
	// alterFailover, when set, is the failover setting the slot must be
	// given before streaming (ALTER_REPLICATION_SLOT).
	alterFailover *bool
	// failover is the slot's failover state as last read, for status.
	failover atomic.Pointer[FailoverState]
	// leftBehind is the outbox session a writer lost on a dead path (its
	// server process may still hold an open transaction); the next
	// session's writer ends it first. Only Run's goroutine uses it.
	leftBehind *lost.Backend
	// walsender is the server process of the current replication
	// connection; lostWalsender that of one given up on, which the next
	// session ends if it still runs (lost.End). Only Run's goroutine uses
	// them.
	walsender, lostWalsender *lost.Backend
	// reload holds the configurations the stream renders with and a
	// reload waiting for it (Reload); reloadPending says one waits.
	reload        reloads
	reloadPending atomic.Bool
}

// New returns a Capture; call Prepare, then Run.
func New(opts Options) (*Capture, error) {
	if opts.Config == nil || opts.Source == nil || opts.Outbox == nil {
		return nil, errors.New("cdc: Config, Source and Outbox are required")
	}
	if opts.GroupRows <= 0 {
		opts.GroupRows = 2000
	}
	if opts.GroupDelay <= 0 {
		opts.GroupDelay = 20 * time.Millisecond
	}
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.Silence <= 0 {
		opts.Silence = pgnet.Silence
	}
	c := newCapture(opts)
	c.store = outbox.New(opts.Outbox, opts.Config.Database.Schema)
	return c, nil
}

// newCapture is the Capture of opts without its outbox (what rendering
// needs: the models, webhooks and type cache).
func newCapture(opts Options) *Capture {
	c := &Capture{
		cfg: opts.Config, source: opts.Source, outbox: opts.Outbox, opts: opts,
		log:    opts.Logger.With().Str("component", "capture").Logger(),
		models: map[string]*config.Model{},
		byOID:  map[uint32]*config.Model{},
		hooks:  hookIndex(opts.Config),
		types:  &typeCache{pool: opts.Source, info: map[uint32]payload.TypeInfo{}},
	}
	c.types.log = c.log
	for i := range opts.Config.Models {
		m := &opts.Config.Models[i]
		c.models[m.QualifiedTable()] = m
	}
	return c
}

// Observer is told about committed outbox rows (for metrics). Counts are
// delivery rows, i.e. changes times matching webhooks.
type Observer interface {
	Enqueued(model, event string, rows int)
}

// LossObserver is told, when the Options' Observer implements it too, about
// every change capture sends nothing for, so that it can count them
// (walhook_changes_unmapped_total{table}, walhook_truncates_total{table}).
type LossObserver interface {
	// Unmapped: a change of a published table that no model maps.
	Unmapped(table string)
	// Truncated: a TRUNCATE of a captured table (its rows are not sent).
	Truncated(table string)
}

// lossCounts counts, per table, the changes capture sent nothing for.
type lossCounts struct {
	mu        sync.Mutex
	unmapped  map[string]int64
	truncated map[string]int64
}

// add counts one loss in m (unmapped or truncated) and reports whether it
// is the table's first.
func (l *lossCounts) add(m *map[string]int64, table string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if *m == nil {
		*m = map[string]int64{}
	}
	(*m)[table]++
	return (*m)[table] == 1
}

func (l *lossCounts) snapshot(m map[string]int64) map[string]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Unmapped returns, per table, how many changes of published tables that no
// model maps were seen (and not sent) since the Capture started.
func (c *Capture) Unmapped() map[string]int64 { return c.losses.snapshot(c.losses.unmapped) }

// Truncated returns, per table, how many TRUNCATEs of captured tables were
// seen (their rows are not sent) since the Capture started.
func (c *Capture) Truncated() map[string]int64 { return c.losses.snapshot(c.losses.truncated) }

// Stall says why capture is holding changes back ("" when it is not): a
// source transaction not yet visible to lookups, or a lookup that keeps
// failing. For /readyz and the status page.
func (c *Capture) Stall() string {
	if p := c.stall.Load(); p != nil {
		return *p
	}
	return ""
}

// LookupErrors is how many lookup queries (relations, computed fields,
// unchanged-TOAST read-backs) failed and were retried since the Capture
// started.
func (c *Capture) LookupErrors() int64 { return c.lookupErrors.Load() }

func (c *Capture) setStall(msg string) {
	if msg == "" {
		c.stall.Store(nil)
		return
	}
	c.stall.Store(&msg)
}

// Streaming reports whether the replication stream is connected.
func (c *Capture) Streaming() bool { return c.streaming.Load() }

// ConfirmedLSN is the LSN last confirmed to the server.
func (c *Capture) ConfirmedLSN() pglogrepl.LSN { return pglogrepl.LSN(c.confirmed.Load()) }

// Enqueued is how many delivery rows this Capture has committed.
func (c *Capture) Enqueued() int64 { return c.enqueued.Load() }

// Prepare checks the server and the configured tables, then creates or
// updates the publication and creates the slot (publication first: a slot
// cannot decode with a publication created after it). Problems with the
// configuration come back as *config.Error; ones retrying cannot fix as
// *source.FatalError.
func (c *Capture) Prepare(ctx context.Context) error {
	conn, err := c.source.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect to source database: %w", err)
	}
	defer conn.Release()
	if err := source.CheckServer(ctx, conn); err != nil {
		return err
	}
	if err := source.CheckTables(ctx, conn, c.cfg); err != nil {
		return err
	}
	byOID, err := source.ModelsByOID(ctx, conn, c.cfg)
	if err != nil {
		return err
	}
	maps.Copy(c.byOID, byOID)
	// Serialise set-up between processes starting together.
	key := "walhook.setup." + c.cfg.Database.Slot
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(hashtext($1))", key); err != nil {
		return fmt.Errorf("set-up lock: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(hashtext($1))", key) }()
	var pubExisted bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", c.cfg.Database.Publication).Scan(&pubExisted); err != nil {
		return fmt.Errorf("read publication: %w", err)
	}
	changed, err := source.EnsurePublication(ctx, conn, c.cfg, func(msg string) { c.log.Warn().Str("publication", c.cfg.Database.Publication).Msg(msg) })
	if err != nil {
		return err
	}
	if changed {
		c.log.Info().Str("publication", c.cfg.Database.Publication).Bool("created", !pubExisted).Msg("publication set to the configured tables")
	}
	if err := c.claimOwnWebhooks(ctx); err != nil {
		return err
	}
	ckpt, err := c.store.ReadCheckpointState(ctx, c.cfg.Database.Slot)
	if err != nil {
		return err
	}
	res, err := source.EnsureSlot(ctx, conn, c.cfg, !pubExisted)
	if err != nil {
		return err
	}
	c.alterFailover = res.AlterFailover
	if res.Created && !ckpt.Exists && res.Recreated == "" {
		c.log.Info().Str("slot", c.cfg.Database.Slot).Msg("replication slot created")
	}
	return c.reconcileCheckpoint(ctx, conn, ckpt, res.Created, res.Recreated)
}

// Run streams until ctx ends, reconnecting with backoff when PostgreSQL goes
// away. It returns nil on cancellation and an error only for problems that
// retrying cannot fix.
func (c *Capture) Run(ctx context.Context) error {
	backoff := 500 * time.Millisecond
	lastHolder := ""
	for {
		start := time.Now()
		err := c.session(ctx)
		c.streaming.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if c.walsender != nil {
			c.lostWalsender, c.walsender = c.walsender, nil
		}
		if IsFatal(err) {
			return err
		}
		if time.Since(start) > time.Minute {
			backoff = 500 * time.Millisecond
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == pgerrcode.ObjectInUse {
			// The slot is our lock: poll it briskly so a standby takes over
			// within seconds when the capturing process dies.
			if holder := c.slotHolder(ctx); holder != lastHolder {
				lastHolder = holder
				c.log.Info().Str("slot", c.cfg.Database.Slot).Msgf("slot %s is held by %s: another walhook or replication client; waiting to take over (if it is not a walhook, end it with SELECT pg_terminate_backend(pid))", c.cfg.Database.Slot, holder)
			}
			backoff = time.Second
		} else {
			c.log.Warn().Err(err).Dur("retry_in_ms", backoff).Msg("capture interrupted; reconnecting")
		}
		wait := backoff + time.Duration(rand.Int64N(int64(backoff)/2+1))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		if !(errors.As(err, &pe) && pe.Code == pgerrcode.ObjectInUse) {
			backoff = min(backoff*2, 15*time.Second)
		}
	}
}

// slotHolder describes the process holding the slot, for logs.
func (c *Capture) slotHolder(ctx context.Context) string {
	ctx, cancel := pgnet.Bound(ctx)
	defer cancel()
	s, found, err := replslot.Read(ctx, c.source, c.cfg.Database.Slot)
	if err != nil || !found || s.ActivePID == nil {
		return "another process"
	}
	cl, err := replslot.Holder(ctx, c.source, *s.ActivePID)
	if err != nil {
		return fmt.Sprintf("pid %d", cl.PID)
	}
	if cl.Addr == "" {
		cl.Addr = "local"
	}
	return fmt.Sprintf("pid %d (application_name %q, client %s)", cl.PID, cl.ApplicationName, cl.Addr)
}

// ReplicationConfig parses dsn into a replication connection config with
// the session parameters pinned, a connect timeout, TCP keepalives and
// TCP_USER_TIMEOUT (pgnet.Configure).
func ReplicationConfig(dsn string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse database.dsn: %w", err)
	}
	pgnet.Configure(cfg)
	for k, v := range SessionParams {
		cfg.RuntimeParams[k] = v
	}
	cfg.RuntimeParams["replication"] = "database"
	return cfg, nil
}

func (c *Capture) session(ctx context.Context) error {
	slot := c.cfg.Database.Slot
	qctx, cancel := pgnet.Bound(ctx)
	startLSN, err := c.store.CheckpointLSN(qctx, slot)
	cancel()
	if err != nil {
		return err
	}
	rcfg, err := ReplicationConfig(c.cfg.Database.DSN)
	if err != nil {
		return &source.FatalError{Err: err}
	}
	conn, err := pgconn.ConnectConfig(ctx, rcfg)
	if err != nil {
		return fmt.Errorf("replication connection: %w", err)
	}
	defer func() {
		// Bounded: on a dead path even the goodbye must not hang.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if gone := c.lostWalsender; gone != nil {
		c.lostWalsender = nil
		if ended, err := lost.End(ctx, c.source, *gone); err != nil {
			c.log.Warn().Err(err).Msg("could not end the replication session the last attempt gave up on; it holds the slot until wal_sender_timeout")
		} else if ended {
			c.log.Warn().Uint32("pid", gone.PID).Msg("ended the replication session the last attempt gave up on (its walsender was still running, holding the slot)")
		}
	}
	qctx, cancel = pgnet.Bound(ctx)
	self, err := lost.SelfReplication(qctx, conn)
	cancel()
	if err != nil {
		c.log.Debug().Err(err).Msg("the replication session cannot be ended from elsewhere if it is lost")
	} else {
		c.walsender = &self
	}
	if c.sessions.Add(1) > 1 {
		// A reconnection, perhaps to another server (a promoted standby):
		// check the slot against the checkpoint again, as Prepare did.
		qctx, cancel = pgnet.Bound(ctx)
		startLSN, err = c.recheckSlot(qctx)
		cancel()
		if err != nil {
			return err
		}
	}
	if on := c.alterFailover; on != nil {
		qctx, cancel = pgnet.Bound(ctx)
		err = c.setFailover(qctx, conn, *on)
		cancel()
		if err != nil {
			return err
		}
	}
	qctx, cancel = pgnet.Bound(ctx)
	guard, err := newStandbyGuard(qctx, c.outbox, c.log)
	cancel()
	if err != nil {
		return err
	}
	// Names were validated as plain identifiers: pglogrepl pastes them into SQL.
	qctx, cancel = pgnet.Bound(ctx)
	err = pglogrepl.StartReplication(qctx, conn, slot, startLSN, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + c.cfg.Database.Publication + "'"},
	})
	cancel()
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == pgerrcode.UndefinedObject {
			return source.Fatalf("start replication: replication slot %s no longer exists (dropped by someone else, or a failover to a server without a synced copy of it: see database.slot_failover): restart walhook to create it again; changes committed after LSN %s will not be captured", slot, startLSN)
		}
		if errors.As(err, &pe) && pe.Code == pgerrcode.ObjectNotInPrerequisiteState {
			// Invalidated since Prepare: the next session's recheckSlot
			// creates it again and reports the gap.
			return fmt.Errorf("start replication on slot %s: %w: the slot can no longer be used; walhook creates it again (changes in between are not captured)", slot, err)
		}
		return fmt.Errorf("start replication on slot %s: %w", slot, err)
	}
	c.streaming.Store(true)
	c.confirmed.Store(uint64(startLSN)) // the slot is confirmed at least this far
	c.log.Info().Str("slot", slot).Str("from", startLSN.String()).Bool("standby_guard", guard != nil).Msg("streaming changes")
	fctx, stopFailover := context.WithCancel(ctx)
	var fwg sync.WaitGroup
	defer func() { stopFailover(); fwg.Wait() }()
	fwg.Add(1)
	go func() {
		defer fwg.Done()
		for {
			c.readFailover(fctx)
			select {
			case <-fctx.Done():
				return
			case <-time.After(time.Minute):
			}
		}
	}()

	var observe func(model, event string, rows int)
	if c.opts.Observer != nil {
		observe = c.opts.Observer.Enqueued
	}
	w := enqueue.New(enqueue.Options{Pool: c.outbox, Store: c.store, Slot: slot, GroupRows: c.opts.GroupRows, GroupDelay: c.opts.GroupDelay,
		Flushed: startLSN, Rows: &c.enqueued, Safe: &c.safeInserts, Observe: observe, Enqueued: c.opts.Enqueued, NotifyPayload: c.opts.NotifyPayload,
		Log: c.log, Tracer: c.opts.Tracer,
		EndFirst: c.leftBehind, Window: &c.window, Collided: &c.collided})
	wctx, cancelWriter := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWriter()
	ch := make(chan enqueue.Batch, 16)
	werr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		werr <- w.Run(wctx, ch)
	}()
	s := &stream{
		conn: conn, c: c, w: w, out: ch, werr: werr, log: c.log, interval: c.opts.StatusInterval,
		rels: map[uint32]*payload.Relation{}, rd: payload.Renderer{Resolve: c.types.resolve}, confirmed: startLSN,
		lastSentEnd: startLSN, lastIdle: time.Now(), guard: guard, silence: c.opts.Silence,
	}
	var wake context.CancelFunc
	s.wake, wake = context.WithCancel(ctx)
	gens, err := c.renderings(startLSN, wake)
	if err != nil {
		wake()
		cancelWriter()
		wg.Wait()
		return &source.FatalError{Err: err}
	}
	defer c.detach()
	s.gen, s.next = gens[0], gens[1:]
	err = s.run(ctx)
	c.streaming.Store(false) // at once: /readyz must not wait for the writer to stop
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == pgerrcode.UndefinedObject && strings.Contains(pe.Message, "publication") {
		err = c.publicationDropped(err, s.confirmed)
	}
	// Stop the writer: on shutdown it commits what is complete; on an error
	// it rolls back and the next session replays from the checkpoint.
	if ctx.Err() != nil {
		close(ch)
	} else {
		cancelWriter()
	}
	wg.Wait()
	c.leftBehind = w.Left()
	if ctx.Err() != nil {
		// Confirm what was committed before leaving.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if serr := s.sendStatus(sctx); serr != nil {
			c.log.Debug().Err(serr).Msg("final status update")
		}
		c.log.Info().Str("confirmed", s.confirmed.String()).Msg("capture stopped")
	}
	return err
}

// typeCache resolves non-built-in type OIDs (enums, domains, arrays of
// them) from the catalog, once per OID.
type typeCache struct {
	pool *pgxpool.Pool
	log  zerolog.Logger
	mu   sync.RWMutex
	info map[uint32]payload.TypeInfo
	// names are the types' names from pgoutput's Type messages, which
	// describe a type as it was when the change was written.
	names map[uint32]string
}

// named records a type's name from a Type message.
func (t *typeCache) named(oid uint32, name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.names == nil {
		t.names = map[uint32]string{}
	}
	t.names[oid] = name
}

func (t *typeCache) resolve(oid uint32) (payload.TypeInfo, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	ti, ok := t.info[oid]
	return ti, ok
}

// resolveOID loads oid (and its element or base type) unless built in.
func (t *typeCache) resolveOID(ctx context.Context, oid uint32) error {
	for depth := 0; oid >= 16384 && depth < 8; depth++ {
		if _, ok := t.resolve(oid); ok {
			return nil
		}
		var typtype, category string
		var base, elem uint32
		var delim string
		qctx, cancel := pgnet.Bound(ctx)
		err := t.pool.QueryRow(qctx, `SELECT t.typtype::text, t.typcategory::text, t.typbasetype, t.typelem, coalesce(e.typdelim::text, ',')
			FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem WHERE t.oid = $1`, oid).Scan(&typtype, &category, &base, &elem, &delim)
		cancel()
		if errors.Is(err, pgx.ErrNoRows) {
			// Dropped since (the stream decodes WAL written before, e.g.
			// after ALTER COLUMN ... TYPE; DROP TYPE while capture lagged):
			// render its values as their text, and say so once.
			t.mu.Lock()
			t.info[oid] = payload.TypeInfo{}
			name := t.names[oid]
			t.mu.Unlock()
			if name == "" {
				name = "(name unknown)"
			}
			t.log.Warn().Uint32("type_oid", oid).Str("type", name).
				Msg("a column's type no longer exists in the catalog (dropped after the change was written): its values render as JSON strings of their text")
			return nil
		}
		if err != nil {
			return fmt.Errorf("look up type %d: %w", oid, err)
		}
		var ti payload.TypeInfo
		next := uint32(0)
		switch {
		case typtype == "d":
			ti.BaseOID, next = base, base
		case category == "A" && elem != 0:
			ti.ElemOID, next = elem, elem
			ti.Delim = ','
			if delim != "" {
				ti.Delim = delim[0]
			}
		}
		t.mu.Lock()
		t.info[oid] = ti
		t.mu.Unlock()
		oid = next
	}
	return nil
}

// IsFatal reports whether err cannot be fixed by retrying.
func IsFatal(err error) bool {
	var fe *source.FatalError
	var ce *config.Error
	return errors.As(err, &fe) || errors.As(err, &ce)
}
