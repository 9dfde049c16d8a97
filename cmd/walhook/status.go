package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/human"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/replslot"
)

// statusReport is what `walhook status --json` prints.
type statusReport struct {
	Time      time.Time       `json:"time"`
	ServerLSN string          `json:"server_lsn"`
	Source    sourceStatus    `json:"source"`
	Outbox    outboxStatus    `json:"outbox"`
	Webhooks  []webhookStatus `json:"webhooks"`
	Slot      slotStatus      `json:"slot"`
	Capture   captureStatus   `json:"capture"`
	// Dispatchers are the dispatch processes that beat within a day.
	Dispatchers []outbox.Dispatcher `json:"dispatchers"`
}

// sourceStatus names the source database: the one with the slot and the
// captured tables.
type sourceStatus struct {
	Database string `json:"database"`
}

type outboxStatus struct {
	// Database is the database holding the outbox; Separate is true when
	// it is another database than the source (database.outbox_dsn).
	Database string `json:"database"`
	Separate bool   `json:"separate"`
	Schema   string `json:"schema"`
	// Exists is false until walhook run or walhook migrate created it.
	Exists bool `json:"exists"`
}

type webhookStatus struct {
	Name string `json:"name"`
	// Configured is false for a webhook that has rows but is no longer in
	// the configuration.
	Configured bool          `json:"configured"`
	Enabled    bool          `json:"enabled"`
	Counts     outbox.Counts `json:"counts"`
	// OldestPendingAgeSeconds is how long ago the oldest pending delivery's
	// change was committed; null when nothing is pending.
	OldestPendingAgeSeconds *float64          `json:"oldest_pending_age_seconds"`
	LastError               *outbox.LastError `json:"last_error"`
	// Breaker is set while a live dispatcher has paused the webhook
	// (circuit breaker open or probing).
	Breaker *breakerStatus `json:"breaker,omitempty"`
}

// breakerStatus is a paused webhook's breaker, and on how many live
// dispatchers it is not closed.
type breakerStatus struct {
	outbox.BreakerStatus
	Dispatchers int `json:"dispatchers"`
}

type slotStatus struct {
	Name          string `json:"name"`
	Exists        bool   `json:"exists"`
	Plugin        string `json:"plugin,omitempty"`
	Database      string `json:"database,omitempty"`
	Active        bool   `json:"active"`
	ActivePID     *int32 `json:"active_pid"`
	WALStatus     string `json:"wal_status,omitempty"`
	ConfirmedLSN  string `json:"confirmed_lsn,omitempty"`
	LagBytes      *int64 `json:"lag_bytes"`
	RetainedBytes *int64 `json:"retained_bytes"`
	SafeWALSize   *int64 `json:"safe_wal_size"`
	// Invalidation says why PostgreSQL gave the slot up ("" while usable).
	Invalidation string `json:"invalidation,omitempty"`
	// Failover is true for a failover slot (PostgreSQL 17+); FailoverReady
	// when, besides, synchronized_standby_slots names connected standbys
	// (FailoverWhy says what is missing otherwise).
	Failover      bool   `json:"failover"`
	FailoverReady bool   `json:"failover_ready"`
	FailoverWhy   string `json:"failover_why,omitempty"`
}

type captureStatus struct {
	CheckpointLSN string     `json:"checkpoint_lsn,omitempty"`
	UpdatedAt     *time.Time `json:"updated_at"`
	// BehindBytes is the WAL capture has yet to read: the server's WAL
	// position minus the later of the checkpoint and the slot's confirmed
	// LSN.
	BehindBytes *int64 `json:"behind_bytes"`
}

func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithTimeoutCause(ctx, commandTimeout, errCommandTimeout)
	defer cancel()
	fs, path := newFlags("status", stderr)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		return err
	}
	source, err := openPool(ctx, cfg.Database.DSN, "source database", nil)
	if err != nil {
		return err
	}
	defer source.Close()
	ob := source
	if cfg.Database.SeparateOutbox() {
		if ob, err = openPool(ctx, cfg.Database.OutboxConn(), "outbox database", nil); err != nil {
			return err
		}
		defer ob.Close()
	}
	rep, err := readStatus(ctx, cfg, source, ob)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printStatus(stdout, rep)
	return nil
}

func readStatus(ctx context.Context, cfg *config.Config, source, ob *pgxpool.Pool) (*statusReport, error) {
	rep := &statusReport{Outbox: outboxStatus{Schema: cfg.Database.Schema}, Slot: slotStatus{Name: cfg.Database.Slot}}
	if err := source.QueryRow(ctx, "SELECT now(), pg_current_wal_lsn()::text, current_database()").Scan(&rep.Time, &rep.ServerLSN, &rep.Source.Database); err != nil {
		return nil, fmt.Errorf("source database: read the WAL position: %w", err)
	}
	rep.Outbox.Database = rep.Source.Database
	if ob != source {
		rep.Outbox.Separate = true
		if err := ob.QueryRow(ctx, "SELECT current_database()").Scan(&rep.Outbox.Database); err != nil {
			return nil, fmt.Errorf("outbox database: %w", err)
		}
	}
	rep.Time = rep.Time.UTC()

	// The slot.
	s := &rep.Slot
	sl, found, err := replslot.Read(ctx, source, cfg.Database.Slot)
	if err != nil {
		return nil, fmt.Errorf("source database: %w", err)
	}
	if found {
		s.Exists, s.Plugin, s.Database, s.Active, s.ActivePID, s.WALStatus = true, sl.Plugin, sl.Database, sl.Active, sl.ActivePID, sl.WALStatus
		s.LagBytes, s.RetainedBytes, s.SafeWALSize = sl.LagBytes, sl.RetainedBytes, sl.SafeWALSize
		if sl.HasConfirmed {
			s.ConfirmedLSN = sl.Confirmed.String()
		}
		s.Invalidation, s.Failover = sl.Invalidation, sl.Failover
		st, err := replslot.ReadStandbys(ctx, source)
		if err != nil {
			return nil, fmt.Errorf("source database: %w", err)
		}
		s.FailoverReady, s.FailoverWhy = replslot.FailoverReady(sl, st)
	}

	// The outbox.
	store := outbox.New(ob, cfg.Database.Schema)
	exists, err := store.Exists(ctx)
	if err != nil {
		return nil, fmt.Errorf("outbox database: %w", err)
	}
	rep.Outbox.Exists = exists
	byName := map[string]*webhookStatus{}
	for _, w := range cfg.Webhooks {
		rep.Webhooks = append(rep.Webhooks, webhookStatus{Name: w.Name, Configured: true, Enabled: w.IsEnabled()})
	}
	for i := range rep.Webhooks {
		byName[rep.Webhooks[i].Name] = &rep.Webhooks[i]
	}
	if !rep.Outbox.Exists {
		return rep, nil
	}
	get := func(name string) *webhookStatus {
		if w, ok := byName[name]; ok {
			return w
		}
		rep.Webhooks = append(rep.Webhooks, webhookStatus{Name: name})
		// Appending may move the slice: rebuild the index.
		for i := range rep.Webhooks {
			byName[rep.Webhooks[i].Name] = &rep.Webhooks[i]
		}
		return byName[name]
	}
	counts, err := store.CountAll(ctx)
	if err != nil {
		return nil, outboxError(err, cfg.Database.Schema)
	}
	for _, name := range sortedNames(counts) {
		c := counts[name]
		w := get(name)
		w.Counts = *c
		if c.OldestPendingAge != nil {
			age := c.OldestPendingAge.Seconds()
			w.OldestPendingAgeSeconds = &age
		}
	}
	names, err := store.WebhookNames(ctx)
	if err != nil {
		return nil, outboxError(err, cfg.Database.Schema)
	}
	for _, w := range cfg.Webhooks {
		if !slices.Contains(names, w.Name) {
			names = append(names, w.Name)
		}
	}
	lastErrors, err := store.LastErrors(ctx, names)
	if err != nil {
		return nil, outboxError(err, cfg.Database.Schema)
	}
	for _, name := range sortedNames(lastErrors) {
		get(name).LastError = lastErrors[name]
	}
	// Dispatchers and their circuit breakers (the dispatchers table comes
	// with migration 3; an older outbox has none).
	if ds, err := store.Dispatchers(ctx); err == nil {
		rep.Dispatchers = ds
		for _, d := range ds {
			if !d.Alive {
				continue
			}
			for name, b := range d.Breakers {
				w := get(name)
				if w.Breaker == nil || b.State == outbox.BreakerOpen {
					w.Breaker = &breakerStatus{BreakerStatus: b}
				}
				w.Breaker.Dispatchers++
			}
		}
	}

	// The capture checkpoint.
	lsn, updated, ok, err := store.Checkpoint(ctx, cfg.Database.Slot)
	switch {
	case err != nil:
		return nil, outboxError(err, cfg.Database.Schema)
	case ok:
		rep.Capture.CheckpointLSN, rep.Capture.UpdatedAt = lsn, &updated
		cp, err1 := pglogrepl.ParseLSN(lsn)
		server, err2 := pglogrepl.ParseLSN(rep.ServerLSN)
		if err1 == nil && err2 == nil {
			// The slot's confirmed LSN also moves while captured tables
			// are idle (keepalives); it is confirmed only past committed
			// deliveries, so the later of the two is how far capture got.
			if confirmed, err := pglogrepl.ParseLSN(rep.Slot.ConfirmedLSN); err == nil && confirmed > cp {
				cp = confirmed
			}
			behind := max(int64(server)-int64(cp), 0)
			rep.Capture.BehindBytes = &behind
		}
	}
	return rep, nil
}

// sortedNames returns the keys of m, sorted.
func sortedNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// outboxError turns a missing outbox table into a line that says what to do.
func outboxError(err error, schema string) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == pgerrcode.UndefinedTable || pe.Code == pgerrcode.InvalidSchemaName) {
		return fmt.Errorf("outbox %s.deliveries does not exist: run walhook migrate (or walhook run) with this configuration first", schema)
	}
	if errors.As(err, &pe) && pe.Code == pgerrcode.InsufficientPrivilege {
		return fmt.Errorf("outbox database: %s: grant the role SELECT on the %s schema's tables (walhook check says which)", pe.Message, schema)
	}
	return fmt.Errorf("outbox database: %w", err)
}

func printStatus(w io.Writer, rep *statusReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if rep.Outbox.Separate {
		fmt.Fprintf(w, "source database %s (slot, captured tables); outbox database %s (schema %s)\n\n", rep.Source.Database, rep.Outbox.Database, rep.Outbox.Schema)
	}
	if !rep.Outbox.Exists {
		fmt.Fprintf(w, "outbox: schema %s in database %s has no deliveries table yet (walhook run or walhook migrate creates it)\n\n", rep.Outbox.Schema, rep.Outbox.Database)
	}
	fmt.Fprintln(tw, "WEBHOOK\tSTATE\tPENDING\tDELIVERING\tDELIVERED\tFAILED\tOLDEST PENDING\tLAST ERROR")
	for _, h := range rep.Webhooks {
		state := "enabled"
		switch {
		case !h.Configured:
			state = "not configured"
		case !h.Enabled:
			state = "disabled"
		}
		oldest := "-"
		if h.OldestPendingAgeSeconds != nil {
			oldest = human.Duration(time.Duration(*h.OldestPendingAgeSeconds * float64(time.Second)))
		}
		last := "-"
		if le := h.LastError; le != nil {
			when := ""
			if le.At != nil {
				when = human.Duration(rep.Time.Sub(*le.At)) + " ago, "
			}
			last = fmt.Sprintf("%s#%d: %s", when, le.DeliveryID, shorten(le.Error, 60))
		}
		if b := h.Breaker; b != nil {
			state = "PAUSED: circuit " + string(b.State)
			if !b.Since.IsZero() {
				state += " since " + human.Duration(rep.Time.Sub(b.Since)) + " ago"
			}
		}
		pending := strconv.FormatInt(h.Counts.Pending, 10)
		if h.Counts.Parked > 0 {
			pending += fmt.Sprintf(" (%d behind an earlier change)", h.Counts.Parked)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", h.Name, state, pending, h.Counts.Delivering, h.Counts.Delivered, h.Counts.Failed, oldest, last)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, h := range rep.Webhooks {
		if b := h.Breaker; b != nil {
			next := ""
			if !b.NextProbe.IsZero() {
				next = fmt.Sprintf("; next probe in %s", human.Duration(b.NextProbe.Sub(rep.Time)))
			}
			fmt.Fprintf(w, "webhook %s is paused on %d dispatcher(s): its receiver keeps failing (%s)%s. Rows wait, none is marked failed; the first successful probe resumes it.\n\n",
				h.Name, b.Dispatchers, shorten(b.LastError, 80), next)
		}
	}

	s := rep.Slot
	fmt.Fprintln(tw, "SLOT\tACTIVE\tWAL STATUS\tCONFIRMED LSN\tLAG\tRETAINED WAL")
	if !s.Exists {
		fmt.Fprintf(tw, "%s\tdoes not exist (walhook run creates it)\t-\t-\t-\t-\n", s.Name)
	} else {
		active := "no"
		if s.Active {
			active = "yes"
			if s.ActivePID != nil {
				active = fmt.Sprintf("yes (pid %d)", *s.ActivePID)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, active, orDash(s.WALStatus), orDash(s.ConfirmedLSN), bytesOrDash(s.LagBytes), bytesOrDash(s.RetainedBytes))
	}
	tw.Flush()
	fmt.Fprintln(w)

	c := rep.Capture
	fmt.Fprintln(tw, "CAPTURE CHECKPOINT\tUPDATED\tBEHIND SERVER\tSERVER LSN")
	updated := "-"
	if c.UpdatedAt != nil {
		updated = human.Duration(rep.Time.Sub(*c.UpdatedAt)) + " ago"
	}
	checkpoint := c.CheckpointLSN
	if checkpoint == "" {
		checkpoint = "none yet"
	}
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", checkpoint, updated, bytesOrDash(c.BehindBytes), rep.ServerLSN)
	tw.Flush()
	if s.Exists {
		if s.FailoverReady {
			fmt.Fprintf(w, "failover: ready (a failover slot; the standbys in synchronized_standby_slots keep a copy)\n")
		} else {
			fmt.Fprintf(w, "failover: not ready: %s\n", s.FailoverWhy)
		}
	}
	switch {
	case s.Invalidation != "":
		fmt.Fprintf(w, "\nslot %s was invalidated (%s): run walhook check for the fix\n", s.Name, s.Invalidation)
	case s.Exists && !s.Active:
		fmt.Fprintf(w, "\nslot %s is not being read: the server keeps WAL for it (%s so far) until walhook runs again.\n"+
			"If walhook is gone for good, drop it: SELECT pg_drop_replication_slot('%s');\n", s.Name, bytesOrDash(s.RetainedBytes), s.Name)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func bytesOrDash(n *int64) string {
	if n == nil {
		return "-"
	}
	return human.Bytes(*n)
}

// shorten returns the first line of s cut to n runes.
func shorten(s string, n int) string {
	s, _, cut := strings.Cut(strings.TrimSpace(s), "\n")
	r := []rune(s)
	if len(r) > n {
		return string(r[:n-1]) + "…"
	}
	if cut {
		return s + " …"
	}
	return s
}
