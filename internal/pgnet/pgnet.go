// Package pgnet owns how walhook reaches PostgreSQL over the network, so
// that a path that stops moving bytes without closing anything (a NAT, a
// proxy or a dead route: the kernel keeps acknowledging, so TCP keepalives
// never fire) is noticed and replaced instead of hanging walhook: the
// dialer (connect timeout, TCP keepalives, TCP_USER_TIMEOUT) and the
// deadlines that bound every statement and the replication stream's
// silence. Each bound lives here and nowhere else.
package pgnet

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// ConnectTimeout bounds a connection attempt (TCP, TLS and the startup
	// exchange) whose DSN sets no connect_timeout.
	ConnectTimeout = 10 * time.Second
	// KeepAliveIdle is how long a connection is idle before TCP keepalive
	// probes start: a peer that stops acknowledging them is dropped after
	// about KeepAliveIdle + KeepAliveCount*KeepAliveInterval.
	KeepAliveIdle = 15 * time.Second
	// KeepAliveInterval is the time between two keepalive probes.
	KeepAliveInterval = 5 * time.Second
	// KeepAliveCount is how many unanswered probes drop the connection.
	KeepAliveCount = 3
	// UserTimeout is TCP_USER_TIMEOUT (Linux): how long sent data may stay
	// unacknowledged before the kernel drops the connection.
	UserTimeout = KeepAliveIdle + KeepAliveCount*KeepAliveInterval
	// StatementTimeout bounds every statement walhook runs while it runs
	// (capture's writes and lookups, claims, outcomes, the heartbeat,
	// LISTEN): a connection that does not answer within it is closed and
	// the work retried on another.
	StatementTimeout = 30 * time.Second
	// PingTimeout bounds the check of a pooled connection that sat idle
	// before it is handed out: one that does not answer is dropped.
	PingTimeout = 5 * time.Second
	// Silence is how long the replication stream may stay silent, after
	// walhook asked the server for a reply, before capture drops the
	// connection and reconnects.
	Silence = 30 * time.Second
)

// ErrNoAnswer is the cause of a context that StatementTimeout ended.
var ErrNoAnswer = errors.New("no answer from PostgreSQL within " + StatementTimeout.String() + " (a dead network path?)")

// Bound returns ctx with the statement deadline (StatementTimeout), for one
// statement or one short exchange.
func Bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeoutCause(ctx, StatementTimeout, ErrNoAnswer)
}

// Configure sets the connect timeout (ConnectTimeout unless the DSN set
// connect_timeout) and a dialer with TCP keepalives and TCP_USER_TIMEOUT on
// cfg, a configuration from pgconn.ParseConfig.
func Configure(cfg *pgconn.Config) {
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = ConnectTimeout
	}
	cfg.DialFunc = Dialer(cfg.ConnectTimeout).DialContext
}

// Dialer returns a dialer with timeout, TCP keepalives and (on Linux)
// TCP_USER_TIMEOUT.
func Dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{
		Timeout: timeout,
		KeepAliveConfig: net.KeepAliveConfig{
			Enable: true, Idle: KeepAliveIdle, Interval: KeepAliveInterval, Count: KeepAliveCount,
		},
		Control: setUserTimeout,
	}
}
