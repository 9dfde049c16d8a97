package main

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/clienttls/pkitest"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/preflight"
)

// TestTLSCheck runs check's TLS handshake against a receiver behind a
// private CA that requires a client certificate: each wrong setting is a
// FAIL whose fix names the setting.
func TestTLSCheck(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	serverCA, clientCA, stranger := pkitest.NewCA(t, "receiver CA"), pkitest.NewCA(t, "client CA"), pkitest.NewCA(t, "stranger CA")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		t.Error("check sent a request")
	}))
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{serverCA.Server("hooks.internal").TLS},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCA.Pool(),
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	good, bad := clientCA.Client("walhook"), stranger.Client("walhook")
	ca := pkitest.Write(t, dir, "ca.pem", serverCA.PEM)
	cert, key := pkitest.Write(t, dir, "c.pem", good.CertPEM), pkitest.Write(t, dir, "k.pem", good.KeyPEM)
	badCert, badKey := pkitest.Write(t, dir, "bc.pem", bad.CertPEM), pkitest.Write(t, dir, "bk.pem", bad.KeyPEM)

	tests := []struct {
		name   string
		tls    config.WebhookTLS
		want   preflight.Status
		detail string
		fix    string
	}{
		{name: "right", tls: config.WebhookTLS{CAFile: ca, CertFile: cert, KeyFile: key}, want: preflight.OK, detail: "client certificate accepted"},
		{name: "no ca_file", tls: config.WebhookTLS{CertFile: cert, KeyFile: key}, want: preflight.Fail, detail: "unknown authority", fix: "set tls.ca_file"},
		{name: "wrong server_name", tls: config.WebhookTLS{CAFile: ca, CertFile: cert, KeyFile: key, ServerName: "billing.internal"}, want: preflight.Fail, fix: "the certificate is for hooks.internal, 127.0.0.1"},
		{name: "no client cert", tls: config.WebhookTLS{CAFile: ca}, want: preflight.Fail, fix: "set tls.cert_file and tls.key_file"},
		{name: "untrusted client cert", tls: config.WebhookTLS{CAFile: ca, CertFile: badCert, KeyFile: badKey}, want: preflight.Fail, fix: "rejected the client certificate"},
	}
	t.Run("unreachable is a warning", func(t *testing.T) {
		w := config.Webhook{Name: "inventory", URL: "https://127.0.0.1:1/netbox", Line: 12}
		if got := tlsCheck(context.Background(), "walhook.yaml", w, 0, time.Now); got.Status != preflight.Warn || !strings.Contains(got.Detail, "cannot reach 127.0.0.1:1") {
			t.Errorf("check = %+v", got)
		}
	})
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := config.Webhook{Name: "inventory", URL: srv.URL, TLS: tc.tls, Line: 12}
			got := tlsCheck(context.Background(), "walhook.yaml", w, i, time.Now)
			if got.Status != tc.want || !strings.Contains(got.Detail, tc.detail) || !strings.Contains(got.Fix, tc.fix) {
				t.Errorf("check = %+v, want %s with detail %q and fix %q", got, tc.want, tc.detail, tc.fix)
			}
			if tc.want == preflight.Fail && !strings.Contains(got.Fix, "walhook.yaml:12") && !strings.Contains(tc.name, "client cert") {
				t.Errorf("fix %q does not name the config line", got.Fix)
			}
		})
	}
}

// An https URL with an IP address, a ca_file and a certificate of that CA
// that does not name the IP address: check's handshake fails (without SNI
// the name must still be checked against the IP address), and passes with
// server_name set to the name the certificate has.
func TestTLSCheckIPAddressURL(t *testing.T) {
	t.Parallel()
	ca := pkitest.NewCA(t, "receiver CA")
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.ServerWithoutIP("hooks.internal").TLS}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := pkitest.Write(t, t.TempDir(), "ca.pem", ca.PEM)
	w := config.Webhook{Name: "inventory", URL: srv.URL, TLS: config.WebhookTLS{CAFile: caFile, CAOnly: true}, Line: 12}
	if got := tlsCheck(context.Background(), "walhook.yaml", w, 0, time.Now); got.Status != preflight.Fail ||
		!strings.Contains(got.Detail+got.Fix, "hooks.internal") {
		t.Errorf("check with a certificate that does not name %s = %+v, want a FAIL naming the certificate's name", srv.URL, got)
	}
	w.TLS.ServerName = "hooks.internal"
	if got := tlsCheck(context.Background(), "walhook.yaml", w, 0, time.Now); got.Status != preflight.OK {
		t.Errorf("check with server_name hooks.internal = %+v, want OK", got)
	}
}

// TestBadCertificateFileExits2 checks that run and check both refuse a
// configuration naming a missing certificate file, with its file:line,
// as a configuration error (exit 2), before touching any database.
func TestBadCertificateFileExits2(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := pkitest.Write(t, dir, "walhook.yaml", []byte(`database:
  dsn: postgres://walhook@127.0.0.1:1/app
models:
  - table: dcim_site
webhooks:
  - name: inventory
    url: https://hooks.internal/netbox
    tls:
      ca_file: missing-ca.pem
`))
	for _, cmd := range []string{"check", "run"} {
		t.Run(cmd, func(t *testing.T) {
			var out, errOut strings.Builder
			var err error
			if cmd == "check" {
				err = cmdCheck(context.Background(), []string{"-c", path}, &out, &errOut)
			} else {
				err = cmdRun(context.Background(), []string{"-c", path}, &errOut)
			}
			var ee *exitError
			if !errors.As(err, &ee) || ee.code != 2 {
				t.Fatalf("%s: error %v, want exit 2", cmd, err)
			}
			msg := out.String() + err.Error()
			want := path + `:9: webhook "inventory": tls.ca_file ` + filepath.Join(dir, "missing-ca.pem") + ": no such file or directory"
			if !strings.Contains(msg, want) {
				t.Errorf("%s output lacks %q:\n%s", cmd, want, msg)
			}
		})
	}
}
