package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/cdc/backfill"
	"github.com/walhook/walhook/cdc/payload"
	"github.com/walhook/walhook/migrations"
)

// cmdBackfill enqueues a delivery for every existing row of a model.
func cmdBackfill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, cfgPath := newFlags("backfill", stderr)
	model := fs.String("model", "", "model to backfill (required)")
	webhook := fs.String("webhook", "", "only this webhook (default: every enabled webhook that takes the model and event)")
	where := fs.String("where", "", "SQL condition on the table's columns, e.g. \"status = 'active'\"")
	event := fs.String("event", payload.EventCreated, "event to send: created or updated")
	rate := fs.Float64("rate", 0, "at most N rows per second (0: unlimited)")
	restart := fs.Bool("restart", false, "start over, even when this backfill finished before")
	pageSize := fs.Int("page-size", 1000, "rows read per page (each page under its own snapshot)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *model == "" {
		return usageErr("backfill needs --model NAME")
	}
	if *rate < 0 || *pageSize <= 0 {
		return usageErr("--rate must be >= 0 and --page-size > 0")
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	log := newLogger(cfg, stderr)
	outbox, err := openPool(ctx, cfg.Database.OutboxConn(), "outbox database", map[string]string{"application_name": "walhook backfill"})
	if err != nil {
		return err
	}
	defer outbox.Close()
	if _, err := migrations.Apply(ctx, outbox, cfg.Database.Schema); err != nil {
		return err
	}
	params := map[string]string{}
	for k, v := range cdc.SessionParams {
		params[k] = v
	}
	params["application_name"] = "walhook backfill"
	source, err := openPool(ctx, cfg.Database.DSN, "source database", params)
	if err != nil {
		return err
	}
	defer source.Close()

	bar := isTerminal(stderr)
	var lastLog time.Time
	report := func(p backfill.Progress) {
		rate := 0.0
		if s := p.Elapsed.Seconds(); s > 0 {
			rate = float64(p.RunDone) / s
		}
		eta := time.Duration(0)
		if rate > 0 && p.Total > p.Done {
			eta = time.Duration(float64(p.Total-p.Done) / rate * float64(time.Second)).Round(time.Second)
		}
		if bar {
			pct := 100.0
			if p.Total > 0 {
				pct = min(100, 100*float64(p.Done)/float64(p.Total))
			}
			fmt.Fprintf(stderr, "\r%s %5.1f%% %d/%d rows  %.0f rows/s  ETA %s   ", progressBar(pct, 30), pct, p.Done, p.Total, rate, eta)
			if p.Finished {
				fmt.Fprintln(stderr)
			}
			return
		}
		if p.Finished || time.Since(lastLog) >= 5*time.Second {
			lastLog = time.Now()
			log.Info().Str("model", *model).Int64("done", p.Done).Int64("total", p.Total).Int64("enqueued", p.Enqueued).
				Float64("rows_per_s", float64(int64(rate*10))/10).Str("eta", eta.String()).Msg("backfill progress")
		}
	}
	p, err := backfill.Run(ctx, backfill.Options{
		Config: cfg, Source: source, Outbox: outbox, Logger: log,
		Model: *model, Webhook: *webhook, Where: *where, Event: *event, Rate: *rate, Restart: *restart,
		PageSize: *pageSize, Progress: report,
	})
	var be *backfill.Error
	if errors.As(err, &be) {
		if flag, ok := backfillFlags[be.Option]; ok {
			err = fmt.Errorf("%s: %w", flag, err)
		}
		return &exitError{code: 2, err: err}
	}
	if err != nil {
		if ctx.Err() != nil {
			log.Info().Int64("done", p.Done).Int64("total", p.Total).Msg("backfill interrupted: run the same command again to resume")
			return nil
		}
		return fmt.Errorf("backfill %s: %w (run the same command again to resume)", *model, err)
	}
	if p.AlreadyRun {
		fmt.Fprintf(stdout, "backfill of %s already finished (%d rows, %d deliveries); pass --restart to send them again\n", *model, p.Done, p.Enqueued)
		return nil
	}
	fmt.Fprintf(stdout, "backfill of %s finished: %d rows read, %d deliveries enqueued in all", *model, p.Done, p.Enqueued)
	if p.Skipped > 0 {
		fmt.Fprintf(stdout, ", %d left out for a newer live change", p.Skipped)
	}
	fmt.Fprintf(stdout, " (%d rows in %s)\n", p.RunDone, p.Elapsed.Round(time.Millisecond))
	return nil
}

func progressBar(pct float64, width int) string {
	n := int(pct / 100 * float64(width))
	b := make([]byte, 0, width+2)
	b = append(b, '[')
	for i := 0; i < width; i++ {
		if i < n {
			b = append(b, '#')
		} else {
			b = append(b, '.')
		}
	}
	return string(append(b, ']'))
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// backfillFlags maps the backfill.Options field a backfill.Error names to
// the flag that sets it.
var backfillFlags = map[string]string{"Model": "--model", "Webhook": "--webhook", "Where": "--where", "Event": "--event"}
