package dispatch_test

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/clienttls/pkitest"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/tracecontext"
)

// mtlsReceiver is an HTTPS receiver with a certificate from its own CA that
// requires a client certificate from clientCA. It records the client
// certificate's common name and the traceparent of every request, and
// closes each connection so that every request does a new handshake.
type mtlsReceiver struct {
	srv      *httptest.Server
	serverCA *pkitest.CA
	mu       sync.Mutex
	cns      []string
	parents  []string
}

func newMTLSReceiver(t *testing.T, clientCA *pkitest.CA, maxVersion uint16) *mtlsReceiver {
	t.Helper()
	r := &mtlsReceiver{serverCA: pkitest.NewCA(t, "receiver CA")}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.cns = append(r.cns, req.TLS.PeerCertificates[0].Subject.CommonName)
		r.parents = append(r.parents, req.Header.Get("Traceparent"))
		r.mu.Unlock()
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusNoContent)
	}))
	r.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{r.serverCA.Server("hooks.internal").TLS},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCA.Pool(),
		MaxVersion:   maxVersion,
	}
	r.srv.StartTLS()
	t.Cleanup(r.srv.Close)
	return r
}

func (r *mtlsReceiver) seen() (cns, parents []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.cns...), append([]string(nil), r.parents...)
}

// TestTLSSettings sends to a receiver behind a private CA that requires a
// client certificate: the right settings deliver; each wrong one fails the
// attempt with an error that says what is wrong and holds no key material.
func TestTLSSettings(t *testing.T) {
	t.Parallel()
	e := setup(t)
	dir := t.TempDir()
	clientCA := pkitest.NewCA(t, "client CA")
	rec := newMTLSReceiver(t, clientCA, 0)
	old := newMTLSReceiver(t, clientCA, tls.VersionTLS12)

	good := clientCA.Client("walhook-good")
	stranger := pkitest.NewCA(t, "stranger CA")
	bad := stranger.Client("walhook-untrusted")
	serverCA := pkitest.Write(t, dir, "receiver-ca.pem", rec.serverCA.PEM)
	oldCA := pkitest.Write(t, dir, "old-ca.pem", old.serverCA.PEM)
	wrongCA := pkitest.Write(t, dir, "stranger-ca.pem", stranger.PEM)
	cert := pkitest.Write(t, dir, "client.pem", good.CertPEM)
	key := pkitest.Write(t, dir, "client-key.pem", good.KeyPEM)
	badCert := pkitest.Write(t, dir, "untrusted.pem", bad.CertPEM)
	badKey := pkitest.Write(t, dir, "untrusted-key.pem", bad.KeyPEM)

	tests := []struct {
		name     string
		url      string
		tls      config.WebhookTLS
		wantErr  string // "" = delivered
		wantCN   string
		wantNote string
	}{
		{name: "right", tls: config.WebhookTLS{CAFile: serverCA, CAOnly: true, CertFile: cert, KeyFile: key}, wantCN: "walhook-good"},
		{name: "ca-added-to-system-roots", tls: config.WebhookTLS{CAFile: serverCA, CertFile: cert, KeyFile: key}, wantCN: "walhook-good"},
		{name: "server-name", tls: config.WebhookTLS{CAFile: serverCA, CertFile: cert, KeyFile: key, ServerName: "hooks.internal"}, wantCN: "walhook-good"},
		{name: "insecure", tls: config.WebhookTLS{InsecureSkipVerify: true, CertFile: cert, KeyFile: key}, wantCN: "walhook-good"},
		{name: "no-ca-file", tls: config.WebhookTLS{CertFile: cert, KeyFile: key}, wantErr: "certificate signed by unknown authority"},
		{name: "wrong-ca-file", tls: config.WebhookTLS{CAFile: wrongCA, CAOnly: true, CertFile: cert, KeyFile: key}, wantErr: "not trusted with ca_file " + wrongCA},
		{name: "wrong-server-name", tls: config.WebhookTLS{CAFile: serverCA, CertFile: cert, KeyFile: key, ServerName: "billing.internal"}, wantErr: "billing.internal"},
		{name: "no-client-cert", tls: config.WebhookTLS{CAFile: serverCA}, wantErr: "certificate required"},
		{name: "untrusted-client-cert", tls: config.WebhookTLS{CAFile: serverCA, CertFile: badCert, KeyFile: badKey}, wantErr: "unknown certificate authority"},
		{name: "min-version-above-receiver", url: old.srv.URL, tls: config.WebhookTLS{CAFile: oldCA, CertFile: cert, KeyFile: key, MinVersion: "1.3"}, wantErr: "protocol version"},
	}
	var hooks []config.Webhook
	ids := map[string]int64{}
	for _, tc := range tests {
		u := tc.url
		if u == "" {
			u = rec.srv.URL
		}
		hooks = append(hooks, hookConfig(tc.name, u+"/"+tc.name, func(w *config.Webhook) {
			w.TLS = tc.tls
			w.Retry.MaxAttempts = 1
		}))
		ids[tc.name] = e.insertOne(tc.name, `{"id":1}`)
	}
	e.start(e.pool, testConfig(8, hooks...))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.wantErr == "" {
				r := e.waitState(ids[tc.name], "delivered", 20*time.Second)
				if r.LastError != nil {
					t.Errorf("delivered with error %q", *r.LastError)
				}
				return
			}
			r := e.waitState(ids[tc.name], "failed", 20*time.Second)
			msg := ""
			if r.LastError != nil {
				msg = *r.LastError
			}
			if !strings.Contains(msg, tc.wantErr) {
				t.Errorf("last_error = %q, want it to contain %q", msg, tc.wantErr)
			}
			for _, secret := range []string{"PRIVATE KEY", string(good.KeyPEM[40:80]), string(bad.KeyPEM[40:80])} {
				if strings.Contains(msg, secret) {
					t.Errorf("last_error %q holds key material", msg)
				}
			}
		})
	}
	cns, _ := rec.seen()
	for _, cn := range cns {
		if cn != "walhook-good" {
			t.Errorf("receiver accepted a request with client certificate %q", cn)
		}
	}
}

// TestTLSFilesReloaded replaces the CA bundle and then the client
// certificate on disk while walhook runs: each change is used from the
// next handshake on, without a restart.
func TestTLSFilesReloaded(t *testing.T) {
	t.Parallel()
	e := setup(t)
	dir := t.TempDir()
	clientCA := pkitest.NewCA(t, "client CA")
	rec := newMTLSReceiver(t, clientCA, 0)
	stranger := pkitest.NewCA(t, "stranger CA")
	old := stranger.Client("walhook-expiring")
	caFile := pkitest.Write(t, dir, "ca.pem", stranger.PEM)
	certFile := pkitest.Write(t, dir, "client.pem", old.CertPEM)
	keyFile := pkitest.Write(t, dir, "client-key.pem", old.KeyPEM)

	w := hookConfig("rotating", rec.srv.URL, func(w *config.Webhook) {
		w.TLS = config.WebhookTLS{CAFile: caFile, CAOnly: true, CertFile: certFile, KeyFile: keyFile}
		w.Retry.MaxAttempts = 1
	})
	id := e.insertOne("rotating", `{"id":1}`)
	e.start(e.pool, testConfig(2, w))
	retry := func(want string) string {
		t.Helper()
		r := e.waitState(id, want, 20*time.Second)
		if r.LastError == nil {
			return ""
		}
		return *r.LastError
	}
	if msg := retry("failed"); !strings.Contains(msg, "not trusted with ca_file") {
		t.Fatalf("with the wrong CA: last_error = %q", msg)
	}

	replace := func(path string, data []byte) {
		t.Helper()
		tmp := path + ".new"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil { // as cert-manager and certbot do
			t.Fatal(err)
		}
	}
	replace(caFile, rec.serverCA.PEM)
	e.exec(`UPDATE walhook.deliveries SET state = 'pending', next_attempt_at = now() WHERE id = $1`, id)
	if msg := retry("failed"); !strings.Contains(msg, "unknown certificate authority") {
		t.Fatalf("with the new CA and the old client certificate: last_error = %q", msg)
	}

	fresh := clientCA.Client("walhook-renewed")
	replace(certFile, fresh.CertPEM)
	replace(keyFile, fresh.KeyPEM)
	e.exec(`UPDATE walhook.deliveries SET state = 'pending', next_attempt_at = now() WHERE id = $1`, id)
	retry("delivered")
	if cns, _ := rec.seen(); len(cns) != 1 || cns[0] != "walhook-renewed" {
		t.Errorf("receiver saw client certificates %q, want [walhook-renewed]", cns)
	}
}

// TestTraceparent checks that every request carries a valid W3C
// traceparent: the trace id is the delivery's and is the same for every
// attempt, the span id differs per attempt.
func TestTraceparent(t *testing.T) {
	t.Parallel()
	e := setup(t)
	var mu sync.Mutex
	var parents []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		parents = append(parents, r.Header.Get("Traceparent"))
		n := len(parents)
		mu.Unlock()
		if n < 3 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	id := e.insertOne("traced", `{"id":1}`)
	e.start(e.pool, testConfig(2, hookConfig("traced", srv.URL)))
	e.waitState(id, "delivered", 20*time.Second)

	mu.Lock()
	defer mu.Unlock()
	if len(parents) != 3 {
		t.Fatalf("%d requests, want 3", len(parents))
	}
	want := tracecontext.ForDelivery("traced", id)
	spans := map[tracecontext.SpanID]bool{}
	for i, p := range parents {
		trace, span, flags, err := tracecontext.Parse(p)
		if err != nil || !strings.HasPrefix(p, "00-") || len(p) != 55 {
			t.Fatalf("attempt %d: traceparent %q: %v", i+1, p, err)
		}
		if trace != want {
			t.Errorf("attempt %d: trace id %s, want the delivery's %s", i+1, trace, want)
		}
		if flags&tracecontext.FlagSampled == 0 {
			t.Errorf("attempt %d: trace-flags %02x: not sampled", i+1, flags)
		}
		if spans[span] {
			t.Errorf("attempt %d: span id %s reused", i+1, span)
		}
		spans[span] = true
	}
}

// An https URL with an IP address and a ca_file: the
// certificate's names used to be checked against the SNI name, which is
// empty for an IP address, so any certificate of the trusted CA passed.
// It must name the URL's host, or tls.server_name when that is set.
func TestTLSChecksTheURLsIPAddress(t *testing.T) {
	t.Parallel()
	e := setup(t)
	ca := pkitest.NewCA(t, "receiver CA")
	var got atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	// Trusted CA, but the certificate names hooks.internal, not 127.0.0.1.
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.ServerWithoutIP("hooks.internal").TLS}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	if !strings.HasPrefix(srv.URL, "https://127.0.0.1:") {
		t.Fatalf("receiver URL %s has no IP address", srv.URL)
	}
	caFile := pkitest.Write(t, t.TempDir(), "ca.pem", ca.PEM)
	wrong := hookConfig("ip", srv.URL, func(w *config.Webhook) {
		w.TLS = config.WebhookTLS{CAFile: caFile, CAOnly: true}
		w.Retry.MaxAttempts = 1
	})
	named := hookConfig("named", srv.URL, func(w *config.Webhook) {
		w.TLS = config.WebhookTLS{CAFile: caFile, CAOnly: true, ServerName: "hooks.internal"}
		w.Retry.MaxAttempts = 1
	})
	wrongID, namedID := e.insertOne("ip", `{}`), e.insertOne("named", `{}`)
	e.start(e.pool, testConfig(4, wrong, named))
	r := e.waitState(wrongID, "failed", 20*time.Second)
	if msg := deref(r.LastError); msg == nil || !strings.Contains(msg.(string), "127.0.0.1") {
		t.Errorf("last_error = %v, want the certificate refused for 127.0.0.1", msg)
	}
	e.waitState(namedID, "delivered", 20*time.Second)
	if n := got.Load(); n != 1 {
		t.Errorf("receiver got %d requests, want 1 (server_name hooks.internal)", n)
	}
}
