package web

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/walhook/walhook/dispatch/sign"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/human"
	"github.com/walhook/walhook/internal/outbox"
	"github.com/walhook/walhook/internal/tracecontext"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticRoot embed.FS

// staticFS serves /static/... from the embedded static directory.
var staticFS = fs.FS(staticRoot)

const (
	// pageSize is how many deliveries a list page shows.
	pageSize = 50
	// pageTimeout bounds the queries behind one page.
	pageTimeout = 5 * time.Second
	// maxShownBody is how much of a body the detail page shows.
	maxShownBody = 1 << 20
	// maxListError is how much of last_error a list row shows.
	maxListError = 160
)

// states are the delivery states, in the order the page lists them.
var states = outbox.States

var funcs = template.FuncMap{
	"time": func(t *time.Time) string {
		if t == nil || t.IsZero() {
			return ""
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"age": func(t *time.Time, now time.Time) string {
		if t == nil || t.IsZero() {
			return ""
		}
		return human.Since(*t, now)
	},
	"dur":   human.Duration,
	"bytes": human.Bytes,
}

// parsePages parses each page with the layout.
func parsePages() (map[string]*template.Template, error) {
	pages := map[string]*template.Template{}
	for _, name := range []string{"index", "delivery", "login"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("web: parse %s page: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// pageBase is what every page's layout needs.
type pageBase struct {
	Title    string
	Version  string
	CSRF     string
	LoggedIn bool
	Now      time.Time
	Flash    *flash
}

type flash struct {
	Kind, Text string
}

func (s *Server) base(r *http.Request, title string) pageBase {
	a := authOf(r)
	return pageBase{Title: title, Version: s.version, CSRF: s.csrfToken(a.session), LoggedIn: a.loggedIn,
		Now: s.now(), Flash: flashOf(r)}
}

// flashOf turns the done/n query parameters a retry action redirects with
// into a message. The text is fixed here: nothing from the URL is shown.
func flashOf(r *http.Request) *flash {
	q := r.URL.Query()
	n, _ := strconv.ParseInt(q.Get("n"), 10, 64)
	switch q.Get("done") {
	case "retried":
		if n == 0 {
			return &flash{"warn", "Nothing was re-queued: only failed or delivered deliveries can be retried, and only once they have finished their attempt."}
		}
		if n == 1 {
			return &flash{"ok", "Re-queued 1 delivery; it is sent as soon as a sender is free."}
		}
		return &flash{"ok", fmt.Sprintf("Re-queued %d deliveries; they are sent as soon as a sender is free.", n)}
	case "error":
		return &flash{"error", "Re-queueing failed: the outbox database did not answer. See walhook's log."}
	case "reloaded":
		return &flash{"ok", "Configuration reloaded."}
	case "reload-failed":
		return &flash{"error", "The configuration was not reloaded (the previous one stays in use): see below and walhook's log."}
	}
	return nil
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, page string, data any) {
	var buf bytes.Buffer
	if err := s.pages[page].Execute(&buf, data); err != nil {
		s.log.Error().Err(err).Str("page", page).Msg("rendering a page failed")
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// hookView is one row of the webhook summary.
type hookView struct {
	Name       string
	Target     string
	Configured bool
	Enabled    bool
	// Insecure: tls.insecure_skip_verify is set.
	Insecure bool
	hookStats
	Oldest      string
	RetryURL    string
	LastFailure *failureView
	Process     *processCounts
	// Paused is set while a live dispatcher's circuit breaker holds the
	// webhook (open or probing): "open since 3m" and its last error.
	Paused, PausedError string
	// Chart is the webhook's last hour (nil when it could not be read).
	Chart *chartView
}

type failureView struct {
	At     *time.Time
	Status *int32
	Error  string
}

// rowView is one delivery in a list.
type rowView struct {
	ID                  int64
	Webhook, Model      string
	Event, Key          string
	State               outbox.State
	Attempts            int32
	LastStatus          *int32
	LastError           string
	LastAttempt, Commit *time.Time
	NextAttempt         *time.Time
	CanRetry            bool
}

// filter selects deliveries on the index page.
type filter struct {
	State          outbox.State
	Webhook, Model string
	Before, After  int64
}

func (f filter) query(extra ...string) string {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	if f.Webhook != "" {
		q.Set("webhook", f.Webhook)
	}
	if f.Model != "" {
		q.Set("model", f.Model)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	if len(q) == 0 {
		return "/"
	}
	return "/?" + q.Encode()
}

type captureView struct {
	Streaming bool
	Confirmed string
}

type indexPage struct {
	pageBase
	Capture     *captureView
	Dispatching bool
	Slot        *slotStats
	SlotName    string
	SlotErr     string
	StatsErr    string
	ChartsErr   string
	ListErr     string
	Hooks       []hookView
	Filter      filter
	States      []outbox.State
	WebhookOpts []string
	ModelOpts   []string
	Rows        []rowView
	NewerURL    string
	OlderURL    string
	NewestURL   string
	Here        string
	Config      configView
}

func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := filter{State: outbox.State(q.Get("state")), Webhook: limit(q.Get("webhook"), 200), Model: limit(q.Get("model"), 200)}
	if f.State != "" && !slices.Contains(states, f.State) {
		f.State = ""
	}
	f.Before, _ = strconv.ParseInt(q.Get("before"), 10, 64)
	f.After, _ = strconv.ParseInt(q.Get("after"), 10, 64)

	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	p := &indexPage{pageBase: s.base(r, "Status"), Filter: f, States: states, Dispatching: s.dispatching,
		SlotName: s.cfg.Database.Slot, Config: s.configView()}
	if s.capture != nil {
		p.Capture = &captureView{Streaming: s.capture.Streaming(), Confirmed: s.capture.ConfirmedLSN().String()}
	}
	st := s.stats.read(ctx)
	if st.Err != nil {
		p.StatsErr = st.Err.Error()
	}
	p.Slot = st.Slot
	if st.SlotErr != nil {
		p.SlotErr = st.SlotErr.Error()
	}
	var configured []string
	for _, wh := range s.config().Webhooks {
		configured = append(configured, wh.Name)
	}
	names := st.hookNames(configured)
	paused := map[string]outbox.BreakerStatus{}
	if ds, err := s.store.Dispatchers(ctx); err == nil {
		for _, d := range ds {
			for name, b := range d.Breakers {
				if d.Alive && (paused[name].State == "" || b.State == outbox.BreakerOpen) {
					paused[name] = b
				}
			}
		}
	}
	failures, err := s.lastFailures(ctx, names)
	if err != nil && p.StatsErr == "" {
		p.StatsErr = err.Error()
	}
	charts, err := s.readCharts(ctx, s.now())
	if err != nil {
		p.ChartsErr = err.Error()
	}
	for _, name := range names {
		v := hookView{Name: name, LastFailure: failures[name], RetryURL: "/webhooks/" + url.PathEscape(name) + "/retry-failed"}
		if h := st.Hooks[name]; h != nil {
			v.hookStats = *h
		}
		if v.OldestAge > 0 {
			v.Oldest = human.Duration(v.OldestAge)
		}
		if b, ok := paused[name]; ok {
			v.Paused, v.PausedError = "circuit "+string(b.State), b.LastError
			if !b.Since.IsZero() {
				v.Paused += " since " + human.Duration(s.now().Sub(b.Since))
			}
		}
		if err == nil {
			v.Chart = drawChart(name, charts[name])
		}
		if wh, ok := s.config().WebhookByName(name); ok {
			v.Configured, v.Enabled, v.Target = true, wh.IsEnabled(), config.URLTarget(wh.URL)
			v.Insecure = wh.TLS.InsecureSkipVerify
		}
		if s.dispatching {
			if c, ok := s.metrics.processCounts(name); ok {
				v.Process = &c
			}
		}
		p.Hooks = append(p.Hooks, v)
	}
	p.WebhookOpts = names
	if f.Webhook != "" && !slices.Contains(names, f.Webhook) {
		p.WebhookOpts = append(p.WebhookOpts, f.Webhook)
	}
	for _, m := range s.config().Models {
		p.ModelOpts = append(p.ModelOpts, m.Model)
	}
	sort.Strings(p.ModelOpts)
	if f.Model != "" && !slices.Contains(p.ModelOpts, f.Model) {
		p.ModelOpts = append(p.ModelOpts, f.Model)
	}

	rows, more, err := s.list(ctx, f)
	if err != nil {
		p.ListErr = err.Error()
	}
	p.Rows = rows
	p.Here = here(r)
	if len(rows) > 0 {
		newest, oldest := rows[0].ID, rows[len(rows)-1].ID
		// Older rows exist if the query said so, or we came from a newer
		// page; newer rows if we paged at all (checked by the next page).
		if (f.After == 0 && more) || f.After != 0 {
			p.OlderURL = f.query("before", strconv.FormatInt(oldest, 10))
		}
		if (f.After != 0 && more) || f.Before != 0 {
			p.NewerURL = f.query("after", strconv.FormatInt(newest, 10))
		}
	}
	if f.Before != 0 || f.After != 0 {
		p.NewestURL = f.query()
	}
	s.render(w, r, http.StatusOK, "index", p)
}

func limit(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// list reads a page of deliveries matching f, newest first. more says
// whether there are further rows in the paging direction.
func (s *Server) list(ctx context.Context, f filter) (rows []rowView, more bool, err error) {
	list, more, err := s.store.List(ctx, outbox.ListFilter{State: f.State, Webhook: f.Webhook, Model: f.Model,
		After: f.After, Before: f.Before, Limit: pageSize})
	if err != nil {
		return nil, false, err
	}
	for _, d := range list {
		r := rowView{ID: d.ID, Webhook: d.Webhook, Model: d.Model, Event: d.Event, Key: d.ObjectKey, State: d.State,
			Attempts: d.Attempts, LastStatus: d.LastStatus, LastAttempt: d.LastAttemptAt,
			CanRetry: d.State == outbox.StateFailed && !outbox.FailedAtCapture(d.State, int(d.Attempts))}
		commit, next := d.CommittedAt, d.NextAttemptAt
		r.Commit, r.NextAttempt = &commit, &next
		if d.LastError != nil {
			r.LastError = cut(*d.LastError, maxListError)
		}
		rows = append(rows, r)
	}
	return rows, more, nil
}

// cut shortens s to at most n bytes at a rune boundary, marking the cut.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n] + "…"
}

// lastFailures reads each webhook's most recent failed delivery.
func (s *Server) lastFailures(ctx context.Context, names []string) (map[string]*failureView, error) {
	out := map[string]*failureView{}
	got, err := s.store.LastFailures(ctx, names)
	for name, f := range got {
		v := &failureView{At: f.At, Status: f.Status, Error: cut(f.Error, maxListError)}
		if v.Status != nil && strings.HasPrefix(v.Error, fmt.Sprintf("HTTP %d", *v.Status)) {
			v.Status = nil // the error names it already: "HTTP 401: bad signature"
		}
		out[name] = v
	}
	return out, err
}

// detailView is one delivery with everything the outbox keeps.
type detailView struct {
	ID                              int64
	Webhook, Event, Model, Key      string
	CommitLSN                       string
	TraceID                         string
	Seq                             int32
	Committed                       *time.Time
	Body                            string
	State                           outbox.State
	Attempts                        int32
	NextAttempt, LockedUntil        *time.Time
	LockedBy                        *string
	LastStatus                      *int32
	LastError                       *string
	LastAttempt, Delivered, Created *time.Time
}

// attemptView is one recorded attempt as the delivery page shows it.
type attemptView struct {
	N       int32
	Started *time.Time
	Took    string
	Status  *int32
	Probe   bool
	SpanID  string
	// Error says why there was no usable response; Response is the start
	// of the response body. Summary is the first line of either, cut.
	Error, Response, Summary string
	// Long: the text does not fit in Summary; the page folds it.
	Long bool
}

// attemptViews prepares a delivery's attempts for the page, newest first.
func attemptViews(list []outbox.AttemptRecord) []attemptView {
	out := make([]attemptView, 0, len(list))
	for i := len(list) - 1; i >= 0; i-- {
		a := list[i]
		started := a.StartedAt
		v := attemptView{N: a.Attempt, Started: &started, Took: human.Duration(a.Duration), Status: a.Status, Probe: a.Probe}
		switch {
		case a.Duration < 10*time.Millisecond:
			v.Took = a.Duration.Round(10 * time.Microsecond).String()
		case a.Duration < time.Minute:
			v.Took = a.Duration.Round(time.Millisecond).String()
		}
		if a.SpanID != nil {
			v.SpanID = *a.SpanID
		}
		text := ""
		switch {
		case a.Error != nil:
			v.Error, text = *a.Error, *a.Error
		case a.Response != nil:
			v.Response, text = *a.Response, *a.Response
		}
		first, _, more := strings.Cut(strings.TrimSpace(text), "\n")
		v.Summary = cut(first, maxListError)
		v.Long = more || v.Summary != first
		out = append(out, v)
	}
	return out
}

// headerView is a request header as the delivery page shows it.
type headerView struct {
	Name, Value string
	// Note marks a value that is not the literal header value.
	Note bool
}

type deliveryPage struct {
	// HeaderError says why the webhook's headers cannot be built (a
	// configuration that dispatch refuses too).
	HeaderError string
	pageBase
	D        detailView
	Attempts []attemptView
	// AttemptsKept is how many attempts the outbox keeps per delivery.
	AttemptsKept int
	Configured   bool
	Method       string
	Target       string
	MaxAttempts  int
	Headers      []headerView
	Signed       bool
	Body         string
	BodyNote     string
	RetryLabel   string
	// Superseded: a later change of the same object was delivered, so
	// retrying this one would leave the receiver with older state.
	Superseded bool
	// FailedAtCapture: the webhook's body_template failed when the change
	// was captured; the row cannot be retried.
	FailedAtCapture bool
	Back            string
	Here            string
}

func (s *Server) delivery(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		http.Error(w, "no such delivery: the id must be a positive number", http.StatusNotFound)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	row, err := s.store.Get(ctx, id)
	if errors.Is(err, outbox.ErrNotFound) {
		http.Error(w, fmt.Sprintf("delivery %d does not exist (delivered rows are deleted after dispatch.retention)", id), http.StatusNotFound)
		return
	}
	if err != nil {
		s.log.Warn().Err(err).Int64("delivery", id).Msg("reading a delivery for the status page failed")
		http.Error(w, "the outbox database did not answer: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	commit, next, created := row.CommittedAt, row.NextAttemptAt, row.CreatedAt
	d := detailView{ID: row.ID, Webhook: row.Webhook, Event: row.Event, Model: row.Model, Key: row.ObjectKey,
		CommitLSN: row.CommitLSN, Seq: row.Seq, Committed: &commit, Body: *row.Body, State: row.State,
		Attempts: row.Attempts, NextAttempt: &next, LockedUntil: row.LockedUntil, LockedBy: row.LockedBy,
		LastStatus: row.LastStatus, LastError: row.LastError, LastAttempt: row.LastAttemptAt,
		Delivered: row.DeliveredAt, Created: &created,
		TraceID: tracecontext.ForDelivery(row.Webhook, row.ID).String()}
	attempts, err := s.store.Attempts(ctx, id)
	if err != nil {
		s.log.Warn().Err(err).Int64("delivery", id).Msg("reading a delivery's attempts for the status page failed")
		http.Error(w, "the outbox database did not answer: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	p := &deliveryPage{pageBase: s.base(r, fmt.Sprintf("Delivery %d", id)), D: d, Here: here(r),
		Back: "/?webhook=" + url.QueryEscape(d.Webhook), Attempts: attemptViews(attempts), AttemptsKept: outbox.AttemptsKept}
	if wh, ok := s.config().WebhookByName(d.Webhook); ok {
		p.Configured = true
		p.Method = wh.HTTPMethod
		if p.Method == "" {
			p.Method = http.MethodPost
		}
		p.Target = config.URLTarget(wh.URL)
		p.MaxAttempts = wh.Retry.MaxAttempts
		if p.Headers, p.Signed, err = s.requestHeaders(wh, d.ID, d.Body); err != nil {
			p.HeaderError = err.Error()
		}
	}
	switch {
	case outbox.FailedAtCapture(d.State, int(d.Attempts)):
		// Its body is the default body, not the template's: a retry
		// would send the wrong body (Requeue refuses it anyway).
		p.FailedAtCapture = true
	case d.State == outbox.StateFailed:
		p.RetryLabel = "Retry"
	case d.State == outbox.StateDelivered:
		p.RetryLabel = "Send again"
	}
	if p.RetryLabel != "" {
		// Say so before the click: a later change of this object was
		// delivered, and this older one would arrive after it.
		if n, err := s.store.Superseded(ctx, outbox.RequeueFilter{IDs: []int64{d.ID}}, s.now()); err == nil && n > 0 {
			p.Superseded = true
		}
	}
	body := d.Body
	if len(body) > maxShownBody {
		body = cut(body, maxShownBody)
		p.BodyNote = fmt.Sprintf("The body is %s; the first %s are shown.", human.Bytes(int64(len(d.Body))), human.Bytes(maxShownBody))
	}
	if json.Valid([]byte(body)) {
		var buf bytes.Buffer
		if json.Indent(&buf, []byte(body), "", "  ") == nil {
			body = buf.String()
		}
	}
	p.Body = body
	s.render(w, r, http.StatusOK, "delivery", p)
}

// requestHeaders returns the headers a delivery is sent with under the
// current configuration, built by the Signer dispatch signs with: values
// walhook sets are shown; configured header values (they often hold
// credentials) and signatures are not.
func (s *Server) requestHeaders(wh *config.Webhook, id int64, body string) ([]headerView, bool, error) {
	sg, err := sign.New(wh.SignSettings(s.version))
	if err != nil {
		return nil, false, err
	}
	traceparent := "00-" + tracecontext.ForDelivery(wh.Name, id).String() + "-<span id of the attempt>-01"
	h := sg.Header(id, []byte(body), traceparent, s.now())
	var out []headerView
	for _, name := range sg.Names() {
		kind, _ := sg.Kind(name)
		v := headerView{Name: name, Value: h.Get(name)}
		switch {
		case kind == sign.Configured:
			v.Value, v.Note = "configured (value redacted)", true
		case name == sign.HeaderTraceparent:
			v.Note = true
		case name == sign.HeaderWebhookTimestamp:
			v.Value, v.Note = "Unix seconds of the attempt (now: "+v.Value+")", true
		case name == sign.HeaderSignature:
			v.Value, v.Note = "HMAC-SHA512 of the body with the webhook's secret (not shown)", true
		case name == sign.HeaderWebhookSignature:
			n := len(strings.Fields(v.Value))
			v.Value, v.Note = fmt.Sprintf("v1,<base64 HMAC-SHA256 of id.timestamp.body> for each of %d secret(s) (not shown)", n), true
		}
		out = append(out, v)
	}
	return out, sg.Signed(), nil
}

// retryDelivery puts one failed (or delivered) delivery back to pending.
func (s *Server) retryDelivery(w http.ResponseWriter, r *http.Request) {
	if !s.checkCSRF(w, r) {
		return
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		http.Error(w, "no such delivery: the id must be a positive number", http.StatusNotFound)
		return
	}
	back := "/deliveries/" + strconv.FormatInt(id, 10)
	s.requeue(w, r, outbox.RequeueFilter{IDs: []int64{id}}, back)
}

// retryWebhook puts every failed delivery of a webhook back to pending.
func (s *Server) retryWebhook(w http.ResponseWriter, r *http.Request) {
	if !s.checkCSRF(w, r) {
		return
	}
	name := r.PathValue("name")
	if name == "" {
		http.Error(w, "no webhook named", http.StatusNotFound)
		return
	}
	// Rows a later change of their object was delivered after stay failed:
	// sending them would leave the receiver with older state (retry them
	// one by one from their page, or with walhook retry --include-superseded).
	s.requeue(w, r, outbox.RequeueFilter{Webhook: name, AllFailed: true, SkipSuperseded: true}, "/?webhook="+url.QueryEscape(name))
}

func (s *Server) requeue(w http.ResponseWriter, r *http.Request, f outbox.RequeueFilter, back string) {
	if ret := r.PostForm.Get("return"); ret != "" {
		back = safeNext(ret)
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	n, err := s.store.Requeue(ctx, f, s.now())
	log := s.log.With().Str("remote", r.RemoteAddr).Ints64("ids", f.IDs).Str("webhook", f.Webhook).Logger()
	if err != nil {
		log.Warn().Err(err).Msg("re-queueing from the status page failed")
		http.Redirect(w, r, withDone(back, "error", 0), http.StatusSeeOther)
		return
	}
	s.stats.invalidate()
	log.Info().Int64("requeued", n).Msg("deliveries re-queued from the status page")
	http.Redirect(w, r, withDone(back, "retried", n), http.StatusSeeOther)
}

// here is r's URL without the outcome of an earlier action, for the forms
// of the page to return to.
func here(r *http.Request) string {
	u := *r.URL
	q := u.Query()
	if q.Has("done") || q.Has("n") {
		q.Del("done")
		q.Del("n")
		u.RawQuery = q.Encode()
	}
	return u.RequestURI()
}

// withDone adds the outcome of an action to a local URL.
func withDone(path, done string, n int64) string {
	u, err := url.Parse(path)
	if err != nil {
		u = &url.URL{Path: "/"}
	}
	q := u.Query()
	q.Set("done", done)
	q.Set("n", strconv.FormatInt(n, 10))
	u.RawQuery = q.Encode()
	return u.RequestURI()
}
