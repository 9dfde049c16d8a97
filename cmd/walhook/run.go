package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"go.opentelemetry.io/otel"
	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/pgnet"
	"github.com/walhook/walhook/internal/tracing"
	"github.com/walhook/walhook/internal/web"
	"github.com/walhook/walhook/migrations"
)

func loadConfig(path string) (*config.Config, error) {
	cfg, err := config.Load(path)
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			return nil, &exitError{code: 2, err: fmt.Errorf("invalid configuration:\n%w", err)}
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil, usageErr("configuration file %s not found: pass -c PATH or set WALHOOK_CONFIG (see config.example.yaml)", path)
		}
		return nil, &exitError{code: 2, err: err}
	}
	return cfg, nil
}

func newLogger(cfg *config.Config, w io.Writer) zerolog.Logger {
	level, err := zerolog.ParseLevel(cfg.Log.Level)
	if err != nil {
		level = zerolog.InfoLevel
	}
	return zerolog.New(logOutput(cfg, w)).Level(level).With().Timestamp().Logger()
}

// logOutput is w in the configured log format.
func logOutput(cfg *config.Config, w io.Writer) io.Writer {
	if cfg.Log.Format == config.LogFormatConsole {
		return zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	}
	return w
}

// errCommandTimeout is why a one-shot command gave up.
var errCommandTimeout = errors.New("no answer from the database within " + commandTimeout.String())

// commandTimeout bounds the one-shot commands that read or change the
// outbox (status, deliveries, retry).
const commandTimeout = time.Minute

// openOutbox loads the configuration at path and connects to its outbox
// database, for the one-shot commands.
func openOutbox(ctx context.Context, path string) (*config.Config, *pgxpool.Pool, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, nil, err
	}
	pool, err := openPool(ctx, cfg.Database.OutboxConn(), "outbox database", nil)
	if err != nil {
		return nil, nil, err
	}
	return cfg, pool, nil
}

// openPool opens a pool and checks that the database answers, turning the
// usual failures into one line that says what to do.
func openPool(ctx context.Context, dsn, what string, params map[string]string) (*pgxpool.Pool, error) {
	pc, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, &exitError{code: 2, err: fmt.Errorf("%s: cannot parse the DSN: %v", what, redactErr(err, dsn))}
	}
	for k, v := range params {
		pc.ConnConfig.RuntimeParams[k] = v
	}
	// A server that accepts TCP and never answers must not hang a command:
	// a connect timeout unless the DSN sets one, TCP keepalives and
	// TCP_USER_TIMEOUT on every connection, and an idle connection that
	// does not answer its ping is dropped rather than handed out.
	pgnet.Configure(&pc.ConnConfig.Config)
	if !strings.Contains(dsn, "pool_ping_timeout") {
		pc.PingTimeout = pgnet.PingTimeout
	}
	// pgxpool's default cap is max(4, CPUs): on a small machine capture,
	// dispatch (up to four at once), the metrics and the status page would
	// queue for connections. A pool_max_conns in the DSN still wins.
	if !strings.Contains(dsn, "pool_max_conns") && pc.MaxConns < 10 {
		pc.MaxConns = 10
	}
	// Every pool may run outbox statements (the outbox is in the source
	// database by default).
	pc.AfterConnect = outbox.PrepareConn
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, dbError(what, &pc.ConnConfig.Config, err)
	}
	return pool, nil
}

func redactErr(err error, dsn string) string {
	msg := err.Error()
	if dsn != "" {
		msg = strings.ReplaceAll(msg, dsn, config.RedactURL(dsn))
	}
	return msg
}

// roleLookupRoutine is the server function that reports a role that does
// not exist (28000, like a pg_hba.conf refusal; its message is translated,
// its routine name is not).
const roleLookupRoutine = "InitializeSessionUserId"

// dbError says what a connection failure means and what to do about it,
// in one line (see connectHint for the network and TLS cases).
func dbError(what string, cc *pgconn.Config, err error) error {
	var pe *pgconn.PgError
	addr, db := fmt.Sprintf("%s:%d", cc.Host, cc.Port), cc.Database
	if errors.As(err, &pe) {
		switch {
		case pe.Code == pgerrcode.InvalidPassword && cc.Password == "":
			return fmt.Errorf("%s: password authentication failed at %s for user %q: no password was given: put it in the DSN "+
				"(postgres://%s:PASSWORD@host/db, or dsn: ${WALHOOK_DSN} with the DSN in the environment), in PGPASSWORD, or in ~/.pgpass",
				what, addr, cc.User, cc.User)
		case pe.Code == pgerrcode.InvalidPassword:
			return fmt.Errorf("%s: password authentication failed at %s for user %q: check the user and the password (from the DSN, PGPASSWORD or ~/.pgpass)", what, addr, cc.User)
		case pe.Code == pgerrcode.InvalidCatalogName:
			return fmt.Errorf("%s: database %q does not exist at %s: create it or fix the DSN", what, db, addr)
		case pe.Code == pgerrcode.InvalidAuthorizationSpecification && pe.Routine == roleLookupRoutine:
			return fmt.Errorf("%s: %s at %s: fix the user in the DSN, or create the role (CREATE ROLE name LOGIN REPLICATION PASSWORD '...';)", what, pe.Message, addr)
		case pe.Code == pgerrcode.InvalidAuthorizationSpecification:
			return fmt.Errorf("%s: the server at %s refused the connection (%s): allow it in pg_hba.conf", what, addr, pe.Message)
		case pe.Code == pgerrcode.InsufficientPrivilege:
			return fmt.Errorf("%s: %s at %s: as a superuser run GRANT CONNECT ON DATABASE %s TO the DSN's user", what, pe.Message, addr, quoteIdent(db))
		case pe.Code == pgerrcode.TooManyConnections:
			return fmt.Errorf("%s: the server at %s has no free connection slots (%s): raise max_connections or close idle clients", what, addr, pe.Message)
		case pe.Code == pgerrcode.CannotConnectNow:
			return fmt.Errorf("%s: the server at %s is not accepting connections yet (%s): try again once it is up", what, addr, pe.Message)
		}
	}
	if hint, ok := connectHint(addr, err); ok {
		return fmt.Errorf("%s: %s", what, hint)
	}
	return fmt.Errorf("%s: cannot connect to %s: %s", what, addr, oneLine(err.Error()))
}

func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	fs, path := newFlags("run", stderr)
	captureOnly := fs.Bool("capture-only", false, "only capture changes into the outbox")
	dispatchOnly := fs.Bool("dispatch-only", false, "only send deliveries from the outbox")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *captureOnly && *dispatchOnly {
		return usageErr("--capture-only and --dispatch-only exclude each other")
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	log, rl := newReloadableLogger(cfg, stderr, *path)
	return run(ctx, cfg, log, !*dispatchOnly, !*captureOnly, rl)
}

// run applies migrations and runs capture and/or dispatch until ctx ends.
// With rl, SIGHUP and POST /-/reload reload the configuration file.
func run(ctx context.Context, cfg *config.Config, log zerolog.Logger, capture, send bool, rl *reloadable) error {
	var hup <-chan os.Signal
	if rl != nil {
		var stopHUP func()
		hup, stopHUP = notifyHUP()
		defer stopHUP()
	}
	obPool, err := openPool(ctx, cfg.Database.OutboxConn(), "outbox database", map[string]string{"application_name": "walhook"})
	if err != nil {
		return err
	}
	defer obPool.Close()
	applied, err := migrations.Apply(ctx, obPool, cfg.Database.Schema)
	if err != nil {
		return err
	}
	if len(applied) > 0 {
		log.Info().Ints("versions", applied).Str("schema", cfg.Database.Schema).Msg("outbox migrations applied")
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	metrics := web.NewMetrics(cfg, walhookVersion())
	var reload *reloader
	if rl != nil {
		reload = newReloader(rl.path, cfg, log, rl.level, metrics)
	}
	var (
		wg      sync.WaitGroup
		starts  []func()
		capt    *cdc.Capture
		disp    *dispatchRunner
		slotDB  *pgxpool.Pool
		errs    = make(chan error, 3)
		running = func(what string, f func(context.Context) error) func() {
			return func() {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := f(ctx); err != nil {
						errs <- fmt.Errorf("%s: %w", what, err)
						cancel()
					}
				}()
			}
		}
	)
	if !cfg.Database.SeparateOutbox() {
		// The slot is on the outbox's server: slot metrics work even
		// without capture in this process.
		slotDB = obPool
	}
	// One tracer for capture and dispatch, when tracing is on.
	var tracer oteltrace.Tracer
	if ep := cfg.Tracing.OTLPEndpoint; ep != "" {
		tp, err := tracing.New(ep, walhookVersion())
		if err != nil {
			return err
		}
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			log.Warn().Err(err).Msg("tracing: exporting spans failed (deliveries are not affected)")
		}))
		defer func() {
			if err := tp.Shutdown(context.WithoutCancel(ctx)); err != nil {
				log.Warn().Err(err).Msg("tracing: flushing the last spans failed")
			}
		}()
		tracer = tp.Tracer()
		log.Info().Str("otlp_endpoint", config.RedactURL(ep)).Msg("tracing: exporting spans (captured transactions, enqueues, delivery attempts) over OTLP/HTTP")
	}
	// ownNotify marks the NOTIFYs of this process's capture, when it
	// also dispatches.
	var ownNotify string
	if capture && send {
		ownNotify = "walhook " + rand.Text()
	}
	if capture {
		source, err := openPool(ctx, cfg.Database.DSN, "source database", cdc.SessionParams)
		if err != nil {
			return err
		}
		defer source.Close()
		slotDB = source
		copts := cdc.Options{Config: cfg, Source: source, Outbox: obPool, Logger: log, Observer: metrics, Tracer: tracer}
		if send {
			// The dispatcher below is made before capture starts. It
			// is woken right after each commit, and ignores the
			// commit's NOTIFY (meant for other processes).
			copts.Enqueued = func() { disp.Wake() }
			copts.NotifyPayload = ownNotify
		}
		capt, err = cdc.New(copts)
		if err != nil {
			return err
		}
		starts = append(starts, running("capture", capt.Run))
		if reload != nil {
			reload.capture = capt
		}
	}
	if send {
		dopts := dispatch.Options{Pool: obPool, Config: cfg, Logger: log, Version: walhookVersion(), Observer: metrics}
		dopts.Tracer, dopts.OwnNotify = tracer, ownNotify
		d, err := dispatch.New(dopts)
		if err != nil {
			return err
		}
		dr := &dispatchRunner{opts: dopts, log: log, first: d}
		starts = append(starts, running("dispatch", dr.run))
		disp = dr
		if reload != nil {
			reload.sender = dr
		}
	}
	if addr := cfg.HTTP.ListenAddr(); addr != "" {
		opts := web.Options{Config: cfg, Outbox: obPool, SlotDB: slotDB, Dispatching: send, Metrics: metrics,
			Logger: log, Version: walhookVersion()}
		if capt != nil {
			opts.Capture = capt
		}
		if reload != nil {
			opts.Reloader = reload
		}
		if disp != nil {
			opts.Dispatch = disp
		}
		srv, err := web.New(opts)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("http.listen %s: %w (change http.listen, or set it to \"\" to disable the status server)", addr, err)
		}
		if reload != nil {
			reload.web = srv
		}
		// Serve at once, so that /healthz answers and the page shows
		// progress while capture prepares the slot.
		running("http server", func(ctx context.Context) error { return srv.Serve(ctx, ln) })()
	}
	if capt != nil {
		if err := capt.Prepare(ctx); err != nil {
			cancel()
			wg.Wait()
			var ce *config.Error
			if errors.As(err, &ce) {
				return &exitError{code: 2, err: fmt.Errorf("invalid configuration:\n%w", err)}
			}
			return err
		}
	}
	for _, start := range starts {
		start()
	}
	if reload != nil {
		running("reload", func(ctx context.Context) error { reload.onSIGHUP(ctx, hup); return nil })()
	}
	log.Info().Str("version", walhookVersion()).Bool("capture", capture).Bool("dispatch", send).Msg("walhook running")
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	log.Info().Msg("walhook stopped")
	return nil
}

func cmdMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("migrate", stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, pool, err := openOutbox(ctx, *path)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := migrations.Apply(ctx, pool, cfg.Database.Schema)
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "schema %s is up to date\n", cfg.Database.Schema)
	} else {
		fmt.Fprintf(stdout, "applied migrations %v to schema %s\n", applied, cfg.Database.Schema)
	}
	return nil
}
