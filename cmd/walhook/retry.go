package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
)

// idList is a repeatable --id flag (also accepts comma-separated ids).
type idList []int64

func (l *idList) String() string { return fmt.Sprint(*l) }
func (l *idList) Set(s string) error {
	for _, part := range strings.Split(s, ",") {
		id, err := strconv.ParseInt(strings.TrimSpace(part), 10, 64)
		if err != nil || id <= 0 {
			return fmt.Errorf("%q is not a delivery id", part)
		}
		*l = append(*l, id)
	}
	return nil
}

func cmdRetry(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithTimeoutCause(ctx, commandTimeout, errCommandTimeout)
	defer cancel()
	fs, path := newFlags("retry", stderr)
	var f outbox.RequeueFilter
	var ids idList
	var since string
	fs.Var(&ids, "id", "delivery id to retry (repeatable)")
	fs.StringVar(&f.Webhook, "webhook", "", "retry failed deliveries of this webhook")
	fs.StringVar(&f.Model, "model", "", "retry failed deliveries of this model")
	fs.StringVar(&since, "since", "", "retry deliveries that failed within this duration (e.g. 1h)")
	fs.BoolVar(&f.AllFailed, "all-failed", false, "retry every failed delivery")
	fs.BoolVar(&f.ResetAttempts, "reset-attempts", false, "give the deliveries the full retry schedule again")
	fs.BoolVar(&f.SkipSuperseded, "skip-superseded", false, "leave alone deliveries a later change of the same object was delivered after")
	include := fs.Bool("include-superseded", false, "retry them too, although the receiver then gets older state last")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	f.IDs = ids
	if since != "" {
		d, err := config.ParseDuration(since)
		if err != nil || d <= 0 {
			return usageErr("--since: %q is not a positive duration", since)
		}
		f.Since = d
	}
	if len(f.IDs) == 0 && f.Webhook == "" && f.Model == "" && f.Since == 0 && !f.AllFailed {
		return usageErr("say which deliveries to retry: --id N, --webhook NAME, --model NAME, --since DURATION or --all-failed")
	}
	cfg, pool, err := openOutbox(ctx, *path)
	if err != nil {
		return err
	}
	defer pool.Close()
	if f.SkipSuperseded && *include {
		return usageErr("--skip-superseded and --include-superseded contradict each other")
	}
	store := outbox.New(pool, cfg.Database.Schema)
	now := time.Now()
	if !f.SkipSuperseded && !*include {
		// Say so before doing it: an old change sent after a newer one of
		// the same object leaves the receiver with the older state.
		stale, err := store.Superseded(ctx, f, now)
		if err != nil {
			return outboxError(err, cfg.Database.Schema)
		}
		if stale > 0 {
			return usageErr("%d of these deliveries are older than a change of the same object that was already delivered: "+
				"sending them now would leave the receiver with the older state. Nothing was re-queued. "+
				"Add --skip-superseded to retry only the others, or --include-superseded to retry them all anyway", stale)
		}
	}
	n, err := store.Requeue(ctx, f, now)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "re-queued %d deliveries\n", n)
	left, err := store.CountFailedAtCapture(ctx, f, now)
	if err != nil {
		return outboxError(err, cfg.Database.Schema)
	}
	if left > 0 {
		fmt.Fprintf(stdout, "left %d failed: their body_template failed when the change was captured, so the stored body is "+
			"the default body, not the template's; fix the template, then resend the objects with walhook backfill\n", left)
	}
	return nil
}
