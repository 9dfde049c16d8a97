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

func TestCommandIndex(t *testing.T) {
	tests := []struct {
		args []string
		want int
	}{
		{[]string{"-c", "f.yaml", "status"}, 2},
		{[]string{"--config=f.yaml", "deliveries", "show", "6"}, 1},
		{[]string{"--json", "-c", "run.yaml", "check"}, 3},
		{[]string{"-c", "f.yaml"}, -1},
		{[]string{"--dispatch-only", "-c", "f.yaml"}, -1},
		{[]string{"--config=f.yaml", "stray", "status"}, -1},
	}
	for _, tt := range tests {
		if got := commandIndex(tt.args); got != tt.want {
			t.Errorf("commandIndex(%q) = %d, want %d", tt.args, got, tt.want)
		}
	}
}

// Flags and subcommands in any order: each of these reaches the command
// (here it stops at the missing configuration file) instead of failing on
// an unexpected argument.
func TestFlagsAndSubcommandsInAnyOrder(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.yaml")
	for _, args := range [][]string{
		{"deliveries", "-c", missing, "show", "6"},
		{"deliveries", "show", "-c", missing, "6", "--json"},
		{"deliveries", "show", "6", "-c", missing},
		{"-c", missing, "deliveries", "show", "6"},
		{"-c", missing, "status", "--json"},
		{"status", "--json", "-c", missing},
		{"retry", "-c", missing, "--all-failed"},
	} {
		var out, errOut bytes.Buffer
		err := dispatchCommand(context.Background(), args, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), "configuration file "+missing+" not found") {
			t.Errorf("walhook %q = %v; want the missing-configuration error", args, err)
		}
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"deliveries", "show", "6", "--state", "failed", "-c", missing}, "deliveries show takes an ID, --json and -c, not --state"},
		{[]string{"deliveries", "-c", missing, "list"}, `unexpected argument "list"`},
		{[]string{"status", "extra", "-c", missing}, `unexpected argument "extra"`},
	} {
		var out, errOut bytes.Buffer
		err := dispatchCommand(context.Background(), tt.args, &out, &errOut)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("walhook %q = %v; want exit 2 and %q", tt.args, err, tt.want)
		}
		if tt.want != "" && strings.HasPrefix(tt.want, "unexpected") && !strings.Contains(errOut.String(), "-c") {
			t.Errorf("walhook %q printed no usage: %q", tt.args, errOut.String())
		}
	}
}

func TestEveryCommandIsKnown(t *testing.T) {
	for _, name := range commands {
		var out bytes.Buffer
		err := dispatchCommand(context.Background(), []string{name, "--help"}, &out, &out)
		if err != nil && strings.Contains(err.Error(), "unknown command") {
			t.Errorf("%s is in commands but dispatchCommand does not know it", name)
		}
	}
}
