package dispatch

import "github.com/walhook/walhook/internal/outbox"

// Observer is told the outcome of every HTTP attempt, for metrics. Rows
// released unsent (at shutdown) made no attempt and are not reported.
type Observer interface {
	Attempted(outbox.Attempt)
}

// BreakerObserver is told, when the Observer implements it too, of every
// transition of a webhook's circuit breaker (open, closed). It must be
// safe for concurrent use and must not block.
type BreakerObserver interface {
	BreakerChanged(webhook string, state outbox.BreakerState)
}

// OutcomeObserver is told, when the Observer implements it too, of every
// failed write of a batch of delivery outcomes and of every outcome
// dropped because the database keeps refusing it (see Dispatcher.Stall).
// It must be safe for concurrent use and must not block.
type OutcomeObserver interface {
	OutcomeWriteFailed()
	OutcomesDropped(n int)
}
