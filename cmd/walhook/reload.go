package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/web"
)

// levelWriter drops events below a level that a reload can change (the
// loggers derived from the process's logger keep their own level, so the
// level is applied here instead).
type levelWriter struct {
	w     io.Writer
	level atomic.Int32
}

func (l *levelWriter) Write(p []byte) (int, error) { return l.w.Write(p) }

func (l *levelWriter) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	if level < zerolog.Level(l.level.Load()) && level != zerolog.NoLevel {
		return len(p), nil
	}
	return l.w.Write(p)
}

func (l *levelWriter) set(level string) {
	lv, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		lv = zerolog.InfoLevel
	}
	l.level.Store(int32(lv))
}

// reloadable is what `walhook run` needs to reload its configuration file.
type reloadable struct {
	path  string
	level *levelWriter
}

// newReloadableLogger is newLogger whose level a reload can change.
func newReloadableLogger(cfg *config.Config, w io.Writer, path string) (zerolog.Logger, *reloadable) {
	lw := &levelWriter{w: logOutput(cfg, w)}
	lw.set(cfg.Log.Level)
	log := zerolog.New(lw).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	return log, &reloadable{path: path, level: lw}
}

// reloader reloads the configuration file of a running process: all of it
// is read and checked first, then capture takes it between two source
// transactions, then dispatch, the log level and the status page; on any
// error nothing changes. It implements web.Reloader.
type reloader struct {
	path    string
	log     zerolog.Logger
	level   *levelWriter
	capture *cdc.Capture    // nil when this process does not capture
	sender  *dispatchRunner // nil when this process does not dispatch
	web     *web.Server     // nil without the HTTP server
	metrics *web.Metrics

	mu     sync.Mutex // one reload at a time
	cur    *config.Config
	status atomic.Pointer[web.ReloadStatus]
}

func newReloader(path string, cfg *config.Config, log zerolog.Logger, level *levelWriter, metrics *web.Metrics) *reloader {
	r := &reloader{path: path, cur: cfg, log: log.With().Str("component", "reload").Logger(), level: level, metrics: metrics}
	r.status.Store(&web.ReloadStatus{Hash: cfg.Hash, LoadedAt: time.Now()})
	return r
}

// ReloadStatus implements web.Reloader.
func (r *reloader) ReloadStatus() web.ReloadStatus { return *r.status.Load() }

// Reload implements web.Reloader.
func (r *reloader) Reload(ctx context.Context) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	text, err := r.reload(ctx)
	st := *r.status.Load()
	if err != nil {
		st.FailedAt, st.Error = time.Now(), err.Error()
		r.status.Store(&st)
		r.metrics.ConfigReloaded(false)
		r.log.Error().Str("file", r.path).Msgf("configuration reload failed; the previous configuration stays in use: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
		return "", err
	}
	r.status.Store(&web.ReloadStatus{Hash: r.cur.Hash, LoadedAt: time.Now()})
	r.metrics.ConfigReloaded(true)
	return text, nil
}

func (r *reloader) reload(ctx context.Context) (string, error) {
	next, err := config.Load(r.path)
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			return "", fmt.Errorf("invalid configuration:\n%w", err)
		}
		return "", err
	}
	ch := config.Compare(r.cur, next)
	if len(ch.Restart) > 0 {
		return "", &config.RestartError{File: r.path, Keys: ch.Restart}
	}
	ev := r.log.Info().Str("file", r.path).Str("config_hash", next.Hash)
	if ch.None() {
		r.cur = next
		ev.Msg("configuration reloaded: nothing walhook uses changed")
		return "configuration reloaded: nothing changed (hash " + next.Hash + ")", nil
	}
	// Everything that can fail comes before anything is applied: the new
	// dispatcher is built (URLs, TLS files) before capture switches.
	var nextSender *dispatch.Dispatcher
	if r.sender != nil && ch.Sending() {
		if nextSender, err = r.sender.prepare(next); err != nil {
			return "", err
		}
	}
	from := ""
	if r.capture != nil && ch.Rendering() {
		res, err := r.capture.Reload(ctx, next)
		if err != nil {
			var ce *config.Error
			if errors.As(err, &ce) {
				return "", fmt.Errorf("invalid configuration:\n%w", err)
			}
			return "", err
		}
		from = "at capture's next transaction boundary (it is not streaming now, or is inside a long transaction: its log line gives the LSN)"
		if !res.Pending {
			from = res.From.String()
		}
		ev = ev.Str("from_commit_lsn", from)
	}
	if nextSender != nil {
		r.sender.swap(nextSender)
	}
	if ch.LogLevel != "" {
		r.level.set(ch.LogLevel)
	}
	if r.web != nil {
		r.web.SetConfig(next)
	} else {
		r.metrics.AddWebhooks(next)
	}
	r.cur = next
	summary := describeChanges(ch)
	ev.Strs("webhooks_added", ch.WebhooksAdded).Strs("webhooks_removed", ch.WebhooksRemoved).Strs("webhooks_changed", ch.WebhooksChanged).
		Strs("models_changed", ch.ModelsChanged).Strs("tables_added", ch.TablesAdded).Strs("tables_removed", ch.TablesRemoved).
		Bool("dispatch_changed", ch.Dispatch).Str("log_level", ch.LogLevel).
		Msg("configuration reloaded: " + summary)
	text := "configuration reloaded: " + summary
	if from != "" {
		text += "; changes are rendered with it from commit LSN " + from
	}
	return text, nil
}

// describeChanges says what changed in a few words (names only, no
// values: they may be secrets).
func describeChanges(ch config.Changes) string {
	var parts []string
	add := func(what string, names []string) {
		if len(names) > 0 {
			parts = append(parts, what+" "+strings.Join(names, ", "))
		}
	}
	add("webhooks added:", ch.WebhooksAdded)
	add("webhooks removed:", ch.WebhooksRemoved)
	add("webhooks changed:", ch.WebhooksChanged)
	add("models changed:", ch.ModelsChanged)
	add("tables added:", ch.TablesAdded)
	add("tables removed:", ch.TablesRemoved)
	if ch.Dispatch {
		parts = append(parts, "dispatch settings changed")
	}
	if ch.LogLevel != "" {
		parts = append(parts, "log level "+ch.LogLevel)
	}
	return strings.Join(parts, "; ")
}

// onSIGHUP reloads on every SIGHUP until ctx ends. Signals received
// before it runs (while walhook starts) are kept: one reload follows.
func (r *reloader) onSIGHUP(ctx context.Context, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			r.log.Info().Str("file", r.path).Msg("SIGHUP: reloading the configuration")
			_, _ = r.Reload(ctx) // logged, counted and shown by Reload
		}
	}
}

// notifyHUP starts catching SIGHUP (its default would end the process).
func notifyHUP() (<-chan os.Signal, func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	return ch, func() { signal.Stop(ch) }
}

// dispatchRunner runs the process's Dispatcher and replaces it when a
// reload changes the webhooks or the dispatch settings: the new one starts
// at once, the old one stops claiming, releases the rows it has not sent
// and finishes its requests in flight. Rows move between them through the
// outbox, as between dispatch processes (per-object order holds). Webhooks
// whose settings did not change keep their circuit breaker, rate limiter
// and connections (dispatch.Options.Previous).
type dispatchRunner struct {
	opts dispatch.Options // Config is replaced for each new Dispatcher
	log  zerolog.Logger

	mu     sync.Mutex
	ctx    context.Context // Run's context, once running
	first  *dispatch.Dispatcher
	cur    *dispatch.Dispatcher // the newest one
	stop   context.CancelFunc   // stops the current Dispatcher
	closed bool                 // run is waiting for the last ones to stop
	wg     sync.WaitGroup
}

// prepare builds a Dispatcher for cfg (checking its webhooks) without
// starting it.
func (r *dispatchRunner) prepare(cfg *config.Config) (*dispatch.Dispatcher, error) {
	r.mu.Lock()
	prev := r.cur
	if prev == nil {
		prev = r.first
	}
	r.mu.Unlock()
	opts := r.opts
	opts.Config, opts.Previous = cfg, prev
	return dispatch.New(opts)
}

// run runs the first Dispatcher, and those swap starts, until ctx ends and
// every one has stopped.
func (r *dispatchRunner) run(ctx context.Context) error {
	r.mu.Lock()
	r.ctx = ctx
	r.startLocked(r.first)
	r.mu.Unlock()
	<-ctx.Done()
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.wg.Wait()
	return nil
}

func (r *dispatchRunner) startLocked(d *dispatch.Dispatcher) {
	dctx, stop := context.WithCancel(r.ctx)
	r.stop, r.cur = stop, d
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer stop()
		if err := d.Run(dctx); err != nil {
			r.log.Error().Err(err).Msg("dispatch stopped")
		}
	}()
}

// Stall is the current Dispatcher's (web.DispatchStatus, for /readyz).
func (r *dispatchRunner) Stall() string {
	r.mu.Lock()
	d := r.cur
	if d == nil {
		d = r.first
	}
	r.mu.Unlock()
	return d.Stall()
}

// Wake wakes the current Dispatcher (capture's Enqueued).
func (r *dispatchRunner) Wake() {
	r.mu.Lock()
	d := r.cur
	if d == nil {
		d = r.first
	}
	r.mu.Unlock()
	d.Wake()
}

// swap makes d the running Dispatcher and stops the previous one.
func (r *dispatchRunner) swap(d *dispatch.Dispatcher) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx == nil {
		r.first = d
		return
	}
	if r.closed {
		return
	}
	old := r.stop
	r.startLocked(d)
	old()
}
