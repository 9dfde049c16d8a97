package config

import (
	"fmt"
	"math"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/walhook/walhook/dispatch/sign"
	"github.com/walhook/walhook/internal/clienttls"
)

// Config is the whole walhook configuration.
type Config struct {
	Database Database  `yaml:"database"`
	Models   []Model   `yaml:"models"`
	Webhooks []Webhook `yaml:"webhooks"`
	Dispatch Dispatch  `yaml:"dispatch"`
	HTTP     HTTP      `yaml:"http"`
	Log      Log       `yaml:"log"`
	Tracing  Tracing   `yaml:"tracing"`

	// File is the path the configuration was read from ("" when from bytes).
	File string `yaml:"-"`
	// Hash is the SHA-256 of the file's bytes as read (before ${VAR}
	// expansion, so it holds no secret from the environment), in hex.
	Hash string `yaml:"-"`
}

// Database holds connection and replication settings.
type Database struct {
	DSN         string `yaml:"dsn"`
	OutboxDSN   string `yaml:"outbox_dsn"`
	Schema      string `yaml:"schema"`
	Slot        string `yaml:"slot"`
	Publication string `yaml:"publication"`
	// SlotFailover says whether the slot is a failover slot, synced to
	// standbys (PostgreSQL 17+): nil means on where the server can (17+),
	// true on a server before 17 is an error (FailoverLine says where it
	// was written).
	SlotFailover *bool `yaml:"slot_failover"`
	FailoverLine int   `yaml:"-"`
}

// FailoverVersion is the first server version (server_version_num) with
// failover slots.
const FailoverVersion = 170000

// WantFailover says whether the slot should be a failover slot on a server
// of version num, and whether the configuration asks for what that server
// cannot do (slot_failover: true before 17).
func (d Database) WantFailover(num int) (want, impossible bool) {
	if d.SlotFailover == nil {
		return num >= FailoverVersion, false
	}
	return *d.SlotFailover && num >= FailoverVersion, *d.SlotFailover && num < FailoverVersion
}

// OutboxConn returns the connection string of the outbox database:
// outbox_dsn, or dsn when the outbox lives in the source database.
func (d Database) OutboxConn() string {
	if d.OutboxDSN != "" {
		return d.OutboxDSN
	}
	return d.DSN
}

// SeparateOutbox reports whether the outbox is in another database than the
// source (outbox_dsn is set).
func (d Database) SeparateOutbox() bool { return d.OutboxDSN != "" }

// Model maps one table to a model name and says how its rows render.
type Model struct {
	Table         string              `yaml:"table"`
	Model         string              `yaml:"model"`
	Exclude       []string            `yaml:"exclude"`
	Rename        map[string]string   `yaml:"rename"`
	URL           string              `yaml:"url"`
	Relations     map[string]Relation `yaml:"relations"`
	Computed      map[string]Computed `yaml:"computed"`
	Choices       map[string]Choices  `yaml:"choices"`
	IgnoreChanges []string            `yaml:"ignore_changes"`
	ObjectType    string              `yaml:"object_type"`
	Snapshot      *Snapshot           `yaml:"snapshot"`
	// OnLookupError says what capture does when a relation or computed
	// field lookup fails: LookupErrorRetry (default) holds capture and
	// retries; LookupErrorOmit sends the change without the field.
	OnLookupError string `yaml:"on_lookup_error"`
	Line          int    `yaml:"-"`
	// ComputedOrder is the names of Computed in the order they are written
	// in the file: computed fields render in this order.
	ComputedOrder []string `yaml:"-"`
	Schema        string   `yaml:"-"` // schema part of Table
	Name          string   `yaml:"-"` // table part of Table
}

// The values of Model.OnLookupError.
const (
	LookupErrorRetry = "retry"
	LookupErrorOmit  = "omit"
)

// LookupErrorModes lists the values of on_lookup_error, the default first.
func LookupErrorModes() []string { return []string{LookupErrorRetry, LookupErrorOmit} }

// QualifiedTable is "schema.table" with the parts unquoted.
func (m Model) QualifiedTable() string { return m.Schema + "." + m.Name }

// Relation renders a foreign-key column as a nested object. It is keyed in
// Model.Relations by the foreign-key column, or by several columns joined
// with commas for a composite key ("site_id, vid").
type Relation struct {
	// Field is the key of the nested object in "data"; default: the column
	// name without its "_id" suffix. Required for a composite key.
	Field string `yaml:"field"`
	// Table is the related table, schema-qualified (bare name: public).
	Table string `yaml:"table"`
	// Columns are the related table's columns to render, each "name" or
	// "name AS key" (e.g. "name AS display"), or an SQL expression over the
	// related row, aliased r, with its key: "coalesce(r.label, '#' || r.id)
	// AS display", "0 AS site_count", "(SELECT ... WHERE m.id =
	// r.manufacturer_id) AS manufacturer". An expression's value renders as
	// to_json gives it (numbers, strings, nested json objects).
	Columns []string `yaml:"columns"`
	// URL adds "url" to the nested object; placeholders are columns of the
	// related table.
	URL string `yaml:"url"`
	// Key are the related table's columns the foreign key refers to, in the
	// order of the foreign-key columns; default: its primary key.
	Key  []string `yaml:"key"`
	Line int      `yaml:"-"`
	// FK are the foreign-key columns of the relation's key (FKColumns of
	// its Model.Relations key), and Schema and Name the parts of Table:
	// set by Parse.
	FK           []string `yaml:"-"`
	Schema, Name string   `yaml:"-"`
}

// FKColumns splits a Model.Relations key into its foreign-key columns.
func FKColumns(key string) []string {
	parts := strings.Split(key, ",")
	for i := range parts {
		parts[i] = strings.TrimSpace(parts[i])
	}
	return parts
}

// RelationColumn is one entry of Relation.Columns: the column (or SQL
// expression) and the key it renders under.
type RelationColumn struct {
	Column, As string
	// Expr is an SQL expression over the related row (aliased r) rendered
	// in place of a column; Column is empty then.
	Expr string
}

var (
	relColumnAsRE = regexp.MustCompile(`(?is)^(.*?\S)\s+as\s+([A-Za-z_][A-Za-z0-9_]*)$`)
	plainIdentRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]*$`)
)

// ParseRelationColumn parses "name", "name AS key" or "<sql expression> AS
// key".
func ParseRelationColumn(s string) (RelationColumn, error) {
	s = strings.TrimSpace(s)
	if plainIdentRE.MatchString(s) {
		return RelationColumn{Column: s, As: s}, nil
	}
	if m := relColumnAsRE.FindStringSubmatch(s); m != nil {
		left := strings.TrimSpace(m[1])
		if plainIdentRE.MatchString(left) {
			return RelationColumn{Column: left, As: m[2]}, nil
		}
		return RelationColumn{Expr: left, As: m[2]}, nil
	}
	return RelationColumn{}, fmt.Errorf("column %q: write a column name, \"name AS key\" to render it under another key, or \"<sql expression over r> AS key\"", s)
}

// Computed is an extra field computed by SQL with row columns as arguments.
type Computed struct {
	// SQL is a query returning one value (one column, at most one row);
	// $1..$n are the row's Args columns.
	SQL  string   `yaml:"sql"`
	Args []string `yaml:"args"`
	Line int      `yaml:"-"`
}

// Snapshot says how a model's rows render in the snapshots (prechange,
// postchange) of format netbox-v4, which follow NetBox's serialize_object:
// columns by name (a foreign key with a relation under the relation's
// field, as its raw value), raw choice values, no url, no relation or
// computed fields of "data". Without a snapshot section a snapshot has the
// columns "data" has (exclude and rename apply).
type Snapshot struct {
	// Exclude lists the columns left out of snapshots; it replaces the
	// model's exclude there (NetBox's snapshots have no "id", for one).
	Exclude []string `yaml:"exclude"`
	// Rename maps columns to snapshot keys, over the model's rename and
	// relation fields ({_path_id: _path}).
	Rename map[string]string `yaml:"rename"`
	// Computed are fields added to snapshots only (tags as names,
	// many-to-many ids), read like computed fields: once per change, after
	// the transaction commits, so a prechange snapshot shows them as they
	// are then.
	Computed map[string]Computed `yaml:"computed"`
	// ComputedOrder is the names of Computed in file order.
	ComputedOrder []string `yaml:"-"`
}

// Choices maps a column's stored values to display labels.
type Choices map[string]string

// Webhook is one receiver.
type Webhook struct {
	Name         string            `yaml:"name"`
	URL          string            `yaml:"url"`
	Models       []string          `yaml:"models"`
	Events       []string          `yaml:"events"`
	Secret       string            `yaml:"secret"`
	Secrets      []string          `yaml:"secrets"` // several secrets (key rotation); instead of secret
	HTTPMethod   string            `yaml:"http_method"`
	ContentType  string            `yaml:"content_type"`
	Headers      map[string]string `yaml:"headers"`
	Timeout      Duration          `yaml:"timeout"`
	Retry        Retry             `yaml:"retry"`
	Enabled      *bool             `yaml:"enabled"`
	BodyTemplate string            `yaml:"body_template"`
	Conditions   any               `yaml:"conditions"`
	Format       string            `yaml:"format"`
	ObjectType   string            `yaml:"object_type"`
	Signature    string            `yaml:"signature"`
	Coalesce     string            `yaml:"coalesce"`
	// Concurrency caps this webhook's requests in flight (default: all of
	// dispatch.concurrency when it is the only enabled webhook, else half,
	// so that a hung receiver leaves slots to the others).
	Concurrency int `yaml:"concurrency"`
	// RateLimit caps the requests per second, minute or hour sent to this
	// webhook by one dispatcher ("200/s", "600/m"); "" is no limit.
	RateLimit string `yaml:"rate_limit"`
	// TLS configures HTTPS to a receiver behind a private CA or one that
	// wants a client certificate (https URLs only).
	TLS WebhookTLS `yaml:"tls"`
	// Rate is RateLimit in requests per second (0: no limit).
	Rate float64 `yaml:"-"`
	Line int     `yaml:"-"`
	// Condition is Conditions compiled; nil matches every change.
	Condition *Condition `yaml:"-"`
}

// Tracing configures OpenTelemetry span export (off by default).
type Tracing struct {
	// OTLPEndpoint is the OTLP/HTTP collector URL (http://host:4318);
	// "" exports nothing.
	OTLPEndpoint string `yaml:"otlp_endpoint"`
}

// WebhookTLS is a webhook's tls settings. File paths are resolved against
// the configuration file's directory when loaded.
type WebhookTLS struct {
	CAFile             string `yaml:"ca_file"`
	CAOnly             bool   `yaml:"ca_only"`
	CertFile           string `yaml:"cert_file"`
	KeyFile            string `yaml:"key_file"`
	ServerName         string `yaml:"server_name"`
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"`
	MinVersion         string `yaml:"min_version"`
}

// IsSet reports whether any tls setting is given; a webhook without one
// shares the default HTTP client.
func (t WebhookTLS) IsSet() bool { return t != WebhookTLS{} }

// Options returns the settings for clienttls.New, without the receiver's
// host: Webhook.TLSOptions adds it.
func (t WebhookTLS) Options() clienttls.Options {
	return clienttls.Options{
		CAFile: t.CAFile, CAOnly: t.CAOnly, CertFile: t.CertFile, KeyFile: t.KeyFile,
		ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: t.MinVersion,
	}
}

// TLSOptions returns the webhook's tls settings for clienttls.New, with
// its URL's host, which the receiver's certificate must name unless
// tls.server_name is set.
func (w Webhook) TLSOptions() clienttls.Options {
	o := w.TLS.Options()
	if u, err := url.Parse(w.URL); err == nil {
		o.Host = u.Hostname()
	}
	return o
}

// SigningSecrets returns the webhook's secrets in order: secret, or the
// list in secrets. With signature netbox (and both) X-Hook-Signature uses
// the first; standard-webhooks signs with every one.
func (w Webhook) SigningSecrets() []string {
	if w.Secret != "" {
		return []string{w.Secret}
	}
	return w.Secrets
}

// SignSettings returns what the webhook's requests carry, for sign.New;
// version goes into the User-Agent as walhook/<version>.
func (w Webhook) SignSettings(version string) sign.Settings {
	return sign.Settings{
		ContentType: w.ContentType, UserAgent: "walhook/" + version, Headers: w.Headers,
		Scheme: w.Signature, Secrets: w.SigningSecrets(),
	}
}

// ObjectTypeFor returns the object_type of a model's changes for this
// webhook (format netbox-v4): the webhook's object_type, else the model's.
func (w Webhook) ObjectTypeFor(m *Model) string {
	if w.ObjectType != "" || m == nil {
		return w.ObjectType
	}
	return m.ObjectType
}

// IsEnabled reports whether the webhook is enabled (default true).
func (w Webhook) IsEnabled() bool { return w.Enabled == nil || *w.Enabled }

// Wants reports whether the webhook takes changes of model with event.
func (w Webhook) Wants(model, event string) bool {
	if !w.IsEnabled() {
		return false
	}
	if len(w.Models) > 0 && !slices.Contains(w.Models, model) {
		return false
	}
	return len(w.Events) == 0 || slices.Contains(w.Events, event)
}

// Retry is a webhook's retry policy.
type Retry struct {
	MaxAttempts     int      `yaml:"max_attempts"`
	InitialInterval Duration `yaml:"initial_interval"`
	MaxInterval     Duration `yaml:"max_interval"`
}

// Dispatch holds sender settings.
type Dispatch struct {
	Concurrency  int      `yaml:"concurrency"`
	PollInterval Duration `yaml:"poll_interval"`
	Retention    Duration `yaml:"retention"`
	// FailedRetention is how long failed rows are kept (default 30 days).
	FailedRetention Duration `yaml:"failed_retention"`
}

// HTTP holds the status/metrics server settings.
type HTTP struct {
	Listen *string `yaml:"listen"`
	Token  string  `yaml:"token"`
}

// ListenAddr is the listen address with its default applied ("" disables).
func (h HTTP) ListenAddr() string {
	if h.Listen == nil {
		return DefaultListen
	}
	return *h.Listen
}

// Log holds logging settings.
type Log struct {
	Level  string `yaml:"level"`
	Format string `yaml:"format"`
}

// Log formats.
const (
	LogFormatJSON    = "json"    // one JSON object a line (the default)
	LogFormatConsole = "console" // coloured text for a terminal
)

// LogFormats lists the log formats, the default first.
func LogFormats() []string { return []string{LogFormatJSON, LogFormatConsole} }

// LogLevels lists the log levels, most verbose first.
func LogLevels() []string { return []string{"debug", "info", "warn", "error"} }

// Duration is a time.Duration written like "10s", "5m", "1h" or "7d".
type Duration time.Duration

// UnmarshalYAML parses durations such as "10s" or "7d".
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseDuration(n.Value)
	if err != nil {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// ParseRate reads a rate limit such as "200/s", "600/m" or "1000/h" and
// returns it in requests per second.
func ParseRate(s string) (float64, error) {
	n, unit, ok := strings.Cut(strings.ReplaceAll(s, " ", ""), "/")
	per := map[string]float64{"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}[unit]
	v, err := strconv.ParseFloat(n, 64)
	if !ok || per == 0 || err != nil || !(v > 0) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("rate_limit %q: write a positive number of requests per second, minute or hour, e.g. 200/s, 600/m, 1000/h", s)
	}
	return v / per, nil
}

// ParseDuration parses Go durations plus a whole-day suffix "d".
func ParseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, ok := strings.CutSuffix(s, "d"); ok && n != "" && !strings.ContainsAny(n, "hmsuµn") {
		d, err := time.ParseDuration(n + "h")
		if err != nil || d > math.MaxInt64/24 || d < math.MinInt64/24 {
			return 0, fmt.Errorf("invalid duration %q (use e.g. 500ms, 10s, 5m, 1h, 7d)", s)
		}
		return d * 24, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q (use e.g. 500ms, 10s, 5m, 1h, 7d)", s)
	}
	return d, nil
}

// Payload formats (cdc renders them; config is below cdc, so it holds the
// names).
const (
	FormatNetbox   = "netbox"    // NetBox v3 webhook body (the default)
	FormatNetboxV4 = "netbox-v4" // NetBox v4 body with serialize_object snapshots
)

// Formats lists the payload formats, the default first.
func Formats() []string { return []string{FormatNetbox, FormatNetboxV4} }

// Coalescing modes of a webhook.
const (
	CoalesceNone        = "none"        // one delivery per change (the default)
	CoalesceTransaction = "transaction" // one delivery per object and source transaction
)

// CoalesceModes lists the coalescing modes, the default first.
func CoalesceModes() []string { return []string{CoalesceNone, CoalesceTransaction} }

// HTTPMethods lists the methods a webhook may send with.
func HTTPMethods() []string { return []string{"POST", "PUT", "PATCH"} }

// Events are the three change events.
var Events = []string{"created", "updated", "deleted"}

// identRE matches names walhook accepts for slots and publications: they
// reach SQL unquoted in START_REPLICATION, so they must be plain identifiers.
var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// ValidIdentifier reports whether s is a lower-case SQL identifier usable
// unquoted (replication slot names allow only [a-z0-9_]).
func ValidIdentifier(s string) bool { return identRE.MatchString(s) }

// ModelByName returns the model config named name.
func (c *Config) ModelByName(name string) (*Model, bool) {
	for i := range c.Models {
		if c.Models[i].Model == name {
			return &c.Models[i], true
		}
	}
	return nil, false
}

// WebhookByName returns the webhook named name.
func (c *Config) WebhookByName(name string) (*Webhook, bool) {
	for i := range c.Webhooks {
		if c.Webhooks[i].Name == name {
			return &c.Webhooks[i], true
		}
	}
	return nil, false
}

// URLTarget is a webhook URL as logs and the status page show it: scheme
// and host only, with "/…" when a path or query was cut (a Slack-style URL
// carries its secret in the path).
func URLTarget(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(unparseable URL)"
	}
	t := u.Scheme + "://" + u.Host
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		t += "/…"
	}
	return t
}

// RedactURL returns u with any password replaced, for logs and errors.
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparseable URL)"
	}
	return p.Redacted()
}
