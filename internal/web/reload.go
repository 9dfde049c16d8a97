package web

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/walhook/walhook/internal/config"
)

// Reloader reloads the process's configuration file (SIGHUP does the
// same); cmd/walhook implements it.
type Reloader interface {
	// Reload reads, checks and applies the file; on an error nothing
	// changes. The text says what changed.
	Reload(ctx context.Context) (string, error)
	// ReloadStatus is the outcome of the last reload, for the page.
	ReloadStatus() ReloadStatus
}

// ReloadStatus is what the status page shows about the configuration.
type ReloadStatus struct {
	// Hash is the SHA-256 of the configuration file in use.
	Hash string
	// LoadedAt is when it was loaded (at start or by a reload).
	LoadedAt time.Time
	// FailedAt and Error are the last failed reload since then, if any.
	FailedAt time.Time
	Error    string
}

// reloadTimeout bounds a reload requested over HTTP.
const reloadTimeout = time.Minute

// config is the configuration in use (SetConfig replaces it).
func (s *Server) config() *config.Config { return s.live.Load() }

// SetConfig makes the page show cfg's webhooks and models, after a reload.
// Settings that need a restart (listen address, token, schema, slot) are
// not taken from it.
func (s *Server) SetConfig(cfg *config.Config) {
	s.live.Store(cfg)
	s.metrics.AddWebhooks(cfg)
}

// reload handles POST /-/reload: the token or a session's CSRF token, as
// for the page's retry buttons. A form post from the page is sent back to
// the page; other callers get the outcome as text (200, or 400 when the
// configuration was refused and the old one kept).
func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if !s.checkCSRF(w, r) {
		return
	}
	if s.reloader == nil {
		http.Error(w, "this process does not reload its configuration", http.StatusNotFound)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), reloadTimeout)
	defer cancel()
	text, err := s.reloader.Reload(ctx)
	if !authOf(r).bearer {
		done := "reloaded"
		if err != nil {
			done = "reload-failed"
		}
		http.Redirect(w, r, "/?done="+done, http.StatusSeeOther)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, "configuration not reloaded (the previous one stays in use): %v\n", err)
		return
	}
	fmt.Fprintln(w, text)
}

// configView is the page's configuration line.
type configView struct {
	Hash, Loaded, Failed, Error string
	CanReload                   bool
}

func (s *Server) configView() configView {
	v := configView{Hash: s.config().Hash}
	if s.reloader == nil {
		return v
	}
	st := s.reloader.ReloadStatus()
	v.CanReload, v.Hash = true, st.Hash
	if !st.LoadedAt.IsZero() {
		v.Loaded = st.LoadedAt.UTC().Format("2006-01-02 15:04:05 UTC")
	}
	if !st.FailedAt.IsZero() {
		v.Failed, v.Error = st.FailedAt.UTC().Format("2006-01-02 15:04:05 UTC"), st.Error
	}
	return v
}
