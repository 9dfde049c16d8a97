package web

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const (
	sessionCookie = "walhook_session"
	// sessionTTL is how long a login (or, without a token, a CSRF
	// session) lasts.
	sessionTTL = 12 * time.Hour
	// maxForm bounds the body of a POST form.
	maxForm = 16 << 10
)

// auth is how a request was let in.
type auth struct {
	// session is the id of the request's session cookie ("" without one);
	// CSRF tokens are bound to it.
	session string
	// bearer is true when the request carried the token in an
	// Authorization header. Browsers never add that header by themselves,
	// so such requests need no CSRF token.
	bearer bool
	// loggedIn is true when a token is configured and the session proves
	// a login (the page then offers to log out).
	loggedIn bool
}

type authKey struct{}

func authOf(r *http.Request) auth {
	a, _ := r.Context().Value(authKey{}).(auth)
	return a
}

// mac is HMAC-SHA256 of msg with key.
func mac(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// tokenOK compares a presented token with the configured one in constant
// time (hashing first, so that the length does not leak either).
func (s *Server) tokenOK(given string) bool {
	if s.token == "" {
		return false
	}
	a := sha256.Sum256([]byte(given))
	b := sha256.Sum256([]byte(s.token))
	return hmac.Equal(a[:], b[:])
}

// bearer reports whether r carries the token as "Authorization: Bearer".
func (s *Server) bearer(r *http.Request) bool {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	return ok && strings.EqualFold(scheme, "Bearer") && s.tokenOK(strings.TrimSpace(tok))
}

// session returns the id of r's session cookie if it is valid and unexpired.
// The cookie is id.expiry.hmac; only this server (with a token: any server
// with the same token) can make one.
func (s *Server) session(r *http.Request) string {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return ""
	}
	id, rest, ok := strings.Cut(c.Value, ".")
	if !ok {
		return ""
	}
	exp, sig, ok := strings.Cut(rest, ".")
	if !ok {
		return ""
	}
	want := hex.EncodeToString(mac(s.sessionKey, id+"."+exp))
	if !hmac.Equal([]byte(sig), []byte(want)) {
		return ""
	}
	e, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || s.now().Unix() >= e {
		return ""
	}
	return id
}

// newSession sets a new session cookie on w and returns its id.
func (s *Server) newSession(w http.ResponseWriter, r *http.Request) string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	id := base64.RawURLEncoding.EncodeToString(b)
	exp := strconv.FormatInt(s.now().Add(sessionTTL).Unix(), 10)
	http.SetCookie(w, &http.Cookie{
		Name:     sessionCookie,
		Value:    id + "." + exp + "." + hex.EncodeToString(mac(s.sessionKey, id+"."+exp)),
		Path:     "/",
		MaxAge:   int(sessionTTL / time.Second),
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteStrictMode,
	})
	return id
}

func clearSession(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

// csrfToken is the CSRF token of a session: an HMAC of its id with the
// per-process key.
func (s *Server) csrfToken(session string) string {
	if session == "" {
		return ""
	}
	return hex.EncodeToString(mac(s.csrfKey, "csrf\x00"+session))
}

// authenticate lets requests in. Without a token every request is in;
// with one, everything but the probes (/healthz, /readyz), /login and
// /static/ needs the token as
// a bearer header or a session cookie from /login. Without a token, pages
// give a session cookie to browsers that have none, for CSRF tokens.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		if isProbe(p) || p == "/login" || strings.HasPrefix(p, "/static/") {
			next.ServeHTTP(w, r)
			return
		}
		a := auth{session: s.session(r)}
		if s.token != "" {
			a.bearer = s.bearer(r)
			a.loggedIn = a.session != ""
			if !a.bearer && !a.loggedIn {
				s.unauthorized(w, r)
				return
			}
		}
		if s.token == "" && a.session == "" && r.Method == http.MethodGet && isPage(p) {
			a.session = s.newSession(w, r)
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), authKey{}, a)))
	})
}

// isProbe reports whether path is a health probe: answered without the
// token (like Prometheus' /-/healthy and /-/ready), so a load balancer or a
// Kubernetes probe needs no secret. Their bodies name no host, user or DSN.
func isProbe(path string) bool { return path == "/healthz" || path == "/readyz" }

// isPage reports whether path is an HTML page (as opposed to /metrics and
// /readyz, which machines read).
func isPage(path string) bool { return path != "/metrics" && path != "/readyz" }

// unauthorized sends browsers asking for a page to the login form and
// everyone else a 401.
func (s *Server) unauthorized(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && isPage(r.URL.Path) && strings.Contains(r.Header.Get("Accept"), "text/html") {
		http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
		return
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="walhook"`)
	http.Error(w, "unauthorized: send the http.token as \"Authorization: Bearer <token>\" or log in at /login", http.StatusUnauthorized)
}

// checkCSRF parses r's form and checks its CSRF token; it answers 403 and
// returns false when it does not match.
func (s *Server) checkCSRF(w http.ResponseWriter, r *http.Request) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
		return false
	}
	a := authOf(r)
	if a.bearer {
		return true
	}
	want := s.csrfToken(a.session)
	if want == "" || !hmac.Equal([]byte(r.PostForm.Get("csrf")), []byte(want)) {
		http.Error(w, "forbidden: missing or stale CSRF token; reload the page and try again", http.StatusForbidden)
		return false
	}
	return true
}

// safeNext returns next if it is a path on this server, else "/".
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" {
		return "/"
	}
	return u.RequestURI()
}

type loginPage struct {
	pageBase
	Next  string
	Wrong bool
}

func (s *Server) loginForm(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.URL.Query().Get("next"))
	if s.token == "" || s.session(r) != "" {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	s.render(w, r, http.StatusOK, "login", &loginPage{pageBase: s.base(r, "Log in"), Next: next})
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	if s.token == "" {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	if !s.tokenOK(r.PostForm.Get("token")) {
		s.log.Warn().Str("remote", r.RemoteAddr).Msg("status page login with a wrong token")
		s.render(w, r, http.StatusUnauthorized, "login", &loginPage{pageBase: s.base(r, "Log in"), Next: next, Wrong: true})
		return
	}
	s.newSession(w, r)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	if !s.checkCSRF(w, r) {
		return
	}
	clearSession(w, r)
	target := "/login"
	if s.token == "" {
		target = "/"
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
}
