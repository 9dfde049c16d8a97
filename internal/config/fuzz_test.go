package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fuzzEnv is a fixed environment so that runs are reproducible.
var fuzzEnv = envOf(map[string]string{"DSN": "postgres://h/db", "C": "4", "EMPTY": "", "N": "007", "L": "0.0.0.0:1"})

// FuzzParse checks that Parse never panics and always returns exactly one of
// a *Config or an *Error with at least one problem.
func FuzzParse(f *testing.F) {
	seeds := []string{
		minimal,
		several,
		"",
		"---\n",
		"database: {dsn: ${DSN}}\nmodels: [{table: t}]\nwebhooks: [{name: a, url: 'https://h/'}]\ndispatch: {concurrency: ${C}}\n",
		"a: &x {<<: *x}\n",
		"database: &x {dsn: x, <<: *x}\n",
		"database:\n  dsn: [unclosed\n",
		"models:\n  -\n  - table: b\n",
		"webhooks:\n  - &b {name: a, url: 'https://h/'}\n  - <<: [*b, {secrett: x}]\n",
		"log: {level: debug}\n---\nlog: {level: info}\n",
		"database: {dsn: *nope}\n",
		"x: \x01\n",
	}
	// Every YAML literal used by the unit tests, so the fuzzer starts from
	// realistic configurations.
	if b, err := os.ReadFile("load_test.go"); err == nil {
		for _, part := range strings.Split(string(b), "`")[1:] {
			if strings.Contains(part, ":") && strings.Contains(part, "\n") {
				seeds = append(seeds, part)
			}
		}
	}
	if ex, err := filepath.Glob("../../config.example.yaml"); err == nil && len(ex) == 1 {
		if b, err := os.ReadFile(ex[0]); err == nil {
			seeds = append(seeds, string(b))
		}
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data, fuzzEnv)
		switch {
		case err == nil && c == nil:
			t.Fatal("Parse returned neither a config nor an error")
		case err != nil && c != nil:
			t.Fatalf("Parse returned both a config and an error: %v", err)
		case err != nil:
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Parse error is %T, not *config.Error: %v", err, err)
			}
			if len(ce.Problems) == 0 {
				t.Fatal("*config.Error without problems")
			}
			for i, p := range ce.Problems {
				if p.Msg == "" || p.File != "fuzz.yaml" || p.Line < 0 {
					t.Fatalf("bad problem %+v", p)
				}
				if i > 0 && p.Line < ce.Problems[i-1].Line {
					t.Fatalf("problems not sorted by line: %v", ce)
				}
			}
		default:
			// A valid config must have its defaults applied and pass
			// the invariants the rest of walhook relies on.
			if len(c.Models) == 0 || len(c.Webhooks) == 0 || c.Database.DSN == "" {
				t.Fatalf("valid config without models, webhooks or dsn: %+v", c)
			}
			if !ValidIdentifier(c.Database.Slot) || !ValidIdentifier(c.Database.Publication) || !ValidIdentifier(c.Database.Schema) {
				t.Fatalf("invalid identifiers accepted: %+v", c.Database)
			}
			for _, w := range c.Webhooks {
				if w.Name == "" || w.Timeout <= 0 || w.Retry.MaxAttempts <= 0 || w.Retry.InitialInterval <= 0 || w.Retry.MaxInterval < w.Retry.InitialInterval {
					t.Fatalf("invalid webhook accepted: %+v", w)
				}
			}
			if c.Dispatch.Concurrency <= 0 || c.Dispatch.PollInterval <= 0 || c.Dispatch.Retention <= 0 {
				t.Fatalf("invalid dispatch accepted: %+v", c.Dispatch)
			}
			for _, m := range c.Models {
				if m.Name == "" || m.Schema == "" || m.Model == "" {
					t.Fatalf("invalid model accepted: %+v", m)
				}
			}
		}
	})
}
