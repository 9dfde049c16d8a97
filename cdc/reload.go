package cdc

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/walhook/walhook/cdc/catalog"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/cdc/source"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/pgnet"
)

// rendering is one configuration as capture renders it: its models by
// table and by OID, its webhooks by model and event, their compiled
// templates and conditions. It applies to the source transactions whose
// commit LSN is at least from, until the next rendering's from; the stream
// switches between transactions, so that a configuration changes from one
// source transaction on, the same for every webhook.
type rendering struct {
	cfg    *config.Config
	models map[string]*config.Model
	byOID  map[uint32]*config.Model
	hooks  map[string]map[string][]string
	tpl    *payload.Templater
	specs  map[string]*payload.HookSpec
	from   pglogrepl.LSN
}

// newRendering compiles cfg's webhooks for rendering; byOID maps the OIDs
// of its tables (nil: none known).
func newRendering(cfg *config.Config, byOID map[uint32]*config.Model) (*rendering, error) {
	r := &rendering{cfg: cfg, models: map[string]*config.Model{}, byOID: byOID, hooks: hookIndex(cfg), tpl: payload.NewTemplater()}
	if r.byOID == nil {
		r.byOID = map[uint32]*config.Model{}
	}
	for i := range cfg.Models {
		m := &cfg.Models[i]
		r.models[m.QualifiedTable()] = m
	}
	var err error
	if r.specs, err = payload.HookSpecs(cfg, r.tpl); err != nil {
		return nil, err
	}
	return r, nil
}

// reloads holds what Reload hands to the stream.
type reloads struct {
	mu sync.Mutex
	// gens are the renderings a session may need, oldest first: gens[0]
	// applies from the checkpoint on, each later one from its from on.
	// Empty until the first session (then the configuration of New).
	gens []*rendering
	// req is a reload the stream has not taken yet.
	req *reloadReq
	// attached is true while a stream runs; wake ends its wait for the
	// next message, so that it takes req at once.
	attached bool
	wake     context.CancelFunc
	// serial makes reloads one at a time.
	serial sync.Mutex
}

type reloadReq struct {
	r    *rendering
	done chan reloadDone // buffered: the stream never waits on it
	// gaveUp is set when Reload returned without the outcome (capture
	// was not streaming): the stream then logs it at info level.
	gaveUp atomic.Bool
}

type reloadDone struct {
	from pglogrepl.LSN
	err  error
}

// ReloadResult says where a reloaded configuration starts.
type ReloadResult struct {
	// From is the commit LSN the configuration starts at: every source
	// transaction whose commit LSN is at least From is rendered with it,
	// every earlier one with the configuration before.
	From pglogrepl.LSN
	// Pending is true when capture is not streaming (another process holds
	// the slot, or it is reconnecting): the configuration applies when it
	// streams again, and From is not known yet.
	Pending bool
}

// reloadWait bounds how long Reload waits for the stream to take a
// configuration (it takes it between two source transactions).
const reloadWait = 30 * time.Second

// pubLockTimeout bounds how long adding or removing tables waits for the
// tables' writers (the lock makes the publication change land between
// transactions of those tables).
const pubLockTimeout = 5 * time.Second

// Reload checks next against the source database (its tables and columns,
// as at start: a *config.Error) and hands it to the stream, which applies
// it between two source transactions: tables added to or removed from the
// models are added to or removed from the publication then, and the new
// rendering applies from the commit LSN it reports on. On an error nothing
// changes. Keys that need a restart (DSNs, slot, publication, schema) must
// be checked by the caller (config.Compare): Reload ignores them.
func (c *Capture) Reload(ctx context.Context, next *config.Config) (ReloadResult, error) {
	c.reload.serial.Lock()
	defer c.reload.serial.Unlock()
	qctx, cancel := pgnet.Bound(ctx) // the checks: a few short statements
	defer cancel()
	conn, err := c.source.Acquire(qctx)
	if err != nil {
		return ReloadResult{}, fmt.Errorf("connect to source database: %w", err)
	}
	err = source.CheckTables(qctx, conn, next)
	var byOID map[uint32]*config.Model
	if err == nil {
		byOID, err = source.ModelsByOID(qctx, conn, next)
	}
	conn.Release()
	if err != nil {
		return ReloadResult{}, err
	}
	r, err := newRendering(next, byOID)
	if err != nil {
		return ReloadResult{}, &config.Error{Problems: []config.Problem{{File: next.File, Msg: err.Error()}}}
	}
	// Claim the new webhook names before rows are written for them (the
	// names of the running configuration stay claimed: it may still write
	// rows for them until the new one starts).
	names := c.capturedWebhooks()
	for _, evs := range r.hooks {
		for _, ns := range evs {
			names = append(names, ns...)
		}
	}
	slices.Sort(names)
	if err := c.claimWebhooks(qctx, slices.Compact(names)); err != nil {
		return ReloadResult{}, err
	}

	req := &reloadReq{r: r, done: make(chan reloadDone, 1)}
	c.reload.mu.Lock()
	attached, wake := c.reload.attached, c.reload.wake
	if !attached {
		req.gaveUp.Store(true)
	}
	c.reload.req = req
	c.reloadPending.Store(true)
	c.reload.mu.Unlock()
	if !attached {
		return ReloadResult{Pending: true}, nil
	}
	if wake != nil {
		wake()
	}
	t := time.NewTimer(reloadWait)
	defer t.Stop()
	select {
	case d := <-req.done:
		if d.err != nil {
			return ReloadResult{}, d.err
		}
		return ReloadResult{From: d.from}, nil
	case <-t.C:
	case <-ctx.Done():
	}
	req.gaveUp.Store(true)
	return ReloadResult{Pending: true}, nil
}

// renderings returns the renderings a session starting at start needs
// (the first applies from start on) and attaches the stream: wake is how
// Reload wakes it.
func (c *Capture) renderings(start pglogrepl.LSN, wake context.CancelFunc) ([]*rendering, error) {
	c.reload.mu.Lock()
	defer c.reload.mu.Unlock()
	if len(c.reload.gens) == 0 {
		// Prepare has resolved the tables' OIDs by now.
		r, err := newRendering(c.cfg, maps.Clone(c.byOID))
		if err != nil {
			return nil, err
		}
		c.reload.gens = []*rendering{r}
	}
	c.trimRenderings(start)
	c.reload.attached, c.reload.wake = true, wake
	return slices.Clone(c.reload.gens), nil
}

// setWake replaces the function that wakes the stream.
func (c *Capture) setWake(wake context.CancelFunc) {
	c.reload.mu.Lock()
	defer c.reload.mu.Unlock()
	c.reload.wake = wake
}

// trimRenderings drops the renderings no transaction at or after lsn
// needs. Call with reload.mu held.
func (c *Capture) trimRenderings(lsn pglogrepl.LSN) {
	g := c.reload.gens
	for len(g) > 1 && g[1].from <= lsn {
		g = g[1:]
	}
	c.reload.gens = g
}

// detach marks the stream gone: a reload not taken yet waits for the next
// session.
func (c *Capture) detach() {
	c.reload.mu.Lock()
	defer c.reload.mu.Unlock()
	if c.reload.wake != nil {
		c.reload.wake()
	}
	c.reload.attached, c.reload.wake = false, nil
}

// takeReload applies a reload waiting for the stream, if any; the stream
// calls it between source transactions. A failed reload changes nothing
// and capture goes on with the configuration it has.
func (s *stream) takeReload(ctx context.Context) error {
	if !s.c.reloadPending.Load() {
		return nil
	}
	s.c.reload.mu.Lock()
	req := s.c.reload.req
	s.c.reload.req = nil
	s.c.reloadPending.Store(false)
	s.c.reload.mu.Unlock()
	if req == nil {
		return nil
	}
	from, err := s.applyReload(ctx, req.r)
	req.done <- reloadDone{from: from, err: err}
	// The stream comes back from work that kept it from reading.
	s.lastHeard, s.asked = time.Now(), false
	if err != nil {
		s.log.Error().Err(err).Msg("configuration reload refused by capture: the previous configuration stays in use")
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	}
	ev := s.log.Debug()
	if req.gaveUp.Load() {
		ev = s.log.Info() // nobody else reports it
	}
	ev.Str("from_commit_lsn", from.String()).Str("config_hash", req.r.cfg.Hash).
		Msgf("reloaded configuration: source transactions with a commit LSN of %s or later are rendered with it", from)
	return nil
}

// applyReload gives r its start LSN (the publication changed first when
// tables come or go), records it and queues it for the next transactions.
func (s *stream) applyReload(ctx context.Context, r *rendering) (pglogrepl.LSN, error) {
	last := s.gen
	if len(s.next) > 0 {
		last = s.next[len(s.next)-1]
	}
	from := s.lastSentEnd
	if !slices.Equal(last.cfg.Tables(), r.cfg.Tables()) {
		l, err := s.c.updatePublication(ctx, last.cfg, r.cfg)
		if err != nil {
			return 0, err
		}
		from = l
	}
	from = max(from, last.from)
	r.from = from
	s.c.reload.mu.Lock()
	// A rendering queued for the same start or later is replaced.
	for g := s.c.reload.gens; len(g) > 1 && g[len(g)-1].from >= from; g = s.c.reload.gens {
		s.c.reload.gens = g[:len(g)-1]
	}
	s.c.reload.gens = append(s.c.reload.gens, r)
	s.c.hooks = r.hooks
	s.c.reload.mu.Unlock()
	for len(s.next) > 0 && s.next[len(s.next)-1].from >= from {
		s.next = s.next[:len(s.next)-1]
	}
	s.next = append(s.next, r)
	return from, nil
}

// switchRendering makes the stream render with the last queued rendering
// whose start is at or before commit (the commit LSN of the transaction
// about to begin), and rebuilds the tables it knows with it.
func (s *stream) switchRendering(ctx context.Context, commit pglogrepl.LSN) error {
	if len(s.next) == 0 || s.next[0].from > commit {
		return nil
	}
	for len(s.next) > 0 && s.next[0].from <= commit {
		s.gen, s.next = s.next[0], s.next[1:]
	}
	s.specs, s.tpl = s.gen.specs, s.gen.tpl
	for _, id := range slices.Sorted(maps.Keys(s.descs)) {
		if err := s.relation(ctx, s.descs[id]); err != nil {
			return err
		}
	}
	if s.w != nil {
		// Keep what a session starting at the checkpoint would need.
		s.c.reload.mu.Lock()
		s.c.trimRenderings(s.w.Flushed())
		s.c.reload.mu.Unlock()
	}
	return nil
}

// updatePublication sets the publication to next's tables, for a reload
// that adds or removes tables, and returns the LSN from which the change
// holds exactly: the tables that come and go are locked against writers
// (SHARE ROW EXCLUSIVE, for at most pubLockTimeout) while the publication
// changes, so every transaction that changed them and committed before the
// returned LSN did so under the old publication, and every one committing
// at or after it under the new one.
func (c *Capture) updatePublication(ctx context.Context, cur, next *config.Config) (pglogrepl.LSN, error) {
	ch := config.Compare(cur, next)
	ctx, cancel := pgnet.Bound(ctx) // a few statements, the lock wait bounded below
	defer cancel()
	conn, err := c.source.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("update publication: connect to source database: %w", err)
	}
	defer conn.Release()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("update publication: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = '%dms'", pubLockTimeout.Milliseconds())); err != nil {
		return 0, fmt.Errorf("update publication: %w", err)
	}
	// A standby (capture from a standby, 16+) can neither lock nor change
	// the publication: its owner changes it on the primary first, and the
	// reload starts at the position the standby has replayed.
	standby, err := source.InRecovery(ctx, tx)
	if err != nil {
		return 0, fmt.Errorf("update publication: %w", err)
	}
	for _, t := range append(slices.Clone(ch.TablesAdded), ch.TablesRemoved...) {
		if standby {
			break
		}
		schema, name, _ := strings.Cut(t, ".")
		ti, err := catalog.Find(ctx, tx, schema, name)
		if err != nil {
			return 0, fmt.Errorf("update publication: look up table %s: %w", t, err)
		}
		if ti == nil {
			continue // a removed table that is gone
		}
		if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{schema, name}.Sanitize()+" IN SHARE ROW EXCLUSIVE MODE"); err != nil {
			return 0, fmt.Errorf("update publication %s: lock table %s against writers for a moment (so the change lands between its transactions): %w (try the reload again)", next.Database.Publication, t, err)
		}
	}
	pub := next.Database.Publication
	if _, err := source.EnsurePublication(ctx, tx, next, func(msg string) { c.log.Warn().Str("publication", pub).Msg(msg) }); err != nil {
		var fe *source.FatalError
		if errors.As(err, &fe) {
			err = fe.Err
		}
		return 0, fmt.Errorf("tables %s: %w", strings.Join(append(ch.TablesAdded, ch.TablesRemoved...), ", "), err)
	}
	var text string
	now := "pg_current_wal_insert_lsn()"
	if standby {
		now = "pg_last_wal_replay_lsn()"
	}
	if err := tx.QueryRow(ctx, "SELECT "+now+"::text").Scan(&text); err != nil {
		return 0, fmt.Errorf("update publication: %w", err)
	}
	from, err := pglogrepl.ParseLSN(text)
	if err != nil {
		return 0, fmt.Errorf("update publication: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("update publication %s: %w", pub, err)
	}
	c.log.Info().Str("publication", pub).Strs("added", ch.TablesAdded).Strs("removed", ch.TablesRemoved).Str("from_commit_lsn", from.String()).
		Msg("publication set to the reloaded configuration's tables")
	return from, nil
}
