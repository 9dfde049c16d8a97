package web

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"html/template"
	"log"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
)

// CaptureStatus is what the server reads from the capture running in this
// process; *cdc.Capture implements it.
type CaptureStatus interface {
	Streaming() bool
	ConfirmedLSN() pglogrepl.LSN
	// Stall says why capture holds changes back ("" when it does not).
	Stall() string
	// LookupErrors counts failed relation and computed-field lookups;
	// Collisions counts changes taken for replays after a gap.
	LookupErrors() int64
	Collisions() int64
}

// DispatchStatus is what the server reads from the dispatcher running in
// this process; *dispatch.Dispatcher implements it.
type DispatchStatus interface {
	// Stall says why dispatch is not making progress ("" when it is).
	Stall() string
}

// Options configure a Server. Config and Outbox are required.
type Options struct {
	Config *config.Config
	// Outbox is a pool on the outbox database.
	Outbox *pgxpool.Pool
	// SlotDB is a pool on the server that holds the replication slot (the
	// source database), for the slot lag metrics. Optional.
	SlotDB *pgxpool.Pool
	// Capture is the capture of this process, nil when it does not capture.
	// /readyz then only checks the database.
	Capture CaptureStatus
	// Dispatching says whether this process sends deliveries (shown on the
	// page next to the per-process counts).
	Dispatching bool
	// Dispatch is the dispatcher of this process, nil when it does not
	// send; /readyz reports its stalls.
	Dispatch DispatchStatus
	// Metrics are this process's metrics; New adds the database and
	// capture gauges to its registry. Optional: New makes its own.
	Metrics *Metrics
	Logger  zerolog.Logger
	// Version is shown on the page and in walhook_build_info.
	Version string
	// Now is the clock for sessions and retries. Optional: time.Now.
	Now func() time.Time
	// Reloader, when set, serves POST /-/reload and the page's reload
	// status. Optional.
	Reloader Reloader
}

// Server serves /metrics, /healthz, /readyz and the status page.
type Server struct {
	cfg         *config.Config
	outbox      *pgxpool.Pool
	store       *outbox.Store
	capture     CaptureStatus
	dispatching bool
	dispatch    DispatchStatus
	metrics     *Metrics
	stats       *statsReader
	log         zerolog.Logger
	version     string
	now         func() time.Time
	schema      string

	token string
	// csrfKey is random per process: CSRF tokens are HMACs of the session
	// id with it. sessionKey signs session cookies; it is derived from the
	// token, so sessions survive a restart and end when the token changes.
	csrfKey, sessionKey []byte
	// loopbackOnly makes the server refuse requests whose Host is not a
	// loopback name (DNS rebinding), when it runs without a token.
	loopbackOnly bool

	pages   map[string]*template.Template
	handler http.Handler
	// health is whether the outbox answers, kept by Watch for /readyz.
	health *outboxHealth

	// live is the configuration in use (SetConfig); reloader reloads it.
	live     atomic.Pointer[config.Config]
	reloader Reloader
}

// New builds a Server. It registers the database and capture gauges on the
// metrics registry, so it may be called once per Metrics.
func New(opts Options) (*Server, error) {
	if opts.Config == nil || opts.Outbox == nil {
		return nil, errors.New("web: Options.Config and Options.Outbox are required")
	}
	cfg := opts.Config
	s := &Server{
		cfg:          cfg,
		outbox:       opts.Outbox,
		store:        outbox.New(opts.Outbox, cfg.Database.Schema),
		capture:      opts.Capture,
		dispatching:  opts.Dispatching,
		dispatch:     opts.Dispatch,
		metrics:      opts.Metrics,
		log:          opts.Logger.With().Str("component", "http").Logger(),
		version:      opts.Version,
		now:          opts.Now,
		schema:       cfg.Database.Schema,
		token:        cfg.HTTP.Token,
		loopbackOnly: cfg.HTTP.Token == "",
		health:       newOutboxHealth(),
		reloader:     opts.Reloader,
	}
	s.live.Store(cfg)
	if s.version == "" {
		s.version = "dev"
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.schema == "" {
		s.schema = "walhook"
	}
	if s.metrics == nil {
		s.metrics = NewMetrics(cfg, s.version)
	}
	s.csrfKey = make([]byte, 32)
	if _, err := rand.Read(s.csrfKey); err != nil {
		return nil, fmt.Errorf("web: random key: %w", err)
	}
	if s.token != "" {
		s.sessionKey = mac([]byte(s.token), "walhook session key v1")
	} else {
		s.sessionKey = mac(s.csrfKey, "walhook session key v1")
	}
	var hooks []string
	for _, w := range cfg.Webhooks {
		hooks = append(hooks, w.Name)
	}
	s.stats = newStatsReader(s.store, opts.SlotDB, cfg.Database.Slot)
	if err := s.metrics.reg.Register(newCollector(s.stats, opts.Capture, hooks, cfg.Database.Slot)); err != nil {
		return nil, fmt.Errorf("web: register collector: %w", err)
	}
	var err error
	if s.pages, err = parsePages(); err != nil {
		return nil, err
	}
	s.handler = s.routes()
	return s, nil
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             2 * statsTimeout,
	}))
	mux.HandleFunc("GET /{$}", s.index)
	mux.HandleFunc("GET /deliveries/{id}", s.delivery)
	mux.HandleFunc("POST /deliveries/{id}/retry", s.retryDelivery)
	mux.HandleFunc("POST /webhooks/{name}/retry-failed", s.retryWebhook)
	mux.HandleFunc("GET /login", s.loginForm)
	mux.HandleFunc("POST /login", s.login)
	mux.HandleFunc("POST /logout", s.logout)
	mux.HandleFunc("POST /-/reload", s.reload)
	mux.Handle("GET /static/", http.FileServerFS(staticFS))

	cop := http.NewCrossOriginProtection()
	return s.secure(s.checkHost(cop.Handler(s.authenticate(mux))))
}

// Handler is the server's HTTP handler, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve serves on ln until ctx is done, then shuts down, letting running
// requests finish for a few seconds. It runs Watch meanwhile.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		s.Watch(wctx)
	}()
	defer func() {
		stopWatch()
		<-watched
	}()
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(debugWriter{s.log}, "", 0),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	s.log.Info().Str("addr", ln.Addr().String()).Bool("token", s.token != "").Msg("http server listening")
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		<-done
		return nil
	}
	return fmt.Errorf("http server: %w", err)
}

// debugWriter logs what net/http reports (bad requests, TLS noise) at
// debug level.
type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// secure sets the security headers of every response.
func (s *Server) secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		if !strings.HasPrefix(r.URL.Path, "/static/") {
			h.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

// checkHost refuses, when the server runs without a token, requests that
// name a host other than a loopback one: a web page whose name was rebound
// to 127.0.0.1 must not reach the unprotected page.
func (s *Server) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.loopbackOnly && !isProbe(r.URL.Path) && !loopbackHost(r.Host) {
			http.Error(w, "this walhook runs without http.token and answers only requests to a loopback address "+
				"(127.0.0.1, [::1] or localhost); set http.token to serve it under another name", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// healthz says the process is alive. It needs no token.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// readyz reports whether the outbox database answers (as Watch last found)
// and, when this process captures, whether capture is streaming. It reads
// state held in memory only, so it answers at once whatever the database
// does. It needs no token, so its body says what is wrong without naming a
// host, a user or a DSN: the details go to the log.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	var problems []string
	if err := s.health.problem(time.Now()); errors.Is(err, errNotChecked) {
		problems = append(problems, "outbox database not checked yet")
	} else if err != nil {
		problems = append(problems, "outbox database unreachable (details in the log)")
	}
	if s.capture != nil && !s.capture.Streaming() {
		problems = append(problems, "capture is not streaming from the replication slot")
	}
	if s.capture != nil {
		if why := s.capture.Stall(); why != "" {
			// The reason may quote a database error: it is in the log
			// and on the status page, not in this unauthenticated body.
			problems = append(problems, "capture is holding changes back (a source transaction not yet visible, or a lookup that keeps failing; details in the log)")
		}
	}
	if s.dispatch != nil && s.dispatch.Stall() != "" {
		problems = append(problems, "dispatch cannot write delivery outcomes (details in the log)")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s\n", strings.Join(problems, "; "))
		return
	}
	fmt.Fprintln(w, "ready")
}
