package outbox

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// TestClaimAndOutcomeAreNotPlannedEachTime: the statements every delivery
// runs (claim, outcome, promote) run their generic plan from the first
// run: PostgreSQL would plan them anew on every run (custom plans), which
// was half of their time. pg_prepared_statements counts both kinds (14+).
func TestClaimAndOutcomeAreNotPlannedEachTime(t *testing.T) {
	t.Parallel()
	_, shared := setup(t)
	ctx := context.Background()
	var version int
	if err := shared.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if version < 140000 {
		t.Skip("pg_prepared_statements counts plans from PostgreSQL 14")
	}
	// One connection, so that every statement is prepared once.
	pc := shared.Config().Copy()
	pc.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := New(pool, "walhook")
	for i := range 10 {
		insert(t, shared, "w", fmt.Sprint(i), i+1)
		res, err := s.Claim(ctx, ClaimRequest{By: "d1", Webhooks: []string{"w"}, Limits: []int32{8},
			Leases: []time.Duration{time.Minute}})
		if err != nil || len(res.Rows) != 1 {
			t.Fatalf("claim %d: %d rows, %v", i, len(res.Rows), err)
		}
		c := res.Rows[0]
		if _, err := s.WriteOutcomes(ctx, "d1", []Outcome{{ID: c.ID, ClaimedAt: c.ClaimedAt, State: StateDelivered,
			Status: 204, Sent: SentAttempt{Started: time.Now(), Duration: time.Millisecond}}}); err != nil {
			t.Fatal(err)
		}
	}
	for name, q := range map[string]string{"claim": s.q.claim, "outcome": s.q.outcome, "promote": s.q.promote} {
		var generic, custom int64
		err := pool.QueryRow(ctx, `SELECT generic_plans, custom_plans FROM pg_prepared_statements
			WHERE statement = $1`, q).Scan(&generic, &custom)
		if err != nil {
			t.Fatalf("%s: %v (prepared: %s)", name, err, prepared(t, pool))
		}
		if custom != 0 || generic != 10 {
			t.Errorf("%s ran %d custom plans and %d generic ones, want 0 and 10", name, custom, generic)
		}
	}
}

// prepared lists the start of the statements prepared on pool's connection.
func prepared(t *testing.T, pool *pgxpool.Pool) string {
	rows, err := pool.Query(context.Background(), `SELECT left(statement, 60) FROM pg_prepared_statements`)
	if err != nil {
		return err.Error()
	}
	var out []string
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		out = append(out, s)
	}
	return strings.Join(out, " | ")
}
