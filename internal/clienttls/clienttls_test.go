package clienttls

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/clienttls/pkitest"
)

// TestHalfRotatedPairKeepsTheOldOne replaces the certificate before its
// key: the old pair stays in use, the problem is reported once, and the
// new pair is used as soon as the key follows.
func TestHalfRotatedPairKeepsTheOldOne(t *testing.T) {
	dir := t.TempDir()
	ca := pkitest.NewCA(t, "CA")
	old, fresh := ca.Client("old"), ca.Client("fresh")
	cert := pkitest.Write(t, dir, "c.pem", old.CertPEM)
	key := pkitest.Write(t, dir, "k.pem", old.KeyPEM)
	var reported []string
	c, err := New(Options{CertFile: cert, KeyFile: key, OnReloadError: func(err error) { reported = append(reported, err.Error()) }})
	if err != nil {
		t.Fatal(err)
	}
	get := c.TLS().GetClientCertificate
	cn := func() string {
		t.Helper()
		got, err := get(&tls.CertificateRequestInfo{})
		if err != nil || got.Leaf == nil {
			t.Fatalf("GetClientCertificate: %v %v", got, err)
		}
		return got.Leaf.Subject.CommonName
	}
	if cn() != "old" {
		t.Fatal("not the configured certificate")
	}
	// A later mtime, as a file written a moment later has.
	later := time.Now().Add(time.Second)
	pkitest.Write(t, dir, "c.pem", fresh.CertPEM)
	if err := os.Chtimes(cert, later, later); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := cn(); got != "old" {
			t.Fatalf("half-rotated pair: using %q, want the old pair", got)
		}
	}
	if len(reported) != 1 || !strings.Contains(reported[0], "does not go with cert_file") || strings.Contains(reported[0], "PRIVATE") {
		t.Errorf("reported %q, want one error naming the mismatch", reported)
	}
	pkitest.Write(t, dir, "k.pem", fresh.KeyPEM)
	if err := os.Chtimes(key, later, later); err != nil {
		t.Fatal(err)
	}
	if got := cn(); got != "fresh" {
		t.Errorf("after the key followed: using %q, want fresh", got)
	}
	// A file removed keeps the last good pair too.
	if err := os.Remove(filepath.Join(dir, "k.pem")); err != nil {
		t.Fatal(err)
	}
	if got := cn(); got != "fresh" {
		t.Errorf("key removed: using %q", got)
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in      string
		want    uint16
		wantErr bool
	}{
		{"", tls.VersionTLS12, false},
		{"1.2", tls.VersionTLS12, false},
		{"1.3", tls.VersionTLS13, false},
		{"TLS1.3", tls.VersionTLS13, false},
		{"1.4", 0, true},
		{"ssl3", 0, true},
	}
	for _, tc := range tests {
		got, err := ParseVersion(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseVersion(%q) = %d, %v", tc.in, got, err)
		}
	}
}
