package web_test

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/web"
)

// Every series examples/prometheus/alerts.yml names exists in /metrics, and
// promtool (when installed: CI installs it) accepts the file.
func TestAlertRulesNameExistingSeries(t *testing.T) {
	const file = "../../examples/prometheus/alerts.yml"
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	capture := &fakeCapture{}
	capture.streaming.Store(true)
	e := newEnv(t, withCapture(capture), func(c *config.Config, _ *web.Options) { c.Database.Slot = "walhook_alerts_test" })
	if _, err := e.pool.Exec(context.Background(), `SELECT pg_create_logical_replication_slot('walhook_alerts_test', 'pgoutput')`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = e.pool.Exec(context.Background(), `SELECT pg_drop_replication_slot('walhook_alerts_test')`)
	})
	// Counters with labels have series once something happened.
	e.metrics.Unmapped("public.x")
	e.metrics.Truncated("public.x")
	e.metrics.Gap("walhook_alerts_test")
	e.metrics.BreakerChanged("inventory", outbox.BreakerClosed)
	fams := scrape(t, client(t), e.srv.URL)
	name := regexp.MustCompile(`\bwalhook_[a-z_]+\b`)
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			for _, m := range name.FindAllString(r.Expr, -1) {
				n++
				if _, ok := fams[m]; !ok {
					t.Errorf("alert %s names %s, which /metrics does not have", r.Alert, m)
				}
			}
		}
	}
	if n < 8 {
		t.Fatalf("only %d series found in %s", n, file)
	}
	if p, err := exec.LookPath("promtool"); err == nil {
		if out, err := exec.Command(p, "check", "rules", file).CombinedOutput(); err != nil {
			t.Errorf("promtool check rules %s: %v\n%s", file, err, out)
		}
	} else {
		t.Log("promtool not installed: rule syntax not checked (CI installs it)")
	}
}
