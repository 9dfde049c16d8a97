package dispatch_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
)

// attempts records what a Dispatcher reports to its Observer.
type attempts struct {
	mu  sync.Mutex
	got []outbox.Attempt
}

func (a *attempts) Attempted(at outbox.Attempt) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got = append(a.got, at)
}

func (a *attempts) all() []outbox.Attempt {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]outbox.Attempt(nil), a.got...)
}

func TestObserverSeesEveryAttemptWithItsOutcome(t *testing.T) {
	e := setup(t)
	ok := newRecorder(t, nil)
	bad := newRecorder(t, status(http.StatusInternalServerError))
	cfg := testConfig(4, hookConfig("ok", ok.srv.URL), hookConfig("bad", bad.srv.URL, func(w *config.Webhook) {
		w.Retry.MaxAttempts = 2
	}))
	okID := e.insertOne("ok", `{"n":1}`)
	badID := e.insertOne("bad", `{"n":2}`)
	// The commit time the observer gets is the row's committed_at.
	committed := time.Date(2024, 1, 2, 3, 4, 5, 123456000, time.UTC)
	e.exec(`UPDATE walhook.deliveries SET committed_at = $1`, committed)
	obs := &attempts{}
	e.start(e.pool, cfg, func(o *dispatch.Options) { o.Observer = obs })
	e.waitState(okID, "delivered", 10*time.Second)
	e.waitState(badID, "failed", 10*time.Second)

	byID := map[int64][]outbox.Attempt{}
	waitFor(t, 5*time.Second, "three attempts reported", func() bool { return len(obs.all()) == 3 })
	for _, a := range obs.all() {
		byID[a.Delivery] = append(byID[a.Delivery], a)
		if !a.CommittedAt.Equal(committed) {
			t.Errorf("delivery %d: CommittedAt = %v, want %v", a.Delivery, a.CommittedAt, committed)
		}
		if a.Duration <= 0 || a.Duration > 5*time.Second {
			t.Errorf("delivery %d: Duration = %v", a.Delivery, a.Duration)
		}
	}
	if got := byID[okID]; len(got) != 1 || got[0].Outcome != outbox.OutcomeDelivered || got[0].Status != 204 ||
		got[0].Webhook != "ok" || got[0].Attempt != 1 {
		t.Errorf("ok delivery reported %+v", got)
	}
	got := byID[badID]
	if len(got) != 2 {
		t.Fatalf("bad delivery reported %d attempts, want 2: %+v", len(got), got)
	}
	if got[0].Outcome != outbox.OutcomeRetry || got[0].Attempt != 1 || got[0].Status != 500 ||
		got[1].Outcome != outbox.OutcomeFailed || got[1].Attempt != 2 || got[1].Webhook != "bad" {
		t.Errorf("bad delivery reported %+v", got)
	}
}
