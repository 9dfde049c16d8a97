package web_test

import (
	"context"
	"net"
	"os"
	"os/signal"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/web"
)

func ExampleServer_Serve() {
	cfg, err := config.Load("walhook.yaml")
	if err != nil {
		panic(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	log := zerolog.New(os.Stderr)
	pool, err := pgxpool.New(ctx, cfg.Database.DSN)
	if err != nil {
		panic(err)
	}
	defer pool.Close()

	// One Metrics per process: it observes dispatch (and capture, through
	// cdc.Options.Observer) and is served on /metrics.
	metrics := web.NewMetrics(cfg, "1.0.0")
	d, err := dispatch.New(dispatch.Options{Pool: pool, Config: cfg, Logger: log, Observer: metrics})
	if err != nil {
		panic(err)
	}
	srv, err := web.New(web.Options{Config: cfg, Outbox: pool, SlotDB: pool, Dispatching: true,
		Metrics: metrics, Logger: log, Version: "1.0.0"})
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", cfg.HTTP.ListenAddr())
	if err != nil {
		panic(err)
	}
	go func() { _ = d.Run(ctx) }()
	_ = srv.Serve(ctx, ln) // until Ctrl-C
}
