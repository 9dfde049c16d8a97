package web_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/web"
)

const (
	alertsFile    = "../../examples/prometheus/alerts.yml"
	dashboardFile = "../../examples/grafana/walhook.json"
)

// Every series examples/prometheus/alerts.yml and the Grafana dashboard
// examples/grafana/walhook.json name exists in /metrics of a running
// server, the dashboard is import-ready (a data source variable every panel
// uses, a webhook variable), and promtool (when installed: CI installs it)
// accepts the rules.
func TestExamplesNameExistingSeries(t *testing.T) {
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
	// A histogram's series are its family's name with _bucket, _sum or
	// _count.
	exists := func(name string) bool {
		if _, ok := fams[name]; ok {
			return true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if f, ok := fams[strings.TrimSuffix(name, suffix)]; ok && strings.HasSuffix(name, suffix) && f.GetType() == dto.MetricType_HISTOGRAM {
				return true
			}
		}
		return false
	}
	series := regexp.MustCompile(`\bwalhook_[a-z_]+\b`)
	check := func(file, where, expr string) int {
		n := 0
		for _, m := range series.FindAllString(expr, -1) {
			n++
			if !exists(m) {
				t.Errorf("%s: %s names %s, which /metrics does not have", file, where, m)
			}
		}
		return n
	}

	t.Run("alerts", func(t *testing.T) {
		raw, err := os.ReadFile(alertsFile)
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
			t.Fatalf("%s: %v", alertsFile, err)
		}
		n := 0
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				n += check(alertsFile, "alert "+r.Alert, r.Expr)
			}
		}
		if n < 8 {
			t.Fatalf("only %d series found in %s", n, alertsFile)
		}
		if p, err := exec.LookPath("promtool"); err == nil {
			if out, err := exec.Command(p, "check", "rules", alertsFile).CombinedOutput(); err != nil {
				t.Errorf("promtool check rules %s: %v\n%s", alertsFile, err, out)
			}
		} else {
			t.Log("promtool not installed: rule syntax not checked (CI installs it)")
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		raw, err := os.ReadFile(dashboardFile)
		if err != nil {
			t.Fatal(err)
		}
		type target struct {
			Expr       string `json:"expr"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
		}
		var dash struct {
			UID        string `json:"uid"`
			Title      string `json:"title"`
			Templating struct {
				List []struct {
					Name, Type, Definition string
					Query                  json.RawMessage
				} `json:"list"`
			} `json:"templating"`
			Panels []struct {
				Title, Type string
				Datasource  struct {
					UID string `json:"uid"`
				} `json:"datasource"`
				Targets []target `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(raw, &dash); err != nil {
			t.Fatalf("%s: %v", dashboardFile, err)
		}
		if dash.UID == "" || dash.Title == "" {
			t.Errorf("%s: no uid or title", dashboardFile)
		}
		vars := map[string]string{}
		n := 0
		for _, v := range dash.Templating.List {
			vars[v.Name] = v.Type
			n += check(dashboardFile, "variable "+v.Name, v.Definition+" "+string(v.Query))
		}
		if vars["datasource"] != "datasource" || vars["webhook"] != "query" {
			t.Errorf("%s: variables %v, want a datasource variable \"datasource\" and a query variable \"webhook\"", dashboardFile, vars)
		}
		panels := 0
		for _, p := range dash.Panels {
			if p.Type == "row" {
				continue
			}
			panels++
			if p.Datasource.UID != "${datasource}" || len(p.Targets) == 0 {
				t.Errorf("panel %q: data source %q and %d queries; want ${datasource} and at least one", p.Title, p.Datasource.UID, len(p.Targets))
			}
			for _, q := range p.Targets {
				if q.Datasource.UID != "${datasource}" || check(dashboardFile, "panel "+p.Title, q.Expr) == 0 {
					t.Errorf("panel %q: query %q on data source %q names no walhook series or another data source", p.Title, q.Expr, q.Datasource.UID)
				}
				n++
			}
		}
		if panels < 10 || n < 20 {
			t.Fatalf("only %d panels and %d series in %s", panels, n, dashboardFile)
		}
		// The queries parse: promtool checks them as recording rules, with
		// Grafana's variables replaced by what Grafana sends.
		p, err := exec.LookPath("promtool")
		if err != nil {
			t.Skip("promtool not installed: the queries' syntax is not checked (CI installs it)")
		}
		grafana := strings.NewReplacer("$__rate_interval", "1m", "$webhook", ".*")
		var b strings.Builder
		b.WriteString("groups:\n  - name: dashboard\n    rules:\n")
		for _, p := range dash.Panels {
			for _, q := range p.Targets {
				js, _ := json.Marshal(grafana.Replace(q.Expr)) // a JSON string is a YAML string
				b.WriteString("      - record: dashboard:query\n        expr: " + string(js) + "\n")
			}
		}
		file := t.TempDir() + "/dashboard-rules.yml"
		if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(p, "check", "rules", file).CombinedOutput(); err != nil {
			t.Errorf("promtool does not accept the dashboard's queries: %v\n%s", err, out)
		}
	})
}
