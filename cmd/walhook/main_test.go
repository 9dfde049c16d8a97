package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// run is the default command: no command, or flags first, runs it (here it
// stops at the missing configuration file, which only run would read).
func TestRunIsTheDefaultCommand(t *testing.T) {
	missing := t.TempDir() + "/none.yaml"
	tests := []struct {
		name string
		args []string
		env  string
	}{
		{name: "no arguments", env: missing},
		{name: "-c first", args: []string{"-c", missing}},
		{name: "--config= first", args: []string{"--config=" + missing}},
		{name: "--dispatch-only first", args: []string{"--dispatch-only", "-c", missing}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("WALHOOK_CONFIG", tt.env)
			var out, errOut bytes.Buffer
			err := dispatchCommand(context.Background(), tt.args, &out, &errOut)
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), "configuration file "+missing+" not found") {
				t.Fatalf("walhook %v = %v; want run's missing-configuration error", tt.args, err)
			}
		})
	}
	var out bytes.Buffer
	if err := dispatchCommand(context.Background(), []string{"--help"}, &out, &out); err != nil || !strings.Contains(out.String(), "Usage:") {
		t.Errorf("--help = %v, %q", err, out.String())
	}
}

// A server that accepts connections and never answers: status, deliveries
// and retry give up with a clear error instead of hanging (10 s connect
// timeout unless the DSN sets connect_timeout).
func TestCommandsTimeOutOnASilentServer(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the 10 s connect timeout")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // accepted, never answered
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	cfg := filepath.Join(t.TempDir(), "walhook.yaml")
	text := fmt.Sprintf("database:\n  dsn: postgres://walhook@%s/app?sslmode=disable\nmodels:\n  - table: t\nwebhooks:\n  - name: w\n    url: http://127.0.0.1:1/\n", ln.Addr())
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"status"}, {"deliveries"}, {"retry", "--all-failed"}} {
		t.Run(args[0], func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			var out bytes.Buffer
			err := dispatchCommand(context.Background(), append(args, "-c", cfg), &out, &out)
			took := time.Since(start)
			if err == nil || !strings.Contains(err.Error(), "no answer from") {
				t.Fatalf("walhook %v on a silent server = %v after %s; want a no-answer error", args, err, took)
			}
			if took > 40*time.Second {
				t.Errorf("walhook %v gave up after %s", args, took)
			}
		})
	}
}
