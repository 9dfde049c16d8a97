package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/walhook/walhook/cdc"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/preflight"
)

// checkReport is what `walhook check --json` prints.
type checkReport struct {
	OK     bool              `json:"ok"`
	Config string            `json:"config"`
	Checks []preflight.Check `json:"checks"`
}

// cmdCheck runs the preflight checks and prints one line per check. It
// exits 2 when the configuration itself is invalid, 1 when any check
// failed, 0 otherwise (warnings included).
func cmdCheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("check", stderr)
	asJSON := fs.Bool("json", false, "print the checks as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	rep := checkReport{Config: *path}
	cfg, err := config.Load(*path)
	if err != nil {
		var ce *config.Error
		switch {
		case errors.As(err, &ce):
			for _, p := range ce.Problems {
				rep.Checks = append(rep.Checks, preflight.Check{Name: "config", Status: preflight.Fail, Detail: p.String()})
			}
		case errors.Is(err, os.ErrNotExist):
			rep.Checks = append(rep.Checks, preflight.Check{Name: "config", Status: preflight.Fail,
				Detail: fmt.Sprintf("configuration file %s not found", *path),
				Fix:    "-- pass -c PATH or set WALHOOK_CONFIG; start from config.example.yaml"})
		default:
			rep.Checks = append(rep.Checks, preflight.Check{Name: "config", Status: preflight.Fail, Detail: err.Error()})
		}
		if err := printChecks(stdout, rep, *asJSON); err != nil {
			return err
		}
		return &exitError{code: 2, err: fmt.Errorf("invalid configuration %s: fix the config lines above", *path)}
	}
	rep.Checks = append(rep.Checks, preflight.Check{Name: "config", Status: preflight.OK,
		Detail: fmt.Sprintf("%s: %d %s, %d %s", *path, len(cfg.Models), plural(len(cfg.Models), "model", "models"), len(cfg.Webhooks), plural(len(cfg.Webhooks), "webhook", "webhooks"))})
	dbChecks, badDSN := databaseChecks(ctx, cfg)
	rep.Checks = append(rep.Checks, dbChecks...)
	rep.Checks = append(rep.Checks, webhookChecks(cfg)...)
	rep.Checks = append(rep.Checks, tlsChecks(ctx, cfg)...)

	if err := printChecks(stdout, rep, *asJSON); err != nil {
		return err
	}
	fails := 0
	for _, c := range rep.Checks {
		if c.Status == preflight.Fail {
			fails++
		}
	}
	if badDSN {
		return &exitError{code: 2, err: errors.New("invalid DSN in the configuration")}
	}
	if fails > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d %s failed", fails, plural(fails, "check", "checks"))}
	}
	return nil
}

// databaseChecks connects to the source (and outbox) database and runs
// preflight.Preflight. badDSN reports a DSN that does not parse (a configuration
// error).
func databaseChecks(ctx context.Context, cfg *config.Config) (checks []preflight.Check, badDSN bool) {
	connect := func(dsn, what string, params map[string]string) (*pgxpool.Pool, preflight.Check) {
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		pool, err := openPool(cctx, dsn, what, params)
		if err != nil {
			msg := strings.TrimPrefix(err.Error(), what+": ")
			var ee *exitError
			if errors.As(err, &ee) && ee.code == 2 {
				badDSN = true
			}
			if errors.Is(err, context.DeadlineExceeded) {
				msg = "no answer within 15s: check the host and port in the DSN and any firewall in between"
			}
			return nil, preflight.Check{Name: what, Status: preflight.Fail, Detail: msg}
		}
		cc := pool.Config().ConnConfig
		return pool, preflight.Check{Name: what, Status: preflight.OK, Detail: fmt.Sprintf("connected to %s:%d, database %s, as %s", cc.Host, cc.Port, cc.Database, cc.User)}
	}
	source, c := connect(cfg.Database.DSN, "source database", cdc.SessionParams)
	checks = append(checks, c)
	if source != nil {
		defer source.Close()
	}
	outbox := source
	if cfg.Database.SeparateOutbox() {
		outbox, c = connect(cfg.Database.OutboxConn(), "outbox database", nil)
		checks = append(checks, c)
		if outbox != nil {
			defer outbox.Close()
		}
	}
	if source == nil {
		return checks, badDSN
	}
	pctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return append(checks, preflight.Preflight(pctx, cfg, source, outbox)...), badDSN
}

// webhookChecks checks each webhook's URL.
func webhookChecks(cfg *config.Config) []preflight.Check {
	var checks []preflight.Check
	for _, w := range cfg.Webhooks {
		name := "webhook " + w.Name
		u, err := url.Parse(w.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			checks = append(checks, preflight.Check{Name: name, Status: preflight.Fail,
				Detail: fmt.Sprintf("url %q is not an http(s) URL", config.RedactURL(w.URL)),
				Fix:    fmt.Sprintf("-- fix webhooks url at %s:%d", cfg.File, w.Line)})
			continue
		}
		var parts []string
		if !w.IsEnabled() {
			parts = append(parts, "disabled")
		}
		parts = append(parts, w.HTTPMethod+" "+config.RedactURL(w.URL))
		if len(w.SigningSecrets()) > 0 {
			parts = append(parts, "signed ("+w.Signature+")")
		} else {
			parts = append(parts, "unsigned (no secret)")
		}
		if len(w.Models) > 0 {
			parts = append(parts, "models "+strings.Join(w.Models, ", "))
		}
		if len(w.Events) > 0 {
			parts = append(parts, "events "+strings.Join(w.Events, ", "))
		}
		checks = append(checks, preflight.Check{Name: name, Status: preflight.OK, Detail: strings.Join(parts, "; ")})
	}
	return checks
}

func printChecks(w io.Writer, rep checkReport, asJSON bool) error {
	rep.OK = true
	for _, c := range rep.Checks {
		if c.Status == preflight.Fail {
			rep.OK = false
		}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	width := 0
	for _, c := range rep.Checks {
		width = max(width, min(len(c.Name), 40))
	}
	var fails, warns int
	for _, c := range rep.Checks {
		fmt.Fprintf(w, "%-4s  %-*s  %s\n", c.Status, width, c.Name, c.Detail)
		if c.Fix != "" {
			label := "fix:"
			if c.Status == preflight.OK {
				label = "tip:"
			}
			for i, line := range strings.Split(c.Fix, "\n") {
				if i > 0 {
					label = strings.Repeat(" ", len(label))
				}
				fmt.Fprintf(w, "      %s %s\n", label, line)
			}
		}
		switch c.Status {
		case preflight.Fail:
			fails++
		case preflight.Warn:
			warns++
		}
	}
	switch {
	case fails > 0:
		fmt.Fprintf(w, "\n%d %s failed, %d %s: fix the FAIL lines, then run walhook check again.\n",
			fails, plural(fails, "check", "checks"), warns, plural(warns, "warning", "warnings"))
	case warns > 0:
		fmt.Fprintf(w, "\nReady to run (%d %s).\n", warns, plural(warns, "warning", "warnings"))
	default:
		fmt.Fprintln(w, "\nReady to run.")
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// connectHint explains network and TLS failures to connect to addr in one
// line that says what to do; ok is false for other errors.
func connectHint(addr string, err error) (hint string, ok bool) {
	var dnsErr *net.DNSError
	var certErr *x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var netErr net.Error
	msg := err.Error()
	switch {
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("cannot resolve host %q: check the host in the DSN", dnsErr.Name), true
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("connection refused at %s: is PostgreSQL running and listening there?", addr), true
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return fmt.Sprintf("no route to %s: check the host in the DSN and the network", addr), true
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Sprintf("no answer from %s: check the host and port in the DSN and any firewall in between", addr), true
	case strings.Contains(msg, "server refused TLS connection"):
		return fmt.Sprintf("the server at %s does not accept TLS: use sslmode=prefer or sslmode=disable in the DSN, or enable ssl on the server", addr), true
	case errors.As(err, &certErr), errors.As(err, &hostErr), strings.Contains(msg, "x509: "):
		return fmt.Sprintf("the TLS certificate of %s is not trusted (%s): set sslrootcert in the DSN to its CA, or use sslmode=require to skip verification", addr, lastLine(msg)), true
	}
	return "", false
}

// oneLine joins a multi-line error message into one line.
func oneLine(s string) string {
	fields := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' })
	for i := range fields {
		fields[i] = strings.TrimSpace(fields[i])
	}
	return strings.Join(fields, " ")
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, ": x509: "); i >= 0 {
		return s[i+2:]
	}
	return s
}

func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }
