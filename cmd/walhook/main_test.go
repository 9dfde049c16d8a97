package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
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
