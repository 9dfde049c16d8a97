package cdc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/pgnet"
	"github.com/walhook/walhook/test/netproxy"
)

// proxied starts a proxy to the test's server and returns it with the
// test's DSN through it.
func (b *bundle) proxied() (*netproxy.Proxy, string) {
	b.T.Helper()
	return netproxy.ForDSN(b.T, b.DSN)
}

func (b *bundle) waitFor(what string, within time.Duration, cond func() bool) time.Duration {
	b.T.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			b.T.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// TestSilentReplicationStreamIsReplaced freezes the replication connection
// (no byte moves, nothing is closed): capture must stop counting as
// streaming once the server stays silent past the bound, and, once new
// connections work again, stream from another connection, without waiting
// for the server's wal_sender_timeout to free the slot.
func TestSilentReplicationStreamIsReplaced(t *testing.T) {
	t.Parallel()
	b := setup(t, `CREATE TABLE item (id int PRIMARY KEY, v text)`, "  - table: item\n")
	px, dsn := b.proxied()
	b.Cfg.Database.DSN = dsn // the replication connection only
	b.Run(cdc.Options{StatusInterval: 200 * time.Millisecond, Silence: 3 * time.Second})
	b.waitFor("capture streaming", 10*time.Second, b.Capture.Streaming)
	b.Exec(`INSERT INTO item VALUES (1, 'x')`)
	b.waitFor("the first change enqueued", 10*time.Second, func() bool { return b.Count("webhook = 'a'") == 1 })

	px.Freeze()
	b.Exec(`INSERT INTO item VALUES (2, 'x')`)
	took := b.waitFor("capture to give the silent stream up", 20*time.Second, func() bool { return !b.Capture.Streaming() })
	t.Logf("silent stream given up %s after the path went dead (bound 3s)", took.Round(100*time.Millisecond))
	px.Heal()
	took = b.waitFor("the change committed while the path was dead enqueued", 30*time.Second, func() bool { return b.Count("webhook = 'a'") == 2 })
	t.Logf("streaming again %s after the path healed", took.Round(100*time.Millisecond))
	if !b.Capture.Streaming() {
		t.Error("not streaming after catching up")
	}
}

// TestLostOutboxTransactionDoesNotBlockTheReplay freezes the outbox
// connection while capture writes a large transaction into it: the server
// keeps that session and its open transaction (nothing was closed), whose
// rows would block the replay's inserts of the same keys for good. Capture
// must give the connection up at its deadline, end the session it left and
// enqueue every change exactly once.
func TestLostOutboxTransactionDoesNotBlockTheReplay(t *testing.T) {
	t.Parallel()
	const rows = 300_000
	b := setupAlone(t, `CREATE TABLE item (id int PRIMARY KEY, v text)`, "  - table: item\n")
	px, dsn := b.proxied()
	pc, err := pgxpool.ParseConfig(dsn + "&application_name=walhook_lost_outbox")
	if err != nil {
		t.Fatal(err)
	}
	pgnet.Configure(&pc.ConnConfig.Config)
	pc.PingTimeout = pgnet.PingTimeout
	pc.AfterConnect = outbox.PrepareConn
	ob, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ob.Close)
	b.Run(cdc.Options{Outbox: ob})
	b.waitFor("capture streaming", 10*time.Second, b.Capture.Streaming)
	b.Exec(`INSERT INTO item SELECT g, 'x' FROM generate_series(1, $1) g`, rows)
	// Freeze while the outbox transaction is open and has written rows.
	inTxn := func() bool {
		var n int
		if err := b.DB.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'walhook_lost_outbox' AND backend_xid IS NOT NULL`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n > 0
	}
	b.waitFor("the outbox transaction to write", 60*time.Second, inTxn)
	px.Freeze()
	time.Sleep(time.Second)
	if !inTxn() {
		t.Fatal("the outbox transaction ended before the path went dead: the test proves nothing")
	}
	px.Heal() // the frozen connection stays frozen for good
	b.waitFor("every change enqueued", 3*pgnet.StatementTimeout, func() bool { return b.Count("webhook = 'a'") == rows })
	if n := b.Count("true"); n != 2*rows {
		t.Errorf("%d delivery rows, want %d", n, 2*rows)
	}
}

// TestBusyWalsenderIsNotTakenForADeadPath: while the server decodes a large
// transaction of a table walhook does not capture, it answers status
// updates only every wal_sender_timeout/2 (spilling, then reading back). A
// stream silent past its bound whose walsender is busy is not replaced:
// replacing it would decode the transaction again, and again.
func TestBusyWalsenderIsNotTakenForADeadPath(t *testing.T) {
	t.Parallel()
	b := setupAlone(t, `CREATE TABLE item (id int PRIMARY KEY, v text); CREATE TABLE other (id int, v text)`, "  - table: item\n")
	var logs logBuf
	b.Run(cdc.Options{StatusInterval: 200 * time.Millisecond, Silence: time.Second}, &logs)
	b.waitFor("capture streaming", 10*time.Second, b.Capture.Streaming)
	b.Exec(`INSERT INTO other SELECT g, 'x' FROM generate_series(1, 2000000) g`)
	b.Exec(`INSERT INTO item VALUES (1, 'x')`)
	took := b.waitFor("the change after the large transaction enqueued", 90*time.Second, func() bool { return b.Count("webhook = 'a'") == 1 })
	t.Logf("enqueued %s after the large transaction committed", took.Round(100*time.Millisecond))
	if !strings.Contains(logs.String(), "its walsender is busy") {
		t.Error("the stream never went silent while the server was busy: the test proves nothing (write more rows)")
	}
}
