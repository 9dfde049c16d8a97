package cdc_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/test/cdctest"
)

const reloadSchema = `
CREATE TABLE t1 (id bigserial PRIMARY KEY, v int, note text);
CREATE TABLE t2 (id bigserial PRIMARY KEY, v int);`

// reconfig parses the test's configuration with other models and extra
// webhooks (YAML list items).
func (b *bundle) reconfig(modelsYAML, extraHooks string) *config.Config {
	b.T.Helper()
	return b.Parse(modelsYAML, cdctest.Webhooks+extraHooks)
}

// load writes transactions until stop is closed, each inserting one row
// into t1 and then one into t2; it returns how many committed.
func load(t *testing.T, db *pgxpool.Pool, stop <-chan struct{}) func() int64 {
	var n atomic.Int64
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := pgx.BeginFunc(context.Background(), db, func(tx pgx.Tx) error {
					if _, err := tx.Exec(context.Background(), "INSERT INTO t1 (v, note) VALUES ($1, 'n')", w*1_000_000+i); err != nil {
						return err
					}
					_, err := tx.Exec(context.Background(), "INSERT INTO t2 (v) VALUES ($1)", w*1_000_000+i)
					return err
				})
				if err != nil {
					t.Errorf("load: %v", err)
					return
				}
				n.Add(1)
			}
		}()
	}
	return func() int64 { wg.Wait(); return n.Load() }
}

// outboxRow is a delivery's key and body.
type outboxRow struct {
	webhook, model string
	lsn            pglogrepl.LSN
	seq            int
	body           string
}

func (b *bundle) outboxRows() []outboxRow {
	b.T.Helper()
	rows, err := b.DB.Query(context.Background(), "SELECT webhook, model, commit_lsn::text, seq, body::text FROM walhook.deliveries ORDER BY commit_lsn, seq, webhook")
	if err != nil {
		b.T.Fatal(err)
	}
	defer rows.Close()
	var out []outboxRow
	for rows.Next() {
		var r outboxRow
		var lsn string
		if err := rows.Scan(&r.webhook, &r.model, &lsn, &r.seq, &r.body); err != nil {
			b.T.Fatal(err)
		}
		if r.lsn, err = pglogrepl.ParseLSN(lsn); err != nil {
			b.T.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// waitT1 waits until webhook a has a T1 row for each of n transactions.
func (b *bundle) waitT1(n int64) {
	b.T.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for int64(b.Count("webhook = 'a' AND model = 'T1'")) < n {
		if time.Now().After(deadline) {
			b.T.Fatalf("webhook a has %d T1 rows, want %d", b.Count("webhook = 'a' AND model = 'T1'"), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A reload under a continuous write load that adds a webhook and a table:
// the new webhook gets every change committed at or after the reported LSN
// and none before, and so does the new table; the unchanged webhook loses
// and duplicates nothing.
func TestReloadAddsWebhookAndTableFromReportedLSN(t *testing.T) {
	t.Parallel()
	b := setup(t, reloadSchema, "  - table: t1\n    model: T1")
	b.Start()
	stop := make(chan struct{})
	wait := load(t, b.DB, stop)
	time.Sleep(300 * time.Millisecond)
	next := b.reconfig("  - table: t1\n    model: T1\n  - table: t2\n    model: T2", "  - name: c\n    url: http://127.0.0.1:1/c\n")
	res, err := b.Capture.Reload(context.Background(), next)
	if err != nil {
		t.Fatal(err)
	}
	if res.Pending || res.From == 0 {
		t.Fatalf("Reload = %+v, want a start LSN", res)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	n := wait()
	b.waitT1(n)

	type txn struct{ a1, a2, c1, c2, b1 int }
	txns := map[pglogrepl.LSN]*txn{}
	for _, r := range b.outboxRows() {
		x := txns[r.lsn]
		if x == nil {
			x = &txn{}
			txns[r.lsn] = x
		}
		switch r.webhook + r.model {
		case "aT1":
			x.a1++
		case "aT2":
			x.a2++
		case "cT1":
			x.c1++
		case "cT2":
			x.c2++
		case "bT1":
			x.b1++
		}
	}
	if int64(len(txns)) != n {
		t.Fatalf("%d transactions in the outbox, %d committed", len(txns), n)
	}
	before, after := 0, 0
	for lsn, x := range txns {
		want := txn{a1: 1, b1: 1}
		if lsn >= res.From {
			want = txn{a1: 1, a2: 1, c1: 1, c2: 1, b1: 1}
			after++
		} else {
			before++
		}
		if *x != want {
			t.Errorf("transaction %s (start %s): rows %+v, want %+v", lsn, res.From, *x, want)
		}
	}
	if before == 0 || after == 0 {
		t.Fatalf("%d transactions before the reload's LSN, %d after: want some of each", before, after)
	}
	t.Logf("%d transactions before %s, %d after", before, res.From, after)
}

// A reload the source refuses (an unknown column) changes nothing.
func TestReloadWithErrorKeepsConfiguration(t *testing.T) {
	t.Parallel()
	b := setup(t, reloadSchema, "  - table: t1\n    model: T1")
	b.Start()
	next := b.reconfig("  - table: t1\n    model: T1\n    exclude: [nope]", "  - name: c\n    url: http://127.0.0.1:1/c\n")
	_, err := b.Capture.Reload(context.Background(), next)
	var ce *config.Error
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("Reload = %v, want a *config.Error naming the column", err)
	}
	b.Exec("INSERT INTO t1 (v, note) VALUES (1, 'x')")
	b.waitT1(1)
	time.Sleep(200 * time.Millisecond)
	if n := b.Count("webhook = 'c'"); n != 0 {
		t.Fatalf("webhook c of the refused configuration got %d rows", n)
	}
	if n := b.Count("body::text LIKE '%\"note\"%'"); n != 2 {
		t.Fatalf("%d rows render column note, want 2 (webhooks a and b)", n)
	}
}

// Twenty reloads during a burst, each toggling a webhook and a model's
// rendering, with the replication connection killed twice: the unchanged
// webhook gets every change exactly once, and each change is rendered by
// the configuration of the interval its commit LSN falls in.
func TestTwentyReloadsDuringBurstLoseNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, reloadSchema, "  - table: t1\n    model: T1")
	b.Start()
	stop := make(chan struct{})
	wait := load(t, b.DB, stop)
	type step struct {
		from     pglogrepl.LSN
		withX    bool
		withNote bool
	}
	steps := []step{{from: 0, withX: false, withNote: true}}
	for i := range 20 {
		time.Sleep(50 * time.Millisecond)
		withX, withNote := i%2 == 0, i%3 != 0
		models := "  - table: t1\n    model: T1"
		if !withNote {
			models += "\n    exclude: [note]"
		}
		extra := ""
		if withX {
			extra = "  - name: x\n    url: http://127.0.0.1:1/x\n"
		}
		res, err := b.Capture.Reload(context.Background(), b.reconfig(models, extra))
		if err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		if res.From < steps[len(steps)-1].from {
			t.Fatalf("reload %d starts at %s, before the previous one (%s)", i, res.From, steps[len(steps)-1].from)
		}
		steps = append(steps, step{from: res.From, withX: withX, withNote: withNote})
		if i%7 == 6 {
			// The stream reconnects and replays from its checkpoint: the
			// replayed transactions keep the configuration of their LSN.
			sessions := b.Capture.Sessions()
			b.Exec("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", b.Cfg.Database.Slot)
			deadline := time.Now().Add(30 * time.Second)
			for b.Capture.Sessions() == sessions || !b.Capture.Attached() {
				if time.Now().After(deadline) {
					t.Fatal("capture did not stream again")
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	n := wait()
	b.waitT1(n)
	at := func(lsn pglogrepl.LSN) step {
		s := steps[0]
		for _, st := range steps[1:] {
			if st.from <= lsn {
				s = st
			}
		}
		return s
	}
	seen := map[pglogrepl.LSN]int{}
	xs := map[pglogrepl.LSN]int{}
	for _, r := range b.outboxRows() {
		st := at(r.lsn)
		switch r.webhook {
		case "a":
			seen[r.lsn]++
			if strings.Contains(r.body, `"note"`) != st.withNote {
				t.Errorf("row at %s: note rendered %v, want %v (configuration from %s)", r.lsn, !st.withNote, st.withNote, st.from)
			}
		case "x":
			xs[r.lsn]++
			if !st.withX {
				t.Errorf("webhook x has a row at %s, where it was not configured (configuration from %s)", r.lsn, st.from)
			}
		}
	}
	if int64(len(seen)) != n {
		t.Fatalf("webhook a has rows of %d transactions, %d committed", len(seen), n)
	}
	for lsn, k := range seen {
		if k != 1 {
			t.Errorf("webhook a has %d rows at %s", k, lsn)
		}
		if at(lsn).withX && xs[lsn] != 1 {
			t.Errorf("webhook x has %d rows at %s, want 1", xs[lsn], lsn)
		}
	}
	t.Logf("%d transactions, 20 reloads", n)
}

// A reload while capture does not stream (a standby waiting for the slot,
// or a reconnection) is accepted and applies when it streams.
func TestReloadWhileNotStreamingAppliesOnStart(t *testing.T) {
	t.Parallel()
	b := setup(t, reloadSchema, "  - table: t1\n    model: T1")
	ctx := context.Background()
	c := b.Prepare(cdc.Options{StatusInterval: 200 * time.Millisecond})
	next := b.reconfig("  - table: t1\n    model: T1\n  - table: t2\n    model: T2", "  - name: c\n    url: http://127.0.0.1:1/c\n")
	res, err := c.Reload(ctx, next)
	if err != nil || !res.Pending {
		t.Fatalf("Reload before streaming = %+v, %v; want pending", res, err)
	}
	b.Go(c)
	// Changes committed from here on are rendered with it once it has a
	// start LSN.
	for wait := time.Now().Add(20 * time.Second); !c.Renders(next); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(wait) {
			t.Fatal("capture did not take the reload")
		}
	}
	b.Exec("BEGIN; INSERT INTO t1 (v) VALUES (1); INSERT INTO t2 (v) VALUES (1); COMMIT")
	b.waitT1(1)
	deadline := time.Now().Add(20 * time.Second)
	for b.Count("webhook = 'c'") != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("webhook c has %d rows, want 2 (t1 and t2)", b.Count("webhook = 'c'"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A table removed by a reload under load leaves the publication at the
// reported LSN: its changes are captured before it and not after, and none
// arrives unmapped.
func TestReloadRemovesTableAtReportedLSN(t *testing.T) {
	t.Parallel()
	b := setup(t, reloadSchema, "  - table: t1\n    model: T1\n  - table: t2\n    model: T2")
	b.Start()
	stop := make(chan struct{})
	wait := load(t, b.DB, stop)
	time.Sleep(300 * time.Millisecond)
	res, err := b.Capture.Reload(context.Background(), b.reconfig("  - table: t1\n    model: T1", ""))
	if err != nil || res.Pending {
		t.Fatalf("Reload = %+v, %v", res, err)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	n := wait()
	b.waitT1(n)
	before, after := 0, 0
	t2 := map[pglogrepl.LSN]bool{}
	for _, r := range b.outboxRows() {
		if r.webhook == "a" && r.model == "T2" {
			t2[r.lsn] = true
		}
	}
	for _, r := range b.outboxRows() {
		if r.webhook != "a" || r.model != "T1" {
			continue
		}
		if r.lsn >= res.From {
			after++
			if t2[r.lsn] {
				t.Errorf("transaction %s (start %s) has a T2 row", r.lsn, res.From)
			}
		} else {
			before++
			if !t2[r.lsn] {
				t.Errorf("transaction %s (start %s) lacks its T2 row", r.lsn, res.From)
			}
		}
	}
	if before == 0 || after == 0 {
		t.Fatalf("%d transactions before %s, %d after: want some of each", before, res.From, after)
	}
	if u := b.Capture.Unmapped(); len(u) != 0 {
		t.Errorf("changes arrived for tables no model maps: %v", u)
	}
}
