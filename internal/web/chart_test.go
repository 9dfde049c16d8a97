package web_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/web"
)

// figure returns the chart figure of webhook on page ("" when absent).
func figure(page, webhook string) string {
	_, rest, ok := strings.Cut(page, `<figure class="chart" id="chart-`+webhook+`">`)
	if !ok {
		return ""
	}
	fig, _, _ := strings.Cut(rest, "</figure>")
	return fig
}

// The page draws each webhook's last hour from the minutes table: bars of
// attempts per minute, delivered under failed, the backlog as a step line,
// the axes' tops labelled, and the figures in the accessible name; a
// webhook without data gets an empty chart with a note.
func TestStatusPageCharts(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 30, 20, 0, time.UTC)
	e := newEnv(t, func(_ *config.Config, o *web.Options) { o.Now = func() time.Time { return now } })
	_, err := e.pool.Exec(context.Background(), `INSERT INTO walhook.minutes (minute, webhook, delivered, retried, failed, backlog) VALUES
		('2026-03-01 12:30Z', 'inventory', 7, 2, 1, 4),
		('2026-03-01 12:29Z', 'inventory', 0, 0, 0, 6),
		('2026-03-01 12:00Z', 'inventory', 3, 0, 0, NULL),
		('2026-03-01 11:31Z', 'inventory', 1, 0, 0, 9),
		('2026-03-01 11:30Z', 'inventory', 100, 100, 100, 100)`)
	if err != nil {
		t.Fatal(err)
	}
	_, page := do(t, client(t), "GET", e.srv.URL+"/", nil)

	inv := figure(page, "inventory")
	if inv == "" {
		t.Fatalf("no chart for inventory:\n%s", page)
	}
	const label = "inventory, last hour: 11 delivered, 3 failed attempts (2 retried, 1 gave up); " +
		"at most 10 attempts in a minute; backlog 4 at the last sample, at most 9."
	for _, want := range []string{
		`role="img" aria-label="` + label + `"`,
		`<title>` + label + `</title>`,
		// The y axes' tops: 10 attempts a minute, a backlog of 10.
		`text-anchor="end" fill="#677089">10/min</text>`,
		`class="max backlog-max" x="32" y="78" dy="3" text-anchor="end" fill="#677089">10</text>`,
		// 12:30, the last slot: 7 of 10 delivered, 3 failed on top.
		`<title>12:30 UTC: 7 delivered, 3 failed attempts</title><rect class="delivered" x="272" y="24.2" width="3" height="37.8" fill="#17803d"/><rect class="failed" x="272" y="8" width="3" height="16.2" fill="#b42318"/>`,
		`<title>11:31 UTC: 1 delivered, 0 failed attempts</title><rect class="delivered" x="36" y="56.6" width="3" height="5.4"`,
		// The backlog: 9 at 11:31, then 6 and 4 in the last two minutes.
		`<path class="backlog" d="M36 80.4 H40 M268 87.6 H272 V92.4 H276"`,
	} {
		if !strings.Contains(inv, want) {
			t.Errorf("the inventory chart lacks %s:\n%s", want, inv)
		}
	}
	if n := strings.Count(inv, `<g class="minute">`); n != 3 {
		t.Errorf("%d minutes drawn, want 3 (12:29 had no attempt, 11:30 is out of the hour)", n)
	}
	if strings.Contains(inv, "No attempts") {
		t.Error("the inventory chart says it is empty")
	}

	audit := figure(page, "audit")
	if !strings.Contains(audit, `aria-label="audit, last hour: 0 delivered, 0 failed attempts (0 retried, 0 gave up); at most 0 attempts in a minute; backlog not sampled."`) ||
		!strings.Contains(audit, "No attempts or backlog samples in the last hour") || strings.Contains(audit, "<rect") || strings.Contains(audit, "<path") {
		t.Errorf("the audit chart is not an empty chart with a note:\n%s", audit)
	}
	// No inline style anywhere: the CSP would refuse it.
	if regexp.MustCompile(`(?i)\sstyle=|<style`).MatchString(page) {
		t.Error("the page has inline style, which its CSP refuses")
	}
}
