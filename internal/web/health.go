package web

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/walhook/walhook/internal/pgnet"
)

const (
	// probeEvery is how often Watch checks that the outbox database
	// answers.
	probeEvery = time.Second
	// probeStale is how long the outbox may go without a successful check
	// before /readyz reports it unreachable, even while the check still
	// runs (a dead path makes it wait for its deadline).
	probeStale = pgnet.PingTimeout + 2*probeEvery
)

// errNotChecked is the outbox's state before Watch's first check.
var errNotChecked = errors.New("not checked yet")

// outboxHealth is the outcome of Watch's checks: /readyz reads it, so that
// it answers at once whatever the database does.
type outboxHealth struct {
	mu   sync.Mutex
	okAt time.Time // last successful check
	err  error     // last check's error; nil after a success
}

func newOutboxHealth() *outboxHealth { return &outboxHealth{err: errNotChecked} }

// record stores a check's outcome and reports whether the state changed
// (from answering to not, or back).
func (h *outboxHealth) record(err error, now time.Time) (changed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	changed = (h.err == nil) != (err == nil) || errors.Is(h.err, errNotChecked)
	h.err = err
	if err == nil {
		h.okAt = now
	}
	return changed
}

// problem is why the outbox counts as unreachable at now, nil when it
// answered recently.
func (h *outboxHealth) problem(now time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return h.err
	}
	if now.Sub(h.okAt) > probeStale {
		return errors.New("the last check has not answered for " + now.Sub(h.okAt).Round(time.Second).String())
	}
	return nil
}

// Watch checks every second, until ctx ends, that the outbox database
// answers, for /readyz. Serve runs it; a caller serving Handler in another
// way runs it itself (until then /readyz reports the outbox as not checked).
func (s *Server) Watch(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, pgnet.PingTimeout)
		err := s.outbox.Ping(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if s.health.record(err, time.Now()) {
			if err != nil {
				s.log.Warn().Err(err).Msg("readiness: the outbox database does not answer")
			} else {
				s.log.Debug().Msg("readiness: the outbox database answers")
			}
		}
		t.Reset(probeEvery)
	}
}
