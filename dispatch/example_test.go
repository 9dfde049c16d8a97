package dispatch_test

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
)

func ExampleBackoff() {
	// The default policy (initial 5s, max 1h) with the jitter at its middle.
	for attempt := 1; attempt <= 11; attempt += 2 {
		fmt.Println(attempt, dispatch.Backoff(attempt, 5*time.Second, time.Hour, 0.5))
	}
	// Output:
	// 1 5s
	// 3 20s
	// 5 1m20s
	// 7 5m20s
	// 9 21m20s
	// 11 1h0m0s
}

func ExampleDispatcher_Run() {
	cfg, err := config.Load("walhook.yaml")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	pool, err := pgxpool.New(ctx, cfg.Database.DSN)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer pool.Close()
	d, err := dispatch.New(dispatch.Options{
		Pool:    pool,
		Config:  cfg,
		Logger:  zerolog.New(os.Stderr),
		Version: "1.0.0",
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	// Run returns after Ctrl-C, once in-flight requests are finished and
	// unsent claimed rows are released.
	_ = d.Run(ctx)
}
