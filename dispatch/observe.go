package dispatch

import "time"

// Observer is told the outcome of every HTTP attempt, for metrics. Rows
// released unsent (at shutdown) made no attempt and are not reported.
type Observer interface {
	Attempted(Attempt)
}

// BreakerObserver, when the Observer implements it too, is told every
// transition of a webhook's circuit breaker (open, closed). It must be
// safe for concurrent use and must not block.
type BreakerObserver interface {
	BreakerChanged(webhook string, state BreakerState)
}

// Outcome is what an attempt led to.
type Outcome string

// Attempt outcomes.
const (
	// OutcomeDelivered: the receiver answered 2xx.
	OutcomeDelivered Outcome = "delivered"
	// OutcomeRetry: the attempt failed and the delivery will be tried again.
	OutcomeRetry Outcome = "retry"
	// OutcomeFailed: the last allowed attempt failed; the delivery is failed.
	OutcomeFailed Outcome = "failed"
)

// Attempt describes one finished HTTP attempt.
type Attempt struct {
	Webhook  string
	Delivery int64
	// Attempt is the delivery's attempt count, this attempt included.
	Attempt int
	Outcome Outcome
	// Status is the HTTP status, 0 when there was no response.
	Status int
	// Duration is how long the request took, up to the response headers
	// and the (bounded) body read.
	Duration time.Duration
	// CommittedAt is the commit time of the change the delivery carries.
	CommittedAt time.Time
}
