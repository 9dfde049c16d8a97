package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/walhook/walhook/internal/human"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/tracecontext"
)

// delivery is one outbox row as `walhook deliveries` prints it.
type delivery = outbox.Delivery

func cmdDeliveries(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithTimeoutCause(ctx, commandTimeout, errCommandTimeout)
	defer cancel()
	fs, path := newFlags("deliveries", stderr)
	state := fs.String("state", "", "only deliveries in this state: "+outbox.StateList())
	webhook := fs.String("webhook", "", "only deliveries of this webhook")
	model := fs.String("model", "", "only deliveries of this model")
	limit := fs.Int("limit", 50, "at most this many, newest first")
	asJSON := fs.Bool("json", false, "print the deliveries as a JSON array")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: walhook deliveries [flags]\n       walhook deliveries show ID [--json]\n\nFlags:")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) > 0 && pos[0] == "show":
		// `deliveries show ID`, its flags anywhere: -c FILE show 6 --json.
		var listOnly []string
		fs.Visit(func(f *flag.Flag) {
			if !slices.Contains([]string{"c", "config", "json"}, f.Name) {
				listOnly = append(listOnly, "--"+f.Name)
			}
		})
		if len(listOnly) > 0 {
			return usageErr("deliveries show takes an ID, --json and -c, not %s", strings.Join(listOnly, ", "))
		}
		return cmdDeliveryShow(ctx, withoutShow(args), stdout, stderr)
	case len(pos) > 0:
		fs.Usage()
		return usageErr("unexpected argument %q", pos[0])
	}
	if *state != "" && !slices.Contains(outbox.States, outbox.State(*state)) {
		return usageErr("--state %q: use %s", *state, outbox.StateList())
	}
	if *limit <= 0 {
		return usageErr("--limit must be positive")
	}
	cfg, pool, err := openOutbox(ctx, *path)
	if err != nil {
		return err
	}
	defer pool.Close()

	list, more, err := outbox.New(pool, cfg.Database.Schema).List(ctx, outbox.ListFilter{
		State: outbox.State(*state), Webhook: *webhook, Model: *model, Limit: *limit})
	if err != nil {
		return outboxError(err, cfg.Database.Schema)
	}
	if list == nil {
		list = []delivery{}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	if len(list) == 0 {
		fmt.Fprintln(stdout, "no deliveries match")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tWEBHOOK\tEVENT\tMODEL\tOBJECT\tSTATE\tATTEMPTS\tSTATUS\tAGE\tNEXT ATTEMPT\tLAST ERROR")
	for _, d := range list {
		status := "-"
		if d.LastStatus != nil {
			status = strconv.Itoa(int(*d.LastStatus))
		}
		next := "-"
		switch d.State {
		case outbox.StateParked:
			next = "after an earlier change"
		case outbox.StatePending:
			if wait := d.NextAttemptAt.Sub(d.DBNow); wait > 0 {
				next = "in " + human.Duration(wait)
			} else {
				next = "due"
			}
		case outbox.StateDelivering:
			next = "sending"
		}
		lastErr := "-"
		if d.LastError != nil {
			lastErr = shorten(*d.LastError, 50)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", d.ID, d.Webhook, d.Event, d.Model, shorten(d.ObjectKey, 30),
			d.State, d.Attempts, status, human.Duration(d.DBNow.Sub(d.CommittedAt)), next, lastErr)
	}
	tw.Flush()
	if more {
		fmt.Fprintf(stdout, "(the newest %d; there are more: --limit N shows more)\n", *limit)
	}
	return nil
}

func cmdDeliveryShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("deliveries show", stderr)
	asJSON := fs.Bool("json", false, "print the delivery as JSON")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageErr("usage: walhook deliveries show ID [--json] [-c walhook.yaml]")
	}
	id, err := strconv.ParseInt(strings.TrimPrefix(pos[0], "#"), 10, 64)
	if err != nil || id <= 0 {
		return usageErr("%q is not a delivery id", pos[0])
	}
	cfg, pool, err := openOutbox(ctx, *path)
	if err != nil {
		return err
	}
	defer pool.Close()
	store := outbox.New(pool, cfg.Database.Schema)
	d, err := store.Get(ctx, id)
	if errors.Is(err, outbox.ErrNotFound) {
		return fmt.Errorf("delivery %d not found in %s.deliveries (delivered rows are deleted after dispatch.retention): walhook deliveries lists them", id, cfg.Database.Schema)
	}
	if err != nil {
		return outboxError(err, cfg.Database.Schema)
	}
	attempts, err := store.Attempts(ctx, id)
	if err != nil {
		return outboxError(err, cfg.Database.Schema)
	}
	if attempts == nil {
		attempts = []outbox.AttemptRecord{}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			*delivery
			TraceID  string                 `json:"trace_id"`
			Attempts []outbox.AttemptRecord `json:"attempt_history"`
		}{d, tracecontext.ForDelivery(d.Webhook, d.ID).String(), attempts})
	}
	printDelivery(stdout, d)
	printAttempts(stdout, attempts)
	printBody(stdout, d)
	return nil
}

// printAttempts prints a delivery's attempt history, oldest first: the
// error, else the first line of the response body, cut short.
func printAttempts(w io.Writer, attempts []outbox.AttemptRecord) {
	if len(attempts) == 0 {
		fmt.Fprintln(w, "\nattempts: none recorded")
		return
	}
	fmt.Fprintf(w, "\nattempts (the last %d are kept):\n", outbox.AttemptsKept)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  #\tSTARTED\tTOOK\tSTATUS\tERROR OR RESPONSE")
	for _, a := range attempts {
		n := strconv.Itoa(int(a.Attempt))
		if a.Probe {
			n += " (probe)"
		}
		status := "-"
		if a.Status != nil {
			status = strconv.Itoa(int(*a.Status))
		}
		text := "-"
		switch {
		case a.Error != nil:
			text = *a.Error
		case a.Response != nil:
			text = *a.Response
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", n, a.StartedAt.Format("2006-01-02T15:04:05.000Z07:00"),
			a.Duration.Round(time.Millisecond/10), status, printable(shorten(text, 70)))
	}
	tw.Flush()
}

// printable replaces control characters (a receiver's text could move a
// terminal's cursor or break the table) with spaces.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

func printDelivery(w io.Writer, d *delivery) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	ts := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return fmt.Sprintf("%s (%s)", t.Format(time.RFC3339Nano), human.Since(*t, d.DBNow))
	}
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("id", strconv.FormatInt(d.ID, 10))
	row("webhook", d.Webhook)
	row("event", d.Event)
	row("model", d.Model)
	row("object_key", d.ObjectKey)
	row("state", string(d.State))
	row("attempts", strconv.Itoa(int(d.Attempts)))
	row("commit_lsn", fmt.Sprintf("%s (seq %d)", d.CommitLSN, d.Seq))
	row("trace_id", tracecontext.ForDelivery(d.Webhook, d.ID).String()+" (traceparent; one span per attempt)")
	row("committed_at", ts(&d.CommittedAt))
	row("created_at", ts(&d.CreatedAt))
	if d.State == outbox.StatePending {
		row("next_attempt_at", ts(&d.NextAttemptAt))
	}
	if d.State == outbox.StateParked {
		row("waiting for", "an earlier change of the same object to be delivered or to fail")
	}
	if d.State == outbox.StateDelivering {
		by := "-"
		if d.LockedBy != nil {
			by = *d.LockedBy
		}
		row("locked_by", by)
		row("locked_until", ts(d.LockedUntil))
	}
	row("last_attempt_at", ts(d.LastAttemptAt))
	status := "-"
	if d.LastStatus != nil {
		status = strconv.Itoa(int(*d.LastStatus))
	}
	row("last_status", status)
	row("delivered_at", ts(d.DeliveredAt))
	tw.Flush()

	if d.LastError != nil {
		fmt.Fprintln(w, "\nlast_error:")
		for _, line := range strings.Split(strings.TrimRight(*d.LastError, "\n"), "\n") {
			fmt.Fprintln(w, "  "+line)
		}
	}
	if d.State == "failed" {
		fmt.Fprintf(w, "\nretry it with: walhook retry --id %d\n", d.ID)
	}
}

// printBody prints a delivery's body, indented when it is JSON.
func printBody(w io.Writer, d *delivery) {
	fmt.Fprintln(w, "\nbody:")
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, []byte(*d.Body), "", "  "); err == nil {
		fmt.Fprintln(w, pretty.String())
	} else {
		fmt.Fprintln(w, *d.Body)
	}
}

// withoutShow is args without the word show (the first one that is not the
// value of -c or --config).
func withoutShow(args []string) []string {
	for i, a := range args {
		if a == "show" && (i == 0 || !slices.Contains([]string{"-c", "--config", "-config"}, args[i-1])) {
			return append(slices.Clone(args[:i]), args[i+1:]...)
		}
	}
	return args
}

// parseInterspersed parses flags that may come before or after positional
// arguments and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, &exitError{code: 0, err: err}
			}
			return nil, &exitError{code: 2, err: err}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
