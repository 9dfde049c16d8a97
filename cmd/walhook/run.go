package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
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
	if cfg.Log.Format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05.000"}
	}
	return zerolog.New(w).Level(level).With().Timestamp().Logger()
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
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, dbError(what, pc.ConnConfig.Host, pc.ConnConfig.Port, pc.ConnConfig.Database, err)
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

// dbError says what a connection failure means and what to do about it.
func dbError(what, host string, port uint16, db string, err error) error {
	var pe *pgconn.PgError
	addr := fmt.Sprintf("%s:%d", host, port)
	switch {
	case errors.As(err, &pe) && pe.Code == "28P01":
		return fmt.Errorf("%s: password authentication failed at %s: check the user and password in the DSN", what, addr)
	case errors.As(err, &pe) && pe.Code == "3D000":
		return fmt.Errorf("%s: database %q does not exist at %s: create it or fix the DSN", what, db, addr)
	case errors.As(err, &pe) && pe.Code == "28000":
		return fmt.Errorf("%s: the server at %s refused the connection (%s): allow it in pg_hba.conf", what, addr, pe.Message)
	case strings.Contains(err.Error(), "connection refused"):
		return fmt.Errorf("%s: connection refused at %s: is PostgreSQL running and listening there?", what, addr)
	}
	return fmt.Errorf("%s: cannot connect to %s: %w", what, addr, err)
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
	log := newLogger(cfg, stderr)
	return run(ctx, cfg, log, !*dispatchOnly, !*captureOnly)
}

// run applies migrations and runs capture and/or dispatch until ctx ends.
func run(ctx context.Context, cfg *config.Config, log zerolog.Logger, capture, send bool) error {
	outboxDSN := cfg.Database.OutboxDSN
	if outboxDSN == "" {
		outboxDSN = cfg.Database.DSN
	}
	outbox, err := openPool(ctx, outboxDSN, "outbox database", map[string]string{"application_name": "walhook"})
	if err != nil {
		return err
	}
	defer outbox.Close()
	applied, err := migrations.Apply(ctx, outbox, cfg.Database.Schema)
	if err != nil {
		return err
	}
	if len(applied) > 0 {
		log.Info().Ints("versions", applied).Str("schema", cfg.Database.Schema).Msg("outbox migrations applied")
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	if capture {
		source, err := openPool(ctx, cfg.Database.DSN, "source database", cdc.SessionParams)
		if err != nil {
			return err
		}
		defer source.Close()
		c, err := cdc.New(cdc.Options{Config: cfg, Source: source, Outbox: outbox, Logger: log})
		if err != nil {
			return err
		}
		if err := c.Prepare(ctx); err != nil {
			var ce *config.Error
			if errors.As(err, &ce) {
				return &exitError{code: 2, err: fmt.Errorf("invalid configuration:\n%w", err)}
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Run(ctx); err != nil {
				errs <- fmt.Errorf("capture: %w", err)
				cancel()
			}
		}()
	}
	if send {
		d, err := dispatch.New(dispatch.Options{Pool: outbox, Config: cfg, Logger: log, Version: walhookVersion()})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.Run(ctx); err != nil {
				errs <- fmt.Errorf("dispatch: %w", err)
				cancel()
			}
		}()
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
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	dsn := cfg.Database.OutboxDSN
	if dsn == "" {
		dsn = cfg.Database.DSN
	}
	pool, err := openPool(ctx, dsn, "outbox database", nil)
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
