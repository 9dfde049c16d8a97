package web_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/web"
)

// fakeReloader counts reloads and fails when told to.
type fakeReloader struct {
	mu    sync.Mutex
	calls int
	fail  error
	st    web.ReloadStatus
}

func (f *fakeReloader) Reload(context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.fail != nil {
		f.st.FailedAt, f.st.Error = time.Now(), f.fail.Error()
		return "", f.fail
	}
	return "configuration reloaded: webhooks added: crm", nil
}

func (f *fakeReloader) ReloadStatus() web.ReloadStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.st
}

func (f *fakeReloader) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func withReloader(r web.Reloader) envOption {
	return func(_ *config.Config, o *web.Options) { o.Reloader = r }
}

// POST /-/reload is protected like the retry buttons: without a token it
// needs the session's CSRF token (the page's button); with one, the token.
func TestReloadIsProtectedLikeRetry(t *testing.T) {
	fr := &fakeReloader{st: web.ReloadStatus{Hash: "0123456789abcdef0123", LoadedAt: time.Now()}}
	e := newEnv(t, withReloader(fr))
	u := e.srv.URL + "/-/reload"
	if resp, _ := do(t, client(t), "POST", u, url.Values{}); resp.StatusCode != 403 {
		t.Errorf("reload without session or CSRF token: %s", resp.Status)
	}
	c := client(t)
	_, page := do(t, c, "GET", e.srv.URL+"/", nil)
	if !strings.Contains(page, "0123456789ab") || !strings.Contains(page, `action="/-/reload"`) {
		t.Errorf("the page shows no configuration hash or reload button:\n%s", page)
	}
	tok := csrf(t, page)
	if resp, _ := do(t, c, "POST", u, url.Values{"csrf": {tok}}, "Origin", "http://evil.example", "Sec-Fetch-Site", "cross-site"); resp.StatusCode != 403 {
		t.Errorf("cross-site reload: %s", resp.Status)
	}
	if fr.count() != 0 {
		t.Fatalf("refused requests reloaded %d times", fr.count())
	}
	resp, _ := do(t, c, "POST", u, url.Values{"csrf": {tok}})
	if resp.StatusCode != 303 || resp.Header.Get("Location") != "/?done=reloaded" || fr.count() != 1 {
		t.Fatalf("reload from the page: %s to %q, %d reloads", resp.Status, resp.Header.Get("Location"), fr.count())
	}
	fr.mu.Lock()
	fr.fail = errors.New("test.yaml:7: webhooks[0].url: bad URL")
	fr.mu.Unlock()
	resp, _ = do(t, c, "POST", u, url.Values{"csrf": {tok}})
	if resp.Header.Get("Location") != "/?done=reload-failed" {
		t.Fatalf("failed reload from the page: %s to %q", resp.Status, resp.Header.Get("Location"))
	}
	_, page = do(t, c, "GET", e.srv.URL+"/?done=reload-failed", nil)
	if !strings.Contains(page, "test.yaml:7: webhooks[0].url: bad URL") || !strings.Contains(page, "stays in use") {
		t.Errorf("the page does not show the failed reload:\n%s", page)
	}

	const token = "correct-horse-battery-staple"
	fr2 := &fakeReloader{}
	e2 := newEnv(t, withToken(token), withReloader(fr2))
	u2 := e2.srv.URL + "/-/reload"
	if resp, _ := do(t, client(t), "POST", u2, nil); resp.StatusCode != 401 {
		t.Errorf("reload without the token: %s", resp.Status)
	}
	if resp, _ := do(t, client(t), "POST", u2, nil, "Authorization", "Bearer wrong"); resp.StatusCode != 401 {
		t.Errorf("reload with a wrong token: %s", resp.Status)
	}
	resp, body := do(t, client(t), "POST", u2, nil, "Authorization", "Bearer "+token)
	if resp.StatusCode != 200 || !strings.Contains(body, "webhooks added: crm") || fr2.count() != 1 {
		t.Fatalf("reload with the token: %s %q, %d reloads", resp.Status, body, fr2.count())
	}
	fr2.fail = errors.New("database.slot changed")
	resp, body = do(t, client(t), "POST", u2, nil, "Authorization", "Bearer "+token)
	if resp.StatusCode != 400 || !strings.Contains(body, "database.slot changed") {
		t.Fatalf("refused reload with the token: %s %q", resp.Status, body)
	}
}

// The reload metrics start at success, with the start as the last load.
func TestReloadMetrics(t *testing.T) {
	e := newEnv(t)
	c := client(t)
	fams := scrape(t, c, e.srv.URL)
	if v := value(t, fams, "walhook_config_last_reload_successful"); v != 1 {
		t.Errorf("walhook_config_last_reload_successful = %v at start", v)
	}
	if at := value(t, fams, "walhook_config_last_reload_success_timestamp_seconds"); time.Since(time.Unix(int64(at), 0)) > time.Minute {
		t.Errorf("walhook_config_last_reload_success_timestamp_seconds = %v at start", at)
	}
	e.metrics.ConfigReloaded(false)
	if v := value(t, scrape(t, c, e.srv.URL), "walhook_config_last_reload_successful"); v != 0 {
		t.Errorf("walhook_config_last_reload_successful = %v after a failed reload", v)
	}
	e.metrics.ConfigReloaded(true)
	if v := value(t, scrape(t, c, e.srv.URL), "walhook_config_last_reload_successful"); v != 1 {
		t.Errorf("walhook_config_last_reload_successful = %v after a successful reload", v)
	}
}
