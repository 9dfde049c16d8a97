package cdc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/cdc/source"
	"github.com/walhook/walhook/internal/pgnet"
	"github.com/walhook/walhook/internal/replslot"
)

// guardRecheck is how often confirmations held back by the standby guard
// are checked again.
const guardRecheck = time.Second

// maxPending bounds the positions the guard holds back.
const maxPending = 64

// guardTimeout bounds the guard's query.
const guardTimeout = 5 * time.Second

// standbyGuard holds confirmations back until the standbys named in the
// outbox server's synchronized_standby_slots have flushed the outbox
// commits behind them.
//
// The hazard: capture commits a group's delivery rows and checkpoint at
// WAL position Y of the outbox server, then confirms the group's source
// position X to the slot. When the outbox is in the source's cluster and
// the slot is a failover slot, the standby's slot sync copies X as soon as
// the standby has replayed X itself, which can be before it has Y (X < Y).
// A failover then promotes a server whose slot is past changes whose rows
// died with the old primary. So X is confirmed only once every standby
// slot's restart_lsn (what the standby has flushed) is at least Y.
//
// Y is read after X is committed (pg_current_wal_lsn of the outbox server,
// which is past every commit made before it), so a pair (X, Y) is safe to
// confirm once the standbys reach Y.
type standbyGuard struct {
	pool  *pgxpool.Pool
	slots []string
	log   zerolog.Logger

	pending []lsnPair // in order of X and Y
	safeX   pglogrepl.LSN
	warned  bool
}

type lsnPair struct {
	x, y pglogrepl.LSN
	at   time.Time // when the pair was read
}

// newStandbyGuard returns a guard when the outbox server names standby
// slots in synchronized_standby_slots (PostgreSQL 17+), else nil.
func newStandbyGuard(ctx context.Context, pool *pgxpool.Pool, log zerolog.Logger) (*standbyGuard, error) {
	st, err := replslot.ReadStandbys(ctx, pool)
	if err != nil || len(st.Names) == 0 {
		return nil, err
	}
	return &standbyGuard{pool: pool, slots: st.Names, log: log}, nil
}

// waiting reports whether a committed position is held back.
func (g *standbyGuard) waiting() bool { return len(g.pending) > 0 }

// safe returns the greatest committed position up to flushed that may be
// confirmed now.
func (g *standbyGuard) safe(ctx context.Context, flushed pglogrepl.LSN) pglogrepl.LSN {
	last := g.safeX
	if n := len(g.pending); n > 0 {
		last = g.pending[n-1].x
	}
	qctx, cancel := context.WithTimeout(ctx, guardTimeout)
	defer cancel()
	var y, standby *string
	err := g.pool.QueryRow(qctx, `SELECT pg_current_wal_lsn()::text,
		(SELECT min(restart_lsn)::text FROM pg_replication_slots WHERE slot_name = ANY ($1) AND slot_type = 'physical')`, g.slots).Scan(&y, &standby)
	if err != nil {
		g.log.Warn().Err(err).Msg("read the standbys' flush position: confirmations wait")
		return g.safeX
	}
	if flushed > last && y != nil {
		if yl, err := pglogrepl.ParseLSN(*y); err == nil {
			p := lsnPair{x: flushed, y: yl, at: time.Now()}
			if n := len(g.pending); n >= maxPending {
				// Standbys far behind: the newest pair stands for the last
				// ones (later X, later Y: still safe, confirmed later).
				p.at = g.pending[n-1].at
				g.pending[n-1] = p
			} else {
				g.pending = append(g.pending, p)
			}
		}
	}
	var sl pglogrepl.LSN
	if standby != nil {
		sl, _ = pglogrepl.ParseLSN(*standby)
	}
	i := 0
	for ; i < len(g.pending) && g.pending[i].y <= sl; i++ {
		g.safeX = g.pending[i].x
	}
	g.pending = g.pending[i:]
	if len(g.pending) > 0 && time.Since(g.pending[0].at) > time.Minute && !g.warned {
		g.warned = true
		g.log.Warn().Strs("standby_slots", g.slots).Str("waiting_for", g.pending[0].y.String()).Str("standbys_at", sl.String()).
			Msg("the standbys in synchronized_standby_slots have not flushed the outbox for a minute: the slot is confirmed no further (and PostgreSQL sends no new changes) until they do; check those standbys, or remove them from synchronized_standby_slots")
	} else if len(g.pending) == 0 {
		g.warned = false
	}
	return g.safeX
}

// FailoverState is whether the slot would survive a failover to a
// standby, as the primary can tell (replslot.FailoverReady).
type FailoverState struct {
	Supported bool   // PostgreSQL 17+
	Slot      bool   // the slot is a failover slot
	Ready     bool   // ... and synchronized_standby_slots names connected standbys
	Why       string // what is missing when not Ready
}

// Failover is the slot's failover state as last read (at each connection
// and every minute while streaming); nil before the first reading.
func (c *Capture) Failover() *FailoverState { return c.failover.Load() }

// readFailover reads the slot's failover state for status.
func (c *Capture) readFailover(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, guardTimeout)
	defer cancel()
	sl, found, err := replslot.Read(ctx, c.source, c.cfg.Database.Slot)
	if err != nil || !found {
		return
	}
	st, err := replslot.ReadStandbys(ctx, c.source)
	if err != nil {
		return
	}
	ready, why := replslot.FailoverReady(sl, st)
	c.failover.Store(&FailoverState{Supported: st.Supported, Slot: sl.Failover, Ready: ready, Why: why})
}

// setFailover turns the slot's failover on or off over the replication
// connection, before streaming (the slot must not be in use).
func (c *Capture) setFailover(ctx context.Context, conn *pgconn.PgConn, on bool) error {
	slot := c.cfg.Database.Slot
	// The slot name was validated as a plain identifier.
	_, err := conn.Exec(ctx, fmt.Sprintf("ALTER_REPLICATION_SLOT %s ( FAILOVER %t )", pgx.Identifier{slot}.Sanitize(), on)).ReadAll()
	if err != nil {
		return fmt.Errorf("ALTER_REPLICATION_SLOT %s (FAILOVER %t): %w", slot, on, err)
	}
	c.alterFailover = nil
	if on {
		c.log.Info().Str("slot", slot).Msg("the replication slot is now a failover slot: standbys with sync_replication_slots = on keep a copy of it")
	} else {
		c.log.Warn().Str("slot", slot).Msg("the replication slot is no longer a failover slot (database.slot_failover: false): after a failover to a standby the changes in between are not captured")
	}
	return nil
}

// recheckSlot runs, at a reconnection, the checks Prepare ran on the slot
// and the checkpoint: the server may be another one now (a promoted
// standby). A slot PostgreSQL gave up on is created again, with the gap
// reported; a missing slot is an error. It returns the checkpoint to
// stream from.
func (c *Capture) recheckSlot(ctx context.Context) (pglogrepl.LSN, error) {
	slot := c.cfg.Database.Slot
	sl, found, err := replslot.Read(ctx, c.source, slot)
	if err != nil {
		return 0, err
	}
	if !found {
		startLSN, _ := c.store.CheckpointLSN(ctx, slot)
		return 0, source.Fatalf("replication slot %s no longer exists on the server walhook reconnected to (dropped by someone else, or a failover to a server without a synced copy of it: see database.slot_failover): restart walhook to create it again; changes committed after LSN %s will not be captured", slot, startLSN)
	}
	ckpt, err := c.store.ReadCheckpointState(ctx, slot)
	if err != nil {
		return 0, err
	}
	created, why := false, ""
	if sl.Lost() {
		conn, err := c.source.Acquire(ctx)
		if err != nil {
			return 0, fmt.Errorf("connect to source database: %w", err)
		}
		defer conn.Release()
		res, err := source.EnsureSlot(ctx, conn, c.cfg, false)
		if err != nil {
			return 0, err
		}
		created, why = res.Created, res.Recreated
	}
	if err := c.reconcileCheckpoint(ctx, c.source, ckpt, created, why); err != nil {
		return 0, err
	}
	return c.store.CheckpointLSN(ctx, slot)
}

// publicationDropped is the error of a publication dropped under a running
// capture; cause is what showed it.
func (c *Capture) publicationDropped(cause error, confirmed pglogrepl.LSN) error {
	return source.Fatalf("%v: publication %s was dropped while walhook was running: restart walhook to create it and the slot again; changes committed after LSN %s will not be captured", cause, c.cfg.Database.Publication, confirmed)
}

// checkPublication fails when the publication no longer exists. Before
// PostgreSQL 18 decoding fails at the next change; from 18 pgoutput skips a
// missing publication with a warning and publishes nothing, so capture
// would checkpoint past the changes. It runs before an idle position is
// checkpointed (the only way the checkpoint moves without changes).
func (c *Capture) checkPublication(ctx context.Context, confirmed pglogrepl.LSN) error {
	qctx, cancel := pgnet.Bound(ctx)
	defer cancel()
	var exists bool
	if err := c.source.QueryRow(qctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", c.cfg.Database.Publication).Scan(&exists); err != nil {
		return fmt.Errorf("read publication %s: %w", c.cfg.Database.Publication, err)
	}
	if !exists {
		return c.publicationDropped(errors.New("the publication no longer exists"), confirmed)
	}
	return nil
}
