package dispatch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/tracecontext"

	oteltrace "go.opentelemetry.io/otel/trace"
)

// Backoff is the delay before retry number attempt (1 = the first retry):
// initial doubled for every further attempt, capped at max, then scaled by a
// jitter factor in [0.8, 1.2) taken from jitter in [0, 1) and capped at max
// again. max <= 0 means no cap. It is a pure function.
func Backoff(attempt int, initial, max time.Duration, jitter float64) time.Duration {
	if initial <= 0 {
		return 0
	}
	if attempt < 1 {
		attempt = 1
	}
	d := initial
	for i := 1; i < attempt; i++ {
		if (max > 0 && d >= max) || d > math.MaxInt64/4 {
			break
		}
		d *= 2
	}
	if max > 0 && d > max {
		d = max
	}
	switch {
	case jitter < 0 || math.IsNaN(jitter):
		jitter = 0
	case jitter >= 1:
		jitter = math.Nextafter(1, 0)
	}
	d = time.Duration(float64(d) * (0.8 + 0.4*jitter))
	if max > 0 && d > max {
		d = max
	}
	return d
}

// work sends h's queued jobs one at a time until the queue is closed, each
// in a request slot shared by all webhooks. Jobs are released unsent when
// ctx is done, when their lease could run out, while h's circuit breaker
// is open (unless the job is the probe), and while this dispatcher could
// not record its heartbeat (others may have taken its rows back).
func (d *Dispatcher) work(ctx context.Context, h *hook, results chan<- result) {
	for j := range h.queue {
		r := d.handle(ctx, j)
		if j.probe && r.Mode == outbox.Released {
			// The probe was not sent: probe again after the interval.
			h.breaker.noProbe(time.Now())
		}
		h.held.Add(-1)
		signal(d.freed)
		results <- r
	}
}

func (d *Dispatcher) handle(ctx context.Context, j *job) result {
	h := j.hook
	if !h.breaker.sending(j.probe) || ctx.Err() != nil {
		return release(j)
	}
	if h.rate != nil {
		// A token that would come after the row's deadline is not taken
		// (Wait fails at once): the row goes back unsent and the token
		// stays for a row that can use it.
		wctx, cancel := context.WithDeadline(ctx, j.deadline)
		err := h.rate.Wait(wctx)
		cancel()
		if err != nil {
			return release(j)
		}
	}
	select {
	case d.slots <- struct{}{}:
	case <-ctx.Done():
		return release(j)
	}
	defer func() { <-d.slots }()
	live, alive := d.live.current()
	switch {
	case time.Now().After(j.deadline):
		// It waited so long that its lease could run out mid-request
		// and another sender could send it too. Cannot happen unless
		// the process stalled: the lease covers the longest wait.
		h.log.Warn().Int64("delivery", j.id).Msg("claimed delivery waited too long to be sent; releasing it")
		return release(j)
	case !alive:
		return release(j)
	case !h.breaker.sending(j.probe):
		return release(j)
	}
	// The request runs under the liveness context (not ctx: shutdown
	// lets it finish): it is cancelled when the heartbeat lapses.
	return d.attempt(live, j)
}

// release is the outcome of a claimed row that was not sent.
func release(j *job) result {
	return result{ID: j.id, ClaimedAt: j.claimedAt, PrevAttemptAt: j.prevAttemptAt, State: outbox.StatePending, Mode: outbox.Released}
}

// response is what one attempt produced.
type response struct {
	status int // 0: no HTTP response
	// err is the row's last_error: why there was no usable response, or
	// for an HTTP error the status and the start of the body.
	err string
	// failure is err without an HTTP response body: set only when there
	// was no usable response (recorded as the attempt's error).
	failure string
	// body is the first outbox.MaxResponse bytes of the response body,
	// cleaned (recorded as the attempt's response).
	body       string
	retryAfter time.Duration // from Retry-After on 429/503; <0 when absent
}

// attempt sends j once and turns the response into the row's outcome. It
// logs the outcome (delivered at debug, failed attempts at warn; the error
// text is cut short and no body or header is logged), feeds the webhook's
// circuit breaker and tells the Observer.
func (d *Dispatcher) attempt(ctx context.Context, j *job) result {
	h := j.hook
	trace := tracecontext.ForDelivery(h.name, j.id)
	var span oteltrace.Span
	parent := tracecontext.NewSpanID()
	if d.tracer != nil {
		ctx, span = d.startSpan(ctx, trace, j)
		parent = tracecontext.SpanID(span.SpanContext().SpanID())
	}
	start := time.Now()
	resp := d.send(ctx, j, tracecontext.Format(trace, parent, tracecontext.FlagSampled))
	took := time.Since(start)
	if span != nil {
		endSpan(span, resp)
	}
	if resp.status == 0 && errors.Is(context.Cause(ctx), errHeartbeatLapsed) {
		// Cancelled because this dispatcher cannot prove it is alive:
		// not the receiver's failure. The row goes back as it was (if it
		// is still this dispatcher's claim) and is sent again.
		h.log.Warn().Int64("delivery", j.id).Dur("took_ms", took).
			Msg("request cancelled: the heartbeat could not be recorded, so another dispatcher may take the row back")
		return release(j)
	}
	r := result{ID: j.id, ClaimedAt: j.claimedAt, PrevAttemptAt: j.prevAttemptAt, Status: resp.status, Err: resp.err,
		Sent: outbox.SentAttempt{Started: start, Duration: took, Error: resp.failure, Response: resp.body,
			Probe: j.probe, SpanID: parent.String()}}
	ok := resp.status >= 200 && resp.status < 300
	// The breaker counts failures that say the receiver is unwell: no
	// response, a timeout, 5xx or 429. Any other answer shows it is up.
	healthy := resp.status != 0 && resp.status < 500 && resp.status != http.StatusTooManyRequests
	if state, changed := h.breaker.record(time.Now(), healthy, j.probe, resp.err); changed {
		d.breakerChanged(h, state, resp)
	}
	var outcome outbox.AttemptOutcome
	switch {
	case ok:
		r.State, outcome = outbox.StateDelivered, outbox.OutcomeDelivered
		h.log.Debug().Int64("delivery", j.id).Int("attempt", j.attempts).Int("status", resp.status).
			Dur("took_ms", took).Msg("delivered")
	case j.probe && !healthy:
		// A failed probe: recorded, but it does not use up an attempt.
		r.State, r.Mode, outcome = outbox.StatePending, outbox.Probed, outbox.OutcomeRetry
		h.log.Debug().Int64("delivery", j.id).Int("status", resp.status).Str("error", resp.logError()).
			Dur("took_ms", took).Msg("circuit-breaker probe failed")
	case j.attempts >= h.maxAttempts:
		r.State, outcome = outbox.StateFailed, outbox.OutcomeFailed
		h.log.Warn().Int64("delivery", j.id).Int("attempt", j.attempts).Int("status", resp.status).
			Str("error", resp.logError()).Dur("took_ms", took).
			Msg("delivery failed after its last attempt; retry it with `walhook retry`")
	default:
		delay := Backoff(j.attempts, h.initial, h.maxInterval, d.rand())
		if resp.retryAfter >= 0 {
			delay = min(max(delay, resp.retryAfter), h.maxInterval)
		}
		r.State, r.Delay, outcome = outbox.StatePending, delay, outbox.OutcomeRetry
		h.log.Warn().Int64("delivery", j.id).Int("attempt", j.attempts).Int("status", resp.status).
			Str("error", resp.logError()).Dur("took_ms", took).Dur("retry_in_ms", delay).
			Msg("delivery attempt failed")
	}
	switch outcome {
	case outbox.OutcomeDelivered:
		h.delivered.Add(1)
	case outbox.OutcomeRetry:
		h.retried.Add(1)
	case outbox.OutcomeFailed:
		h.failed.Add(1)
	}
	if d.obs != nil {
		d.obs.Attempted(outbox.Attempt{
			Webhook: h.name, Delivery: j.id, Attempt: j.attempts, Outcome: outcome,
			Status: resp.status, Duration: took, CommittedAt: j.committedAt,
		})
	}
	return r
}

// breakerChanged logs a breaker's transition (one line each) and tells
// the Observer.
func (d *Dispatcher) breakerChanged(h *hook, state outbox.BreakerState, resp response) {
	switch state {
	case outbox.BreakerOpen:
		h.log.Error().Int("failures", breakerThreshold).Int("status", resp.status).Str("error", resp.logError()).
			Dur("probe_in_ms", breakerMinInterval).
			Msg("circuit opened: the receiver keeps failing; its deliveries are paused (none is marked failed) and it is probed with one request at a growing interval")
	case outbox.BreakerClosed:
		h.log.Info().Msg("circuit closed: the receiver answers again; its deliveries resume")
		select {
		case d.reopened <- h.name:
		default:
		}
	}
	if o, ok := d.obs.(BreakerObserver); ok {
		o.BreakerChanged(h.name, state)
	}
}

// maxLogError is how much of an attempt's error text is logged; the
// outbox row keeps up to maxErrorBody.
const maxLogError = 256

// logText is an error text cut for a log line: a receiver's response body
// can be long, and can echo the request.
func logText(s string) string {
	if len(s) <= maxLogError {
		return s
	}
	cut := maxLogError
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// send makes the HTTP request for j, bounded by the webhook's timeout.
func (d *Dispatcher) send(ctx context.Context, j *job, traceparent string) response {
	h := j.hook
	ctx, cancel := context.WithTimeoutCause(ctx, h.timeout, h.timeoutErr)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, h.method, h.url, bytes.NewReader(j.body))
	if err != nil {
		return failed("build request: " + redactErr(err))
	}
	req.Header = h.signer.Header(j.id, j.body, traceparent, d.now())

	client := d.client
	if h.client != nil {
		client = h.client
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(context.Cause(ctx), h.timeoutErr) {
			return failed(h.timeoutErr.Error())
		}
		return failed(redactErr(err))
	}
	defer resp.Body.Close()
	out := response{status: resp.StatusCode, retryAfter: -1}
	body := d.readPrefix(resp.Body)
	drain(resp.Body)
	out.body = body
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return out
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 && resp.Header.Get("Location") != "" {
		loc := resp.Header.Get("Location")
		if u, err := resp.Location(); err == nil {
			loc = u.String()
		}
		out.err = cleanText(fmt.Sprintf("HTTP %d redirect to %s (redirects are not followed)",
			resp.StatusCode, config.RedactURL(loc)))
		out.failure = out.err
		return out
	}
	if t := strings.TrimSpace(body); t != "" {
		out.err = cleanText(fmt.Sprintf("HTTP %d: %s", resp.StatusCode, t))
	} else {
		out.err = strings.TrimSpace(fmt.Sprintf("HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode)))
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		if ra, ok := parseRetryAfter(resp.Header.Get("Retry-After"), d.now()); ok {
			out.retryAfter = ra
		}
	}
	return out
}

// logError is what a log line says of an attempt's error: why there was no
// usable response (connection, TLS, timeout, an unfollowed redirect), cut
// short; "" when the receiver answered (its status is logged). The
// response body is never logged: it can echo the request. The row's
// last_error and the attempt history keep its start.
func (r response) logError() string { return logText(r.failure) }

// failed is the response of an attempt that got no HTTP response.
func failed(err string) response {
	return response{err: err, failure: err, retryAfter: -1}
}

// readPrefix reads the first outbox.MaxResponse bytes of body (less if it
// ends first or fails) as cleaned text: invalid UTF-8 replaced, NUL bytes
// dropped, a rune cut by the limit left out.
func (d *Dispatcher) readPrefix(body io.Reader) string {
	buf, _ := d.bufs.Get().(*[outbox.MaxResponse]byte)
	if buf == nil {
		buf = new([outbox.MaxResponse]byte)
	}
	defer d.bufs.Put(buf)
	n, _ := io.ReadFull(body, buf[:])
	if n == 0 {
		return ""
	}
	b := buf[:n]
	if n == len(buf) {
		// The limit may have cut the last rune: leave its start out.
		for i := 1; i <= utf8.UTFMax && i <= n; i++ {
			if utf8.RuneStart(b[n-i]) {
				if !utf8.FullRune(b[n-i:]) {
					b = b[:n-i]
				}
				break
			}
		}
	}
	return cleanText(string(b))
}

// drain reads a bounded amount of what is left of a response body so that
// its connection can be reused; the caller closes it.
func drain(body io.Reader) {
	_, _ = io.CopyN(io.Discard, body, maxDrain)
}

// redactErr is an HTTP client error's text without the request URL (which
// may carry a password); the transport error itself names host and port.
func redactErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return cleanText(err.Error())
}

// cleanText makes s storable as PostgreSQL text of at most maxErrorBody
// bytes: valid UTF-8, no NUL bytes, cut at a rune boundary.
func cleanText(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "")
	if len(s) > maxErrorBody {
		cut := maxErrorBody
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}

// parseRetryAfter reads a Retry-After header: delay seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(min(secs, int64(math.MaxInt64/time.Second))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}
