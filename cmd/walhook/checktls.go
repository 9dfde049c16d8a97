package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/walhook/walhook/internal/clienttls"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/preflight"
)

// Bounds of the TLS check.
const (
	// handshakeTimeout bounds the connection and handshake to one receiver.
	handshakeTimeout = 10 * time.Second
	// alertWait is how long to wait, after a TLS 1.3 handshake that asked
	// for a client certificate, for the receiver to reject it (TLS 1.3
	// sends that alert after the client's handshake has finished).
	alertWait = time.Second
	// expiryWarning: a receiver certificate closer to expiry is a warning.
	expiryWarning = 14 * 24 * time.Hour
)

// tlsChecks does one TLS handshake (and sends no request) with each
// enabled HTTPS receiver, with the webhook's tls settings, all at once.
func tlsChecks(ctx context.Context, cfg *config.Config) []preflight.Check {
	var idx []int
	for i, w := range cfg.Webhooks {
		if u, err := url.Parse(w.URL); err == nil && u.Scheme == "https" && u.Host != "" && w.IsEnabled() {
			idx = append(idx, i)
		}
	}
	checks := make([]preflight.Check, len(idx))
	var wg sync.WaitGroup
	for k, i := range idx {
		wg.Go(func() {
			w := cfg.Webhooks[i]
			c := tlsCheck(ctx, cfg.File, w, i, time.Now)
			if c.Status == preflight.OK && w.TLS.InsecureSkipVerify {
				c.Status = preflight.Warn
				c.Detail += "; the certificate is NOT checked (tls.insecure_skip_verify)"
				c.Fix = fmt.Sprintf("-- set tls.ca_file to the receiver's CA and remove tls.insecure_skip_verify (webhooks[%d].tls at %s:%d)", i, cfg.File, w.Line)
			}
			checks[k] = c
		})
	}
	wg.Wait()
	return checks
}

// tlsCheck connects to w's receiver and reports the handshake, the
// certificate it presented and, on failure, the setting that fixes it.
func tlsCheck(ctx context.Context, file string, w config.Webhook, i int, now func() time.Time) preflight.Check {
	name := "webhook " + w.Name + " tls"
	at := fmt.Sprintf("webhooks[%d].tls at %s:%d", i, file, w.Line)
	fail := func(detail, fix string) preflight.Check {
		return preflight.Check{Name: name, Status: preflight.Fail, Detail: detail, Fix: fix}
	}
	u, _ := url.Parse(w.URL)
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	tc := &tls.Config{}
	if w.TLS.IsSet() {
		c, err := clienttls.New(w.TLSOptions())
		if err != nil {
			return fail(err.Error(), "-- fix "+at)
		}
		tc = c.TLS()
	}
	if tc.ServerName == "" {
		tc.ServerName = u.Hostname()
	}
	// Note whether the receiver asks for a client certificate.
	var asked bool
	getCert := tc.GetClientCertificate
	tc.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		asked = true
		if getCert == nil {
			return &tls.Certificate{}, nil
		}
		return getCert(cri)
	}
	hasCert := w.TLS.CertFile != ""
	via := ""
	if p, _ := httpsProxy(u); p != "" {
		via = " (dialled directly: requests go through the proxy in HTTPS_PROXY)"
	}

	dctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: tc}
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err == nil {
		tconn := conn.(*tls.Conn)
		defer tconn.Close()
		if asked && tconn.ConnectionState().Version == tls.VersionTLS13 {
			_ = tconn.SetReadDeadline(time.Now().Add(alertWait))
			var b [1]byte
			_, rerr := tconn.Read(b[:])
			var ne net.Error
			if rerr != nil && !(errors.As(rerr, &ne) && ne.Timeout()) && !errors.Is(rerr, os.ErrDeadlineExceeded) {
				err = rerr
			}
		}
		if err == nil {
			return handshakeOK(name, addr+via, tconn.ConnectionState(), asked, hasCert, now())
		}
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "dial" {
		// Not a certificate problem: the receiver may just not be
		// reachable from where check runs.
		return preflight.Check{Name: name, Status: preflight.Warn,
			Detail: fmt.Sprintf("cannot reach %s%s, so its certificate was not checked: %v", addr, via, err),
			Fix:    "-- run walhook check where walhook runs, or make sure the receiver is up"}
	}
	detail := fmt.Sprintf("TLS handshake with %s failed%s: %v", addr, via, err)
	var (
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		alert    tls.AlertError
	)
	switch {
	case errors.As(err, &unknown):
		return fail(detail, "-- set tls.ca_file to the PEM bundle of the CA that issued the receiver's certificate ("+at+")")
	case errors.As(err, &hostname):
		return fail(detail, fmt.Sprintf("-- the certificate is for %s: use that host in the url, or set tls.server_name (%s)",
			strings.Join(certNames(hostname.Certificate), ", "), at))
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return fail(detail, "-- the receiver's certificate has expired: renew it on the receiver")
	case asked && !hasCert:
		return fail(detail, "-- the receiver asks for a client certificate: set tls.cert_file and tls.key_file ("+at+")")
	case asked && (errors.As(err, &alert) || strings.Contains(err.Error(), "remote error")):
		return fail(detail, "-- the receiver rejected the client certificate: use one issued by a CA the receiver trusts, and not expired (tls.cert_file, "+at+")")
	case strings.Contains(err.Error(), "protocol version"):
		return fail(detail, "-- the receiver and tls.min_version share no TLS version: lower tls.min_version only if the receiver cannot be upgraded ("+at+")")
	}
	return fail(detail, "-- check that the receiver is up and reachable from here and speaks HTTPS on "+addr)
}

func handshakeOK(name, addr string, cs tls.ConnectionState, asked, hasCert bool, now time.Time) preflight.Check {
	parts := []string{fmt.Sprintf("handshake with %s: %s", addr, tls.VersionName(cs.Version))}
	st := preflight.OK
	fix := ""
	if len(cs.PeerCertificates) > 0 {
		leaf := cs.PeerCertificates[0]
		left := leaf.NotAfter.Sub(now)
		parts = append(parts, fmt.Sprintf("certificate %s issued by %s, expires %s (in %d days)",
			leaf.Subject.CommonName, leaf.Issuer.CommonName, leaf.NotAfter.UTC().Format("2006-01-02"), int(left.Hours()/24)))
		if left < expiryWarning {
			st, fix = preflight.Warn, "-- renew the receiver's certificate before it expires: every attempt fails after that"
		}
	}
	switch {
	case asked && hasCert:
		parts = append(parts, "client certificate accepted")
	case asked:
		parts = append(parts, "the receiver asked for a client certificate (none configured; it accepted the connection without)")
	}
	return preflight.Check{Name: name, Status: st, Detail: strings.Join(parts, "; "), Fix: fix}
}

// certNames are the names a certificate is valid for.
func certNames(c *x509.Certificate) []string {
	if c == nil {
		return nil
	}
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		names = append(names, c.Subject.CommonName)
	}
	return names
}

// httpsProxy is the proxy the dispatcher's requests to u go through, if
// any (HTTPS_PROXY / NO_PROXY).
func httpsProxy(u *url.URL) (string, error) {
	p, err := httpProxyFromEnvironment(u)
	if err != nil || p == nil {
		return "", err
	}
	return p.Host, nil
}

// httpProxyFromEnvironment is http.ProxyFromEnvironment for a URL.
func httpProxyFromEnvironment(u *url.URL) (*url.URL, error) {
	return http.ProxyFromEnvironment(&http.Request{URL: u})
}
