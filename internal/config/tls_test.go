package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/clienttls/pkitest"
)

// TestTLSProblems checks that bad tls settings and unusable certificate
// files are configuration errors at the line that names them.
func TestTLSProblems(t *testing.T) {
	dir := t.TempDir()
	ca := pkitest.NewCA(t, "test CA")
	leaf := ca.Client("walhook")
	other := ca.Client("other")
	caFile := pkitest.Write(t, dir, "ca.pem", ca.PEM)
	cert := pkitest.Write(t, dir, "client.pem", leaf.CertPEM)
	key := pkitest.Write(t, dir, "client-key.pem", leaf.KeyPEM)
	otherKey := pkitest.Write(t, dir, "other-key.pem", other.KeyPEM)
	garbage := pkitest.Write(t, dir, "garbage.pem", []byte("not a certificate\n"))
	encrypted := pkitest.Write(t, dir, "encrypted-key.pem", []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"))
	missing := filepath.Join(dir, "missing.pem")

	head := minimal + "    tls:\n"
	tests := []struct {
		name string
		tls  string
		want []string
	}{
		{name: "valid", tls: "      ca_file: " + caFile + "\n      cert_file: " + cert + "\n      key_file: " + key + "\n      min_version: \"1.3\"\n"},
		{name: "missing ca_file", tls: "      ca_file: " + missing + "\n", want: []string{"9: tls.ca_file " + missing + ": no such file or directory"}},
		{name: "garbage ca_file", tls: "      ca_file: " + garbage + "\n", want: []string{"9: no PEM certificate"}},
		{name: "cert without key", tls: "      ca_file: " + caFile + "\n      cert_file: " + cert + "\n", want: []string{"10: add tls.key_file"}},
		{name: "key of another cert", tls: "      cert_file: " + cert + "\n      key_file: " + otherKey + "\n", want: []string{"10: tls.key_file " + otherKey + ": does not go with cert_file"}},
		{name: "encrypted key", tls: "      cert_file: " + cert + "\n      key_file: " + encrypted + "\n", want: []string{"10: the key is encrypted"}},
		{name: "ca_only alone", tls: "      ca_only: true\n", want: []string{"9: tls.ca_only needs tls.ca_file"}},
		{name: "insecure with ca", tls: "      ca_file: " + caFile + "\n      insecure_skip_verify: true\n", want: []string{"10: insecure_skip_verify turns off"}},
		{name: "bad version", tls: "      min_version: \"1.4\"\n", want: []string{"9: min_version \"1.4\" must be 1.2 or 1.3"}},
		{name: "unknown key", tls: "      ssl_verification: false\n", want: []string{"9: ssl_verification"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, e := parseErr(t, y(head+tc.tls), nil)
			if tc.want == nil {
				if e != nil {
					t.Fatalf("unexpected problems:\n%v", e)
				}
				if !c.Webhooks[0].TLS.IsSet() || c.Webhooks[0].TLS.CAFile != caFile {
					t.Errorf("tls = %+v", c.Webhooks[0].TLS)
				}
				return
			}
			checkProblems(t, e, tc.want)
			for _, p := range e.Problems {
				if strings.Contains(p.Msg, "PRIVATE KEY") || strings.Contains(p.Msg, string(leaf.KeyPEM[40:80])) {
					t.Errorf("problem %q quotes the key", p.Msg)
				}
			}
		})
	}

	t.Run("http url", func(t *testing.T) {
		src := strings.Replace(head, "https://", "http://", 1) + "      insecure_skip_verify: true\n"
		_, e := parseErr(t, y(src), nil)
		checkProblems(t, e, []string{"8: tls applies to https URLs only"})
	})
}

// TestTLSRelativePaths checks that certificate paths are relative to the
// configuration file, not to the working directory.
func TestTLSRelativePaths(t *testing.T) {
	dir := t.TempDir()
	ca := pkitest.NewCA(t, "test CA")
	pkitest.Write(t, dir, "ca.pem", ca.PEM)
	path := pkitest.Write(t, dir, "walhook.yaml", y(minimal+"    tls: {ca_file: ca.pem}\n"))
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Webhooks[0].TLS.CAFile, filepath.Join(dir, "ca.pem"); got != want {
		t.Errorf("ca_file = %q, want %q", got, want)
	}
	if _, err := os.Stat(c.Webhooks[0].TLS.CAFile); err != nil {
		t.Error(err)
	}
}

func TestTracingEndpoint(t *testing.T) {
	c, e := parseErr(t, y(minimal+"tracing: {otlp_endpoint: \"http://localhost:4318\"}\n"), nil)
	if e != nil || c.Tracing.OTLPEndpoint != "http://localhost:4318" {
		t.Fatalf("valid endpoint: %v %+v", e, c)
	}
	c, _ = parseErr(t, y(minimal), nil)
	if c.Tracing.OTLPEndpoint != "" {
		t.Error("tracing is on by default")
	}
	_, e = parseErr(t, y(minimal+"tracing: {otlp_endpoint: \"localhost:4318\"}\n"), nil)
	checkProblems(t, e, []string{"8: tracing.otlp_endpoint \"localhost:4318\" is not an http(s) URL"})
}
