package outbox

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/migrations"
	"github.com/walhook/walhook/test/pgtest"
)

// TestClaimDoesNotWaitForTheFlush: a claim commits without waiting for its
// WAL to be flushed or replicated. The server waits, for every commit
// that does, for a synchronous standby that never comes; the claim returns
// all the same, and its rows are claimed (visible to other sessions). A
// claim that waited would hang here until its deadline.
func TestClaimDoesNotWaitForTheFlush(t *testing.T) {
	ctx := context.Background()
	cl, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"synchronous_standby_names": "'nobody'"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	// The set-up commits locally flushed, without the standby.
	const noStandby = "&options=-c%20synchronous_commit%3Dlocal"
	admin, err := pgxpool.New(ctx, cl.DSN("postgres")+noStandby)
	if err != nil {
		t.Fatal(err)
	}
	exec(t, admin, "CREATE DATABASE flush")
	admin.Close()
	dsn := cl.DSN("flush")
	local, err := pgxpool.New(ctx, dsn+noStandby)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(local.Close)
	if _, err := migrations.Apply(ctx, local, "walhook"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		exec(t, local, `INSERT INTO walhook.deliveries (webhook, event, model, object_key, commit_lsn, seq, committed_at, body)
			VALUES ('w', 'created', 'm', $1::int::text, '0/10', $1::int, now(), '{}')`, i)
	}
	pool, err := pgxpool.New(ctx, dsn) // synchronous_commit as the server has it: on
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	res, err := New(pool, "walhook").Claim(cctx, ClaimRequest{By: "d1", Webhooks: []string{"w"}, Limits: []int32{10},
		Leases: []time.Duration{time.Minute}})
	if err != nil {
		t.Fatalf("claim: %v (did it wait for the synchronous standby?)", err)
	}
	if len(res.Rows) != 3 {
		t.Fatalf("claimed %d rows, want 3", len(res.Rows))
	}
	if n := count(t, local, "state = 'delivering' AND locked_by = 'd1'"); n != 3 {
		t.Fatalf("%d rows delivering under d1 seen by another session, want 3", n)
	}
}
