package dispatch

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/internal/config"
)

// A Dispatcher replacing another after a reload keeps the circuit
// breaker, rate limiter and client of each unchanged webhook, and the
// shared client; a changed webhook, or another dispatch.concurrency,
// starts afresh.
func TestPreviousKeepsUnchangedWebhooks(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none") // never used
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	parse := func(bURL string, concurrency int) *config.Config {
		cfg, err := config.Parse("w.yaml", fmt.Appendf(nil, `
database: {dsn: "postgres://x@127.0.0.1:1/db"}
models: [{table: t, model: T}]
webhooks:
  - {name: a, url: "http://127.0.0.1:1/a", rate_limit: 10/s}
  - {name: b, url: %q}
dispatch: {concurrency: %d}
`, bURL, concurrency), func(string) (string, bool) { return "", false })
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	newD := func(cfg *config.Config, prev *Dispatcher) *Dispatcher {
		d, err := New(Options{Pool: pool, Config: cfg, Logger: zerolog.Nop(), Previous: prev})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	d1 := newD(parse("http://127.0.0.1:1/b", 8), nil)
	d2 := newD(parse("http://127.0.0.1:1/b2", 8), d1)
	if d2.hooks["a"].breaker != d1.hooks["a"].breaker || d2.hooks["a"].rate != d1.hooks["a"].rate || d2.client != d1.client {
		t.Error("unchanged webhook a lost its breaker, rate limiter or client")
	}
	if d2.slots != d1.slots {
		t.Error("the request slots (dispatch.concurrency) are not shared")
	}
	if d2.hooks["b"].breaker == d1.hooks["b"].breaker {
		t.Error("changed webhook b kept its breaker")
	}
	d3 := newD(parse("http://127.0.0.1:1/b2", 4), d2)
	if d3.hooks["a"].breaker == d2.hooks["a"].breaker || d3.client == d2.client {
		t.Error("another dispatch.concurrency kept a breaker or the client")
	}
}
