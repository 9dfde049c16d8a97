package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/config"
)

// A reload changes the level of every logger derived from the process's.
func TestReloadableLogLevel(t *testing.T) {
	var buf bytes.Buffer
	log, rl := newReloadableLogger(&config.Config{Log: config.Log{Level: "warn"}}, &buf, "w.yaml")
	derived := log.With().Str("component", "dispatch").Logger()
	derived.Info().Msg("hidden")
	derived.Warn().Msg("shown")
	rl.level.set("debug")
	derived.Debug().Msg("now shown")
	rl.level.set("error")
	derived.Warn().Msg("hidden again")
	out := buf.String()
	if strings.Contains(out, "hidden") || !strings.Contains(out, `"shown"`) || !strings.Contains(out, "now shown") {
		t.Errorf("log output:\n%s", out)
	}
}

func TestDescribeChanges(t *testing.T) {
	got := describeChanges(config.Changes{WebhooksAdded: []string{"crm"}, WebhooksChanged: []string{"a", "b"}, TablesAdded: []string{"public.t"}, Dispatch: true})
	want := "webhooks added: crm; webhooks changed: a, b; tables added: public.t; dispatch settings changed"
	if got != want {
		t.Errorf("describeChanges = %q, want %q", got, want)
	}
}
