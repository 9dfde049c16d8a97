//go:build linux

package pgnet_test

import (
	"context"
	"net"
	"os"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sys/unix"

	"github.com/walhook/walhook/internal/pgnet"
	"github.com/walhook/walhook/test/pgtest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &pg)) }

// sockopt reads an integer socket option of conn's socket.
func sockopt(t *testing.T, conn net.Conn, level, opt int) int {
	t.Helper()
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		t.Fatalf("connection is a %T, not TCP", conn)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := raw.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), level, opt) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return v
}

func TestConnectionsHaveKeepalivesAndUserTimeout(t *testing.T) {
	cfg, err := pgconn.ParseConfig(pg.NewDB(t))
	if err != nil {
		t.Fatal(err)
	}
	pgnet.Configure(cfg)
	if cfg.ConnectTimeout != pgnet.ConnectTimeout {
		t.Errorf("connect timeout %s, want %s", cfg.ConnectTimeout, pgnet.ConnectTimeout)
	}
	conn, err := pgconn.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	nc := conn.Conn()
	for _, c := range []struct {
		name       string
		level, opt int
		want       int
	}{
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, int(pgnet.KeepAliveIdle.Seconds())},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, int(pgnet.KeepAliveInterval.Seconds())},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, pgnet.KeepAliveCount},
		{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(pgnet.UserTimeout.Milliseconds())},
	} {
		if got := sockopt(t, nc, c.level, c.opt); got != c.want {
			t.Errorf("%s = %d, want %d", c.name, got, c.want)
		}
	}
	if err := conn.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}
