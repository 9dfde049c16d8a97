package outbox_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/internal/outbox"
)

func ExampleStore_Requeue() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("WALHOOK_OUTBOX_DSN"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	defer pool.Close()
	// walhook retry --webhook inventory --since 1h --reset-attempts
	n, err := outbox.New(pool, "walhook").Requeue(ctx, outbox.RequeueFilter{
		Webhook:       "inventory",
		Since:         time.Hour,
		ResetAttempts: true,
	}, time.Now())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Printf("re-queued %d deliveries\n", n)
}
