package outbox

import "time"

// AttemptOutcome is what an attempt led to.
type AttemptOutcome string

// Attempt outcomes.
const (
	// OutcomeDelivered: the receiver answered 2xx.
	OutcomeDelivered AttemptOutcome = "delivered"
	// OutcomeRetry: the attempt failed and the delivery will be tried again.
	OutcomeRetry AttemptOutcome = "retry"
	// OutcomeFailed: the last allowed attempt failed; the delivery is failed.
	OutcomeFailed AttemptOutcome = "failed"
)

// Attempt describes one finished HTTP attempt.
type Attempt struct {
	Webhook  string
	Delivery int64
	// Attempt is the delivery's attempt count, this attempt included.
	Attempt int
	Outcome AttemptOutcome
	// Status is the HTTP status, 0 when there was no response.
	Status int
	// Duration is how long the request took, up to the response headers
	// and the (bounded) body read.
	Duration time.Duration
	// CommittedAt is the commit time of the change the delivery carries.
	CommittedAt time.Time
}
