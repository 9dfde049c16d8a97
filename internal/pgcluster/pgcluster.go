// Package pgcluster starts throwaway PostgreSQL clusters, for `walhook demo`
// and (through test/pgtest) for the tests: initdb in a temporary directory, a
// free loopback port, wal_level=logical, fsync off, many replication slots.
// When the process runs as root the server runs as the "postgres" user, as
// PostgreSQL requires. One file: pgcluster.go.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is a running throwaway PostgreSQL.
type Cluster struct {
	Dir    string // data directory parent (removed by Close)
	Port   int
	BinDir string

	cred *syscall.Credential
	log  *os.File

	mu  sync.Mutex
	cmd *exec.Cmd
	dbs atomic.Int64
}

// Options tune Start.
type Options struct {
	// Settings are extra postgresql.conf settings (name -> value).
	Settings map[string]string
	// PasswordAuth makes every role but the superuser postgres log in
	// with a scram-sha-256 password, as a packaged server's pg_hba.conf
	// does; postgres (the helpers' DSN) stays trusted on this machine.
	PasswordAuth bool
}

// BinDir finds the PostgreSQL server binaries: $PG_BINDIR, `pg_config
// --bindir`, /usr/lib/postgresql/*/bin, then PATH.
func BinDir() (string, error) {
	if d := os.Getenv("PG_BINDIR"); d != "" {
		return d, nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres"); len(m) > 0 {
		return filepath.Dir(m[len(m)-1]), nil
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL server binaries not found: install them (apt-get install -y postgresql) or set PG_BINDIR")
}

// Start initialises and starts a new cluster.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "walhook-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: temp dir: %w", err)
	}
	c := &Cluster{Dir: dir, BinDir: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: running as root needs a postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: chown: %w", err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := c.command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: initdb: %w: %s", err, out)
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c.Port = port
	conf := map[string]string{
		"listen_addresses":        "'127.0.0.1'",
		"port":                    strconv.Itoa(port),
		"unix_socket_directories": "'" + dir + "'",
		"wal_level":               "logical",
		"fsync":                   "off",
		"full_page_writes":        "off",
		"max_replication_slots":   "64",
		"max_wal_senders":         "64",
		"max_connections":         "300",
		"shared_buffers":          "128MB",
		"log_min_messages":        "warning",
		"logging_collector":       "off",
	}
	if opts.PasswordAuth {
		conf["password_encryption"] = "'scram-sha-256'" // the default from 14 on
	}
	for k, v := range opts.Settings {
		conf[k] = v
	}
	var b strings.Builder
	for k, v := range conf {
		fmt.Fprintf(&b, "%s = %s\n", k, v)
	}
	if err := appendFile(filepath.Join(data, "postgresql.conf"), b.String()); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: write postgresql.conf: %w", err)
	}
	if opts.PasswordAuth {
		if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(passwordHBA), 0o600); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: write pg_hba.conf: %w", err)
		}
		if c.cred != nil {
			_ = os.Chown(filepath.Join(data, "pg_hba.conf"), int(c.cred.Uid), int(c.cred.Gid))
		}
	}
	if c.log, err = os.Create(filepath.Join(dir, "server.log")); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// passwordHBA is the pg_hba.conf of Options.PasswordAuth.
const passwordHBA = `local all         postgres                trust
host  all         postgres  127.0.0.1/32  trust
host  replication postgres  127.0.0.1/32  trust
local all         all                     scram-sha-256
host  all         all       127.0.0.1/32  scram-sha-256
host  replication all       127.0.0.1/32  scram-sha-256
`

func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

// Start starts the server of an initialised cluster (again, after Stop or
// Crash) and waits until it accepts connections.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return errors.New("pgtest: already running")
	}
	cmd := c.command(filepath.Join(c.BinDir, "postgres"), "-D", filepath.Join(c.Dir, "data"))
	cmd.Stdout, cmd.Stderr = c.log, c.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	c.cmd = cmd
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, c.DSN("postgres"))
		if err == nil {
			_ = conn.Close(ctx)      // it answered: that is all this wait needed
			go func() { <-exited }() //nolint:errcheck // reaps the server when it stops; Close reports its end
			return nil
		}
		select {
		case werr := <-exited:
			c.cmd = nil
			log, _ := os.ReadFile(filepath.Join(c.Dir, "server.log"))
			return fmt.Errorf("pgtest: postgres exited: %w: %s", werr, tail(string(log), 2000))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: postgres did not accept connections: %w", err)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Stop shuts the server down: fast (SIGINT) or, with immediate, the way a
// crash does (SIGQUIT: no checkpoint, WAL replay at the next start).
func (c *Cluster) Stop(immediate bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return nil
	}
	sig := syscall.SIGINT
	if immediate {
		sig = syscall.SIGQUIT
	}
	_ = c.cmd.Process.Signal(sig)
	// Wait for the postmaster (its Wait runs in Start's goroutine).
	for i := 0; i < 600; i++ {
		if err := c.cmd.Process.Signal(syscall.Signal(0)); err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	pid := filepath.Join(c.Dir, "data", "postmaster.pid")
	for i := 0; i < 200; i++ {
		if _, err := os.Stat(pid); err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.cmd = nil
	return nil
}

// VersionNum is the server's server_version_num (e.g. 170010).
func (c *Cluster) VersionNum(ctx context.Context) (int, error) {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return 0, fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	var num int
	err = conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&num)
	return num, err
}

// NewStandby makes a streaming standby of c, the way a base backup does: c
// must be stopped cleanly (Stop(false)); its data directory is copied
// without its replication slots, standby.signal is added, and the copy
// streams from c through the physical slot physicalSlot (which c must
// have), with hot_standby_feedback on. settings are extra
// postgresql.conf settings of the standby (they override c's; c's ALTER
// SYSTEM settings are not copied). port 0 picks a free port. The standby
// is not started: start c, then the standby.
func (c *Cluster) NewStandby(physicalSlot string, port int, settings map[string]string) (*Cluster, error) {
	c.mu.Lock()
	running := c.cmd != nil
	c.mu.Unlock()
	if running {
		return nil, errors.New("pgtest: stop the primary cleanly before copying it")
	}
	dir, err := os.MkdirTemp("", "walhook-pg-standby-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: temp dir: %w", err)
	}
	s := &Cluster{Dir: dir, BinDir: c.BinDir, cred: c.cred}
	if c.cred != nil {
		if err := os.Chown(dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: chown: %w", err)
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := s.command("cp", "-a", filepath.Join(c.Dir, "data"), data).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: copy the primary: %w: %s", err, out)
	}
	slots, _ := filepath.Glob(filepath.Join(data, "pg_replslot", "*"))
	for _, f := range append(slots, filepath.Join(data, "postmaster.pid"), filepath.Join(data, "postgresql.auto.conf"), filepath.Join(data, "standby.signal")) {
		_ = os.RemoveAll(f)
	}
	s.Port = port
	if port == 0 {
		if s.Port, err = freePort(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	conf := map[string]string{
		"port":                    strconv.Itoa(s.Port),
		"unix_socket_directories": "'" + dir + "'",
		"primary_conninfo":        fmt.Sprintf("'host=127.0.0.1 port=%d user=postgres dbname=postgres application_name=standby'", c.Port),
		"primary_slot_name":       "'" + physicalSlot + "'",
		"hot_standby_feedback":    "on",
	}
	for k, v := range settings {
		conf[k] = v
	}
	var b strings.Builder
	for k, v := range conf {
		fmt.Fprintf(&b, "%s = %s\n", k, v)
	}
	err = appendFile(filepath.Join(data, "postgresql.conf"), b.String())
	if err == nil {
		err = appendFile(filepath.Join(data, "standby.signal"), "")
	}
	if err == nil && c.cred != nil {
		err = os.Chown(filepath.Join(data, "standby.signal"), int(c.cred.Uid), int(c.cred.Gid))
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: configure the standby: %w", err)
	}
	if s.log, err = os.Create(filepath.Join(dir, "server.log")); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func appendFile(name, text string) error {
	f, err := os.OpenFile(name, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Promote ends a standby's recovery and makes it a primary (pg_promote,
// waiting until it accepts writes).
func (c *Cluster) Promote(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
		return fmt.Errorf("pgtest: promote: %w", err)
	}
	if !ok {
		return errors.New("pgtest: promote: the standby did not finish recovery within 60 s")
	}
	return nil
}

// Close stops the server and removes its files.
func (c *Cluster) Close() {
	_ = c.Stop(true)
	if c.log != nil {
		c.log.Close()
	}
	os.RemoveAll(c.Dir)
}

// DSN returns a connection string for database db as the superuser.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// CreateDB creates a fresh database and returns its DSN.
func (c *Cluster) CreateDB(ctx context.Context, prefix string) (string, error) {
	name := fmt.Sprintf("%s_%d_%d", sanitize(prefix), os.Getpid(), c.dbs.Add(1))
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database: %w", err)
	}
	return c.DSN(name), nil
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
		if b.Len() >= 40 {
			break
		}
	}
	if b.Len() == 0 {
		return "db"
	}
	return b.String()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
