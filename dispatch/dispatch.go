package dispatch

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	oteltrace "go.opentelemetry.io/otel/trace"
	"golang.org/x/time/rate"

	"github.com/walhook/walhook/dispatch/sign"
	"github.com/walhook/walhook/internal/clienttls"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/pgnet"
)

// Options configure a Dispatcher. Pool and Config are required.
type Options struct {
	// Pool is a connection pool to the database that holds the outbox. The
	// Dispatcher uses up to four of its connections at once (two claims,
	// outcome writes, maintenance) and takes one more out of the pool for
	// LISTEN.
	Pool *pgxpool.Pool
	// Config supplies the webhooks, dispatch settings and the outbox schema.
	// Only enabled webhooks are served. It must not change while Run runs.
	Config *config.Config
	// Logger receives the Dispatcher's logs (component=dispatch).
	Logger zerolog.Logger
	// Client sends the webhook requests. Optional: the default is a
	// keep-alive transport sized to dispatch.concurrency. Whatever the
	// client, redirects are never followed. Webhooks with tls settings
	// always use a transport of their own.
	Client *http.Client
	// Now is the clock used to interpret Retry-After dates. Optional:
	// time.Now. Database timestamps always come from the database's now().
	Now func() time.Time
	// Version is sent in the User-Agent header as walhook/<Version>
	// (default "dev").
	Version string
	// ID identifies this sender in the locked_by column. Optional: the
	// default is hostname:pid.
	ID string
	// Rand returns jitter in [0, 1) for retry backoff. Optional: a
	// pseudo-random source. Calls are serialised, so it need not be safe for
	// concurrent use.
	Rand func() float64
	// Observer, when set, is told the outcome of every attempt (for
	// metrics). It is called from the sending goroutines, so it must be
	// safe for concurrent use and must not block.
	Observer Observer
	// MinutesEvery is how often the attempts counted in memory are added
	// to the per-minute counts of the status page's charts (the minutes
	// table); it should divide a minute. Optional: 10 s. Counts are also
	// written when Run returns.
	MinutesEvery time.Duration
	// Tracer, when set, records a span per attempt (see tracing.go). It
	// must come from a provider using tracing.IDGenerator, so that spans
	// carry the delivery's trace id. Optional: no spans.
	Tracer oteltrace.Tracer
	// Previous, when set, is the Dispatcher this one replaces after a
	// configuration reload: each webhook whose settings did not change
	// keeps its circuit breaker, rate limiter and HTTP client (with its
	// open connections), and the shared client and request slots are kept
	// when dispatch.concurrency did not change. Stop Previous once this one
	// runs; the two may share those while Previous finishes. Optional.
	Previous *Dispatcher
	// OwnNotify, when set, is the payload of the NOTIFYs of capture in the
	// same process, which wakes the Dispatcher itself (Wake) right after
	// each commit: those NOTIFYs are ignored rather than waking a second,
	// empty claim. Optional.
	OwnNotify string
}

// Tuning constants. They are not configuration: the contract only promises
// what they bound.
const (
	// heldPerWorker bounds how many claimed deliveries of a webhook may
	// wait for a free request slot, per slot of that webhook. It trades
	// claim batching against how long a claimed row may wait, which the
	// lease must cover.
	heldPerWorker = 8
	// maxHeldTotal caps the claimed-but-unsent rows of one webhook.
	maxHeldTotal = 4096
	// maxClaimBatch caps the rows one claim statement takes per webhook.
	maxClaimBatch = 512
	// claimsInFlight is how many claim statements may run at once.
	claimsInFlight = 2
	// maxFlushBatch caps the outcomes one UPDATE writes.
	maxFlushBatch = 512
	// flushTarget outcomes are written at once; fewer wait up to
	// flushDelay for company, so that statements stay large under load.
	flushTarget = 128
	flushDelay  = 3 * time.Millisecond
	// leaseMargin is added to the worst-case time a claimed row can take.
	leaseMargin = 10 * time.Second
	// leaseSafety is how much of its lease a row must have left, beyond
	// its timeout, to be sent; otherwise it is released unsent.
	leaseSafety = 4 * time.Second
	// maxErrorBody is how much of a failed response's body is kept.
	maxErrorBody = 4 << 10
	// maxDrain is how much more of a response body is read so that the
	// connection can be reused; larger bodies cost a new connection.
	maxDrain = 64 << 10
	// dbTimeout bounds every statement the Dispatcher runs.
	dbTimeout = pgnet.StatementTimeout
	// listenCheckEvery is how long the LISTEN connection may stay quiet
	// before it is pinged (a dead path closes nothing: without the ping,
	// the wait for a notification never ends).
	listenCheckEvery = 10 * time.Second
	// shutdownWait bounds how long Run keeps trying to write outcomes after
	// its context is cancelled.
	shutdownWait = 15 * time.Second
	// heartbeatEvery is how often a dispatcher records that it is alive.
	heartbeatEvery = time.Second
	// deadAfter is the silence after which a dispatcher counts as dead and
	// its claimed rows are taken back by the others; rescueEvery is how
	// often they look. A killed dispatcher's rows go out again within
	// deadAfter + rescueEvery + a claim.
	deadAfter   = outbox.DeadAfter
	rescueEvery = 2 * time.Second
	// A dispatcher that could not record its heartbeat for stopSendingAfter
	// (counted from when the last recorded one was sent, so never later
	// than the server's heartbeat_at) stops sending and cancels the
	// requests in flight: the others take its rows back deadAfter after
	// that heartbeat_at, and the margin covers the cancellation and the
	// rescue's own statement.
	stopSendingAfter = deadAfter - 2*time.Second
	// retentionEvery is how often old delivered and failed rows are deleted.
	retentionEvery = 5 * time.Minute
	// minutesEvery is the default of Options.MinutesEvery.
	minutesEvery = 10 * time.Second
	// Every sweepEvery, the next sweepObjects objects with open changes are
	// checked for parked changes left without a predecessor (one index
	// descent each).
	sweepEvery   = 10 * time.Second
	sweepObjects = 1000
)

// Dispatcher claims deliveries from the outbox and sends them. Create it with
// New and start it with Run.
type Dispatcher struct {
	store  *outbox.Store
	log    zerolog.Logger
	client *http.Client
	now    func() time.Time
	rand   func() float64
	// bufs holds the buffers response bodies are read into.
	bufs   sync.Pool
	id     string
	obs    Observer
	tracer oteltrace.Tracer // nil: no spans
	// ownNotify is Options.OwnNotify.
	ownNotify string

	hooks     map[string]*hook
	hookNames []string
	order     []*hook // claim order

	concurrency     int
	maxUnwritten    int
	poll            time.Duration
	retention       time.Duration
	failedRetention time.Duration
	minutesEvery    time.Duration
	// minutes holds per-minute counts not written yet (a write failed);
	// only maintain, then Run once maintain has returned, use it.
	minutes *minuteCounts

	running atomic.Bool
	// slots holds a token per request in flight, all webhooks together
	// (dispatch.concurrency). Waiting senders get slots in turn.
	slots chan struct{}
	// unwritten counts claimed rows whose outcome is not in the database yet.
	unwritten atomic.Int64
	// holding is the set of those rows.
	holding holding
	// live says whether the heartbeat was recorded recently enough to
	// send, and cancels the requests in flight when it lapses.
	live *liveness
	// outcomesFailing is when writing outcomes began to keep failing
	// (UnixNano), 0 while they are written (see Stall).
	outcomesFailing atomic.Int64
	// wake asks the claimer to claim now; closed asks it to claim once no
	// claim is running (outcomes were written, which may have unblocked a
	// later change of the same object); freed tells it that a request
	// slot became free. Each holds at most one pending signal.
	wake   chan struct{}
	closed chan struct{}
	freed  chan struct{}
	// reopened receives webhooks whose breaker closed: their rows waiting
	// for a retry are made due.
	reopened chan string

	// ownClient: client is the default one New made (not Options.Client),
	// which a Dispatcher replacing this one may keep.
	ownClient bool
}

// hook is a configured webhook prepared for sending.
type hook struct {
	name string
	// limit caps this webhook's requests in flight; maxHeld its claimed
	// rows not finished yet; lease is how long a claim of it lasts.
	limit   int
	maxHeld int
	lease   time.Duration
	held    atomic.Int64
	// Attempts by outcome since the counts were last taken for the
	// minutes table: the only cost the charts add to an attempt.
	delivered, retried, failed atomic.Int64
	queue                      chan *job
	breaker                    *breaker
	floor                      claimFloor
	rate                       *rate.Limiter // nil: no rate limit
	// client sends this webhook's requests when it has tls settings (its
	// own transport); nil: the Dispatcher's shared client.
	client *http.Client

	conf        config.Webhook // the settings it was made from
	url         string
	method      string
	signer      *sign.Signer // the request headers and signatures
	timeout     time.Duration
	timeoutErr  error
	maxAttempts int
	initial     time.Duration
	maxInterval time.Duration
	log         zerolog.Logger
}

// timeoutError is the cause of an attempt's context when its timeout expires.
type timeoutError struct{ after time.Duration }

func (e *timeoutError) Error() string { return "timeout after " + e.after.String() }

// New checks opts and returns a Dispatcher ready to Run.
func New(opts Options) (*Dispatcher, error) {
	if opts.Pool == nil {
		return nil, errors.New("dispatch: Options.Pool is nil")
	}
	if opts.Config == nil {
		return nil, errors.New("dispatch: Options.Config is nil")
	}
	cfg := opts.Config
	d := &Dispatcher{
		store:           outbox.New(opts.Pool, cfg.Database.Schema),
		log:             opts.Logger.With().Str("component", "dispatch").Logger(),
		now:             opts.Now,
		id:              opts.ID,
		obs:             opts.Observer,
		tracer:          opts.Tracer,
		ownNotify:       opts.OwnNotify,
		concurrency:     cfg.Dispatch.Concurrency,
		poll:            cfg.Dispatch.PollInterval.D(),
		retention:       cfg.Dispatch.Retention.D(),
		failedRetention: cfg.Dispatch.FailedRetention.D(),
		minutesEvery:    opts.MinutesEvery,
		hooks:           map[string]*hook{},
		wake:            make(chan struct{}, 1),
		closed:          make(chan struct{}, 1),
		freed:           make(chan struct{}, 1),
		reopened:        make(chan string, 64),
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.id == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "localhost"
		}
		// The random part tells a restarted process (same host, same pid
		// in a container) from the one that died.
		d.id = fmt.Sprintf("%s:%d:%04x", host, os.Getpid(), rand.IntN(1<<16))
	}
	if opts.Rand == nil {
		d.rand = rand.Float64
	} else {
		var mu sync.Mutex
		d.rand = func() float64 {
			mu.Lock()
			defer mu.Unlock()
			return opts.Rand()
		}
	}
	if d.concurrency <= 0 || d.poll <= 0 {
		return nil, errors.New("dispatch: dispatch.concurrency and dispatch.poll_interval must be positive: " +
			"config.Load sets their defaults; call Config.ApplyDefaults on a Config built in code")
	}
	if d.minutesEvery <= 0 {
		d.minutesEvery = minutesEvery
	}
	version := opts.Version
	if version == "" {
		version = "dev"
	}
	maxHeld := 0
	for _, w := range cfg.Webhooks {
		if !w.IsEnabled() {
			continue
		}
		if _, dup := d.hooks[w.Name]; dup {
			return nil, fmt.Errorf("dispatch: webhook %q is configured twice", w.Name)
		}
		h, err := newHook(w, version, d.log)
		if err != nil {
			return nil, err
		}
		if w.TLS.IsSet() {
			if h.client, err = tlsClient(w, d.concurrency, h.log); err != nil {
				return nil, err
			}
		}
		if w.Concurrency <= 0 {
			return nil, fmt.Errorf("dispatch: webhook %q: concurrency must be positive: "+
				"config.Load sets its default; call Config.ApplyDefaults on a Config built in code", w.Name)
		}
		h.limit = min(w.Concurrency, d.concurrency)
		h.maxHeld = min(h.limit*heldPerWorker, maxHeldTotal)
		var rateWait time.Duration
		if w.Rate > 0 {
			burst := max(1, int(math.Ceil(w.Rate/10)))
			h.rate = rate.NewLimiter(rate.Limit(w.Rate), burst)
			// Rows wait for their token while claimed: hold about two
			// seconds' worth, at least one row (not one per request
			// slot: at 30/m, 16 rows are 32 s of tokens), and let the
			// lease cover the wait for all of them.
			h.maxHeld = min(h.maxHeld, max(1, int(math.Ceil(2*w.Rate))))
			rateWait = time.Duration(float64(h.maxHeld) / w.Rate * float64(time.Second))
		}
		// A claimed row waits for at most maxHeld/limit requests ahead of
		// it, each bounded by a timeout, and for its rate-limit token,
		// then takes its own: the lease covers that. (A dead dispatcher's
		// rows are taken back sooner, through its heartbeat.)
		h.lease = time.Duration((h.maxHeld+h.limit-1)/h.limit+1)*h.timeout + rateWait + leaseMargin
		h.queue = make(chan *job, h.maxHeld)
		h.breaker = newBreaker()
		if p := opts.Previous; p != nil && p.concurrency == d.concurrency {
			if ph := p.hooks[w.Name]; ph != nil && config.SameWebhook(ph.conf, w) {
				h.breaker, h.rate, h.client = ph.breaker, ph.rate, ph.client
			}
		}
		d.hooks[w.Name] = h
		d.hookNames = append(d.hookNames, w.Name)
		d.order = append(d.order, h)
		maxHeld += h.maxHeld
	}
	d.maxUnwritten = 4 * max(maxHeld, 1)
	d.minutes = newMinuteCounts(d.order, d.now())
	d.slots = make(chan struct{}, d.concurrency)
	if p := opts.Previous; p != nil && p.concurrency == d.concurrency {
		// Requests Previous still has in flight count against the limit.
		d.slots = p.slots
	}
	if opts.Client != nil {
		c := *opts.Client
		c.CheckRedirect = noRedirects
		d.client = &c
	} else if p := opts.Previous; p != nil && p.concurrency == d.concurrency && p.ownClient {
		d.client, d.ownClient = p.client, true
	} else {
		d.client, d.ownClient = defaultClient(d.concurrency), true
	}
	return d, nil
}

func newHook(w config.Webhook, version string, log zerolog.Logger) (*hook, error) {
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("dispatch: webhook %q: url %s is not an absolute http(s) URL", w.Name, config.RedactURL(w.URL))
	}
	h := &hook{
		conf:        w,
		name:        w.Name,
		url:         u.String(),
		method:      w.HTTPMethod,
		timeout:     w.Timeout.D(),
		maxAttempts: w.Retry.MaxAttempts,
		initial:     w.Retry.InitialInterval.D(),
		maxInterval: w.Retry.MaxInterval.D(),
		log:         log.With().Str("webhook", w.Name).Str("url", config.URLTarget(w.URL)).Logger(),
	}
	if h.method == "" || h.timeout <= 0 || h.maxAttempts <= 0 || h.initial <= 0 || h.maxInterval <= 0 {
		return nil, fmt.Errorf("dispatch: webhook %q: http_method, timeout, retry.max_attempts and the retry intervals must be set: "+
			"config.Load sets their defaults; call Config.ApplyDefaults on a Config built in code", w.Name)
	}
	h.timeoutErr = &timeoutError{after: h.timeout}
	if h.signer, err = sign.New(w.SignSettings(version)); err != nil {
		// Load refuses these with the file and line; a Config built in
		// code gets the same rules here.
		return nil, fmt.Errorf("dispatch: webhook %q: %w", w.Name, err)
	}
	return h, nil
}

// noRedirects makes the client return 3xx responses as they are: a redirect
// is a failed attempt that names its Location.
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func defaultClient(concurrency int) *http.Client {
	return &http.Client{Transport: defaultTransport(concurrency), CheckRedirect: noRedirects}
}

// defaultTransport is a keep-alive transport sized to concurrency.
func defaultTransport(concurrency int) *http.Transport {
	t, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		t = &http.Transport{Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true, IdleConnTimeout: 90 * time.Second}
	}
	t = t.Clone()
	t.MaxIdleConns = max(100, 2*concurrency)
	t.MaxIdleConnsPerHost = concurrency
	return t
}

// tlsClient is the client of a webhook with tls settings: a transport of
// its own (it keeps its connections alive like the shared one) whose TLS
// configuration reads the certificate files again when they change. It
// logs a warning when the receiver's certificate is not checked.
func tlsClient(w config.Webhook, concurrency int, log zerolog.Logger) (*http.Client, error) {
	opts := w.TLSOptions()
	opts.OnReloadError = func(err error) {
		log.Error().Err(err).Msg("tls: a changed certificate file cannot be used; fix it (the previous one is kept)")
	}
	tc, err := clienttls.New(opts)
	if err != nil {
		return nil, fmt.Errorf("dispatch: webhook %q: tls: %w", w.Name, err)
	}
	if w.TLS.InsecureSkipVerify {
		log.Warn().Msg("tls.insecure_skip_verify is set: the receiver's certificate is not checked, so anyone on the path can read and change these webhooks; set tls.ca_file instead")
	}
	t := defaultTransport(concurrency)
	t.TLSClientConfig = tc.TLS()
	return &http.Client{Transport: t, CheckRedirect: noRedirects}, nil
}

// Run claims and sends deliveries until ctx is cancelled. On return, rows it
// claimed are either finished (in-flight requests get up to their timeout) or
// released back to pending; nothing it held stays 'delivering' unless the
// database was unreachable throughout shutdown, in which case the rows' lease
// returns them later. Database errors are logged and retried, never returned:
// Run returns nil once ctx is done, or an error if it is already running.
func (d *Dispatcher) Run(ctx context.Context) error {
	if !d.running.CompareAndSwap(false, true) {
		return errors.New("dispatch: Run called while the Dispatcher is already running")
	}
	defer d.running.Store(false)
	if len(d.hookNames) == 0 {
		d.log.Warn().Msg("no enabled webhooks: nothing will be sent")
	}
	d.log.Info().Str("id", d.id).Int("concurrency", d.concurrency).
		Strs("webhooks", d.hookNames).Msg("dispatcher started")

	// Requests, claims and outcome writes run on a context that shutdown
	// does not cancel, so that nothing is left half-done; each is bounded by
	// its own timeout instead.
	hard := context.WithoutCancel(ctx)
	results := make(chan result, 4*d.concurrency)

	// The heartbeat comes first: rows are claimed only by a dispatcher
	// the others can see alive.
	d.live = newLiveness(hard)
	defer d.live.stop()
	d.beat(ctx)
	beatCtx, stopBeat := context.WithCancel(hard)
	beatDone := make(chan struct{})
	go func() {
		defer close(beatDone)
		d.heartbeat(beatCtx)
	}()
	var bg sync.WaitGroup
	bg.Go(func() { d.listen(ctx) })
	bg.Go(func() { d.maintain(ctx) })
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		d.writeOutcomes(hard, results)
	}()
	var workers sync.WaitGroup
	for _, h := range d.order {
		for range h.limit {
			workers.Go(func() { d.work(ctx, h, results) })
		}
	}

	d.claimLoop(ctx, hard)

	for _, h := range d.order {
		close(h.queue)
	}
	workers.Wait()
	close(results)
	<-writerDone
	bg.Wait()
	// Every attempt is counted by now: write the counts of the last
	// seconds too.
	d.writeMinutes(hard, true)
	stopBeat()
	<-beatDone
	dctx, cancel := context.WithTimeout(hard, 5*time.Second)
	if err := d.store.Deregister(dctx, d.id); err != nil {
		d.log.Warn().Err(err).Msg("could not remove this dispatcher's heartbeat row")
	}
	cancel()
	d.log.Info().Msg("dispatcher stopped")
	return nil
}

// Wake makes the Dispatcher claim now, as a NOTIFY on the outbox channel
// does: capture in the same process calls it after each commit that
// enqueued rows, which saves the NOTIFY's trip through the server.
func (d *Dispatcher) Wake() { signal(d.wake) }

// signal leaves a signal in c unless one is already pending.
func signal(c chan<- struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// retryDelay is the pause after the n-th consecutive database error.
func (d *Dispatcher) retryDelay(n int) time.Duration {
	return Backoff(n, 100*time.Millisecond, 5*time.Second, d.rand())
}

// sleep waits for delay or until ctx is done and reports whether ctx is live.
func sleep(ctx context.Context, delay time.Duration) bool {
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
