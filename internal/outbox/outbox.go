// Package outbox owns walhook's outbox: the state names of a delivery and
// every statement dispatch, the status page and the CLI run against the
// outbox tables (deliveries, attempts, dispatchers, minutes). The tables themselves are
// created by the numbered SQL files of package migrations; their columns
// are a public interface (see the README).
//
// The deliveries table is a queue. A row is pending (due at
// next_attempt_at), parked (waiting for an earlier change of the same
// webhook and object), delivering (claimed by a dispatcher), delivered or
// failed. Claims take due rows per webhook with an ordered index scan and a
// LIMIT, and park a row whose object has an earlier open change, so that
// no later claim reads it again; the statement that records an outcome
// makes the next parked change of that object pending. The cost of a claim
// therefore depends on the batch, not on the backlog, on the rows waiting
// behind a retrying change, or on the table's statistics.
package outbox

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/migrations"
)

// State is a delivery's state (the state column).
type State string

// Delivery states.
const (
	// StatePending rows are due at next_attempt_at.
	StatePending State = "pending"
	// StateParked rows wait for an earlier change of their object (same
	// webhook, model and object_key) to be delivered or to fail.
	StateParked State = "parked"
	// StateDelivering rows are claimed by the dispatcher in locked_by.
	StateDelivering State = "delivering"
	// StateDelivered rows were accepted by the receiver (2xx).
	StateDelivered State = "delivered"
	// StateFailed rows used all their attempts; they stay until retried or
	// purged after dispatch.failed_retention.
	StateFailed State = "failed"
)

// States lists every delivery state, in the order a row goes through them.
var States = []State{StatePending, StateParked, StateDelivering, StateDelivered, StateFailed}

// StateList is States for people: "pending, parked, ...".
func StateList() string {
	names := make([]string, len(States))
	for i, s := range States {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// OpenStates are the states of a change not finished yet: an open change
// holds back later changes of its object. The statements spell them
// {{open}}.
var OpenStates = []State{StatePending, StateParked, StateDelivering}

// Store runs the outbox statements on a pool. Create it with New.
type Store struct {
	pool        *pgxpool.Pool
	schema      string
	deliveries  string // quoted deliveries table
	dispatchers string // quoted dispatchers table
	checkpoints string // quoted checkpoints table
	owners      string // quoted webhook_owners table
	backfills   string // quoted backfills table
	minutes     string // quoted minutes table
	attempts    string // quoted attempts table
	channel     string
	q           queries
	mq          minuteQueries
}

// New returns a Store for the outbox in schema ("" means walhook).
func New(pool *pgxpool.Pool, schema string) *Store {
	if schema == "" {
		schema = "walhook"
	}
	s := &Store{
		pool:        pool,
		schema:      schema,
		deliveries:  migrations.Table(schema, "deliveries"),
		dispatchers: migrations.Table(schema, "dispatchers"),
		checkpoints: migrations.Table(schema, "checkpoints"),
		owners:      migrations.Table(schema, "webhook_owners"),
		backfills:   migrations.Table(schema, "backfills"),
		minutes:     migrations.Table(schema, "minutes"),
		attempts:    migrations.Table(schema, "attempts"),
		channel:     migrations.Channel(schema),
	}
	s.q = s.newQueries()
	s.mq = newMinuteQueries(s.minutes, s.deliveries)
	return s
}

// Schema is the outbox schema.
func (s *Store) Schema() string { return s.schema }

// Channel is the NOTIFY channel that wakes dispatchers.
func (s *Store) Channel() string { return s.channel }

// Pool is the pool the Store runs its statements on.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// PrepareConn readies a connection to the outbox database; use it as the
// pool's AfterConnect. It turns JIT compilation off for the session: the
// queue's statements are short, but their LIMIT comes from a parameter, so
// once the table has statistics the planner may estimate a claim at many
// thousand rows, and PostgreSQL's default jit_above_cost then spends more
// than a second compiling each claim (seen: 1.5 s per claim, 700
// deliveries/s instead of over 10,000).
func PrepareConn(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "SET jit = off"); err != nil {
		return fmt.Errorf("outbox: prepare connection: %w", err)
	}
	return nil
}
