package dispatch_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/test/netproxy"
)

// outcomeCounts is an Observer that counts failed and dropped outcome
// writes (the dispatch.OutcomeObserver side).
type outcomeCounts struct {
	failed, dropped atomic.Int64
}

func (o *outcomeCounts) Attempted(outbox.Attempt) {}
func (o *outcomeCounts) OutcomeWriteFailed()      { o.failed.Add(1) }
func (o *outcomeCounts) OutcomesDropped(n int)    { o.dropped.Add(int64(n)) }

// One delivery twice in an outcome batch: its first outcome
// waits in memory while writes fail, the row is taken back as the rescue
// does, and the same dispatcher claims and sends it again. The batch then
// held the id twice, the attempts INSERT failed with SQLSTATE 21000 on
// every try, and no outcome was written any more. Only the latest
// claim's outcome counts.
func TestSameDeliveryTwiceInAnOutcomeBatch(t *testing.T) {
	t.Parallel()
	e := setup(t)
	// While refuse has a row, every outcome statement fails (a statement
	// trigger on the attempts table, which only outcomes insert into).
	e.exec(`CREATE TABLE refuse ()`)
	e.exec(`CREATE FUNCTION refuse_outcomes() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF EXISTS (SELECT FROM refuse) THEN RAISE EXCEPTION 'test: outcomes refused'; END IF;
			RETURN NULL;
		END $$`)
	e.exec(`CREATE TRIGGER refuse BEFORE INSERT ON walhook.attempts FOR EACH STATEMENT EXECUTE FUNCTION refuse_outcomes()`)
	e.exec(`INSERT INTO refuse DEFAULT VALUES`)
	rec := newRecorder(t, nil)
	id := e.insertOne("w", `{"n":1}`)
	e.start(e.pool, testConfig(2, hookConfig("w", rec.srv.URL)))
	waitFor(t, 10*time.Second, "the first request", func() bool { return rec.len() == 1 })
	// Its outcome is refused; take the row back as the rescue does.
	e.exec(`UPDATE walhook.deliveries SET state = 'pending', locked_by = NULL, locked_until = NULL WHERE id = $1`, id)
	waitFor(t, 10*time.Second, "the second request", func() bool { return rec.len() == 2 })
	e.exec(`DELETE FROM refuse`)
	r := e.waitState(id, "delivered", 20*time.Second)
	if r.Attempts != 2 {
		t.Errorf("attempts = %d, want 2", r.Attempts)
	}
	// And the writer is not wedged: a new row goes out and is recorded.
	next := e.insertOne("w", `{"n":2}`)
	e.waitState(next, "delivered", 20*time.Second)
	var n int
	if err := e.pool.QueryRow(t.Context(), `SELECT count(*) FROM walhook.attempts WHERE delivery_id = $1`, id).Scan(&n); err != nil || n != 1 {
		t.Errorf("%d attempts recorded for the twice-sent row (%v), want 1 (the latest claim's)", n, err)
	}
}

// An outcome the database keeps refusing (here a trigger, for one row)
// does not hold up the others: after a few failed batches rows are
// written one by one; the refused one is dropped after a few tries, with
// an error line and a metric, and Stall (so /readyz) reports the writer
// meanwhile.
func TestRefusedOutcomeDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, nil)
	poison := e.insertOne("w", `{"poison":true}`)
	e.exec(`CREATE FUNCTION refuse_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.delivery_id = ` + strconv.FormatInt(poison, 10) + ` THEN RAISE EXCEPTION 'test: this outcome is refused'; END IF;
			RETURN NEW;
		END $$`)
	e.exec(`CREATE TRIGGER refuse BEFORE INSERT ON walhook.attempts FOR EACH ROW EXECUTE FUNCTION refuse_outcome()`)
	obs := &outcomeCounts{}
	var logs syncBuffer
	d, _ := e.startDispatcher(e.pool, testConfig(4, hookConfig("w", rec.srv.URL)), func(o *dispatch.Options) {
		o.Observer = obs
		o.Logger = zerolog.New(&logs).Level(zerolog.WarnLevel)
	})
	waitFor(t, 10*time.Second, "the poisoned row's request", func() bool { return rec.len() >= 1 })
	stalled := false
	waitFor(t, 10*time.Second, "Stall to report the outcome writer", func() bool {
		stalled = stalled || d.Stall() != ""
		return stalled
	})
	e.insertMany("w", 20, 1000)
	waitFor(t, 30*time.Second, "the other rows delivered", func() bool {
		return e.count(`state = 'delivered' AND id <> $1`, poison) == 20
	})
	waitFor(t, 30*time.Second, "the refused outcome dropped", func() bool { return obs.dropped.Load() == 1 })
	waitFor(t, 10*time.Second, "Stall to clear", func() bool { return d.Stall() == "" })
	if obs.failed.Load() < 3 {
		t.Errorf("%d failed outcome writes counted, want at least 3", obs.failed.Load())
	}
	out := logs.String()
	if !strings.Contains(out, `"level":"error"`) || !strings.Contains(out, "dropping a delivery outcome") {
		t.Errorf("no error line for the dropped outcome:\n%s", out)
	}
	// The refused outcome was not written: the row is still claimed (its
	// lease returns it to pending later), never delivered.
	if r := e.row(poison); r.State == "delivered" {
		t.Errorf("the row whose outcome was refused is %s", r.State)
	}
}

// A claim that commits but whose answer never reaches the dispatcher (the
// connection dies right after the commit, as when the primary is killed
// and a standby takes over) leaves its rows delivering under the
// dispatcher's id, which is alive and keeps beating. They are put back
// and sent before the next claim, not once their lease runs out (here
// over five minutes).
func TestClaimWhoseAnswerWasLost(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, nil)
	px, proxied := netproxy.ForDSN(t, e.dsn)
	pool, err := pgxpool.New(context.Background(), proxied)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	const marker = "lost-answer-7f3a"
	cut := px.CutOnAnswer([]byte(marker))
	lost := e.insertOne("w", `{"event":"created","model":"Site","data":{"id":1,"name":"`+marker+`"}}`)
	e.insertMany("w", 20, 10)
	stop := e.start(pool, testConfig(4, hookConfig("w", rec.srv.URL, func(w *config.Webhook) {
		w.Timeout = config.Duration(30 * time.Second)
	})))
	select {
	case <-cut:
	case <-time.After(30 * time.Second):
		t.Fatal("the claim's answer was never cut")
	}
	r := e.waitState(lost, "delivered", 60*time.Second)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if r.Attempts != 1 {
		t.Errorf("attempts = %d, want 1 (the lost claim sent nothing)", r.Attempts)
	}
	n := 0
	for _, q := range rec.requests() {
		if strings.Contains(string(q.Body), marker) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the row of the lost claim was received %d times, want 1", n)
	}
	if left := e.count(`state <> 'delivered'`); left != 0 {
		t.Errorf("%d rows not delivered", left)
	}
}

// Claims skip the rows due before their floor (see claimFloor); a row made
// pending by hand with next_attempt_at long past is found by the claim
// after the next poll, which starts from the head of the queue.
func TestRowMadePendingInThePastIsClaimed(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, nil)
	e.insertMany("w", 50, 0)
	e.start(e.pool, testConfig(4, hookConfig("w", rec.srv.URL)))
	waitFor(t, 10*time.Second, "the first rows delivered", func() bool { return e.count(`state = 'delivered'`) == 50 })
	// New rows keep coming (the floor follows them), and one row is put
	// back by hand as it was when it was first due, an hour ago.
	old := e.insertOne("w", `{"n":"old"}`)
	e.exec(`UPDATE walhook.deliveries SET state = 'delivered', delivered_at = now() WHERE id = $1`, old)
	e.insertMany("w", 50, 1000)
	waitFor(t, 10*time.Second, "the new rows delivered", func() bool { return e.count(`state = 'delivered'`) == 101 })
	e.exec(`UPDATE walhook.deliveries SET state = 'pending', next_attempt_at = now() - interval '1 hour' WHERE id = $1`, old)
	e.insertMany("w", 10, 2000)
	e.waitState(old, "delivered", 10*time.Second)
}

// TestWakeClaimsAtOnce: Wake (capture's call after each commit in the same
// process) starts a claim at once, without a NOTIFY and long before the
// next poll.
func TestWakeClaimsAtOnce(t *testing.T) {
	t.Parallel()
	e := setup(t)
	d := e.startIdle()
	id := e.insertOne("w", `{"n":1}`) // no NOTIFY
	time.Sleep(time.Second)
	if r := e.row(id); r.State != "pending" {
		t.Fatalf("row %d is %s before Wake: something else woke the dispatcher, the test proves nothing", id, r.State)
	}
	d.Wake()
	e.waitState(id, "delivered", 10*time.Second)
}

// TestOwnNotifyIsIgnored: a NOTIFY carrying the payload of capture in the
// same process (which wakes the dispatcher itself) starts no claim; any
// other NOTIFY does.
func TestOwnNotifyIsIgnored(t *testing.T) {
	t.Parallel()
	e := setup(t)
	e.startIdle(func(o *dispatch.Options) { o.OwnNotify = "walhook self" })
	id := e.insertOne("w", `{"n":1}`)
	e.exec(`SELECT pg_notify('walhook_deliveries', 'walhook self')`)
	time.Sleep(time.Second)
	if r := e.row(id); r.State != "pending" {
		t.Fatalf("row %d is %s after its own process's NOTIFY, want pending", id, r.State)
	}
	e.exec(`SELECT pg_notify('walhook_deliveries', '')`)
	e.waitState(id, "delivered", 10*time.Second)
}

// startIdle starts a Dispatcher of webhook w that polls once an hour, and
// returns once it has registered and made the claims of its start.
func (e *testEnv) startIdle(opts ...func(*dispatch.Options)) *dispatch.Dispatcher {
	e.t.Helper()
	rec := newRecorder(e.t, nil)
	cfg := testConfig(4, hookConfig("w", rec.srv.URL))
	cfg.Dispatch.PollInterval = config.Duration(time.Hour)
	d, _ := e.startDispatcher(e.pool, cfg, opts...)
	waitFor(e.t, 10*time.Second, "the dispatcher's heartbeat", func() bool {
		var n int
		_ = e.pool.QueryRow(context.Background(), `SELECT count(*) FROM walhook.dispatchers`).Scan(&n)
		return n == 1
	})
	time.Sleep(500 * time.Millisecond) // the claims of its start are over
	return d
}
