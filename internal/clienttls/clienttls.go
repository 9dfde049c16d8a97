// Package clienttls builds the TLS client configuration of a webhook from
// its certificate files: a CA bundle the receiver's certificate is checked
// against, and a client certificate for mutual TLS. The files are read when
// the configuration is built and read again, at the next TLS handshake,
// whenever their modification time or size changes, so that rotated
// certificates are used without a restart. A file that cannot be read
// again leaves the previous contents in use and is reported through
// Options.OnReloadError.
package clienttls

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"time"
)

// DefaultMinVersion is the lowest TLS version offered when min_version is
// not set.
const DefaultMinVersion = "1.2"

// versions are the allowed min_version values.
var versions = map[string]uint16{
	"1.0": tls.VersionTLS10,
	"1.1": tls.VersionTLS11,
	"1.2": tls.VersionTLS12,
	"1.3": tls.VersionTLS13,
}

// ParseVersion reads a min_version value: 1.0, 1.1, 1.2 or 1.3 ("" is
// DefaultMinVersion).
func ParseVersion(s string) (uint16, error) {
	if s == "" {
		s = DefaultMinVersion
	}
	v, ok := versions[strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "tls")]
	if !ok {
		return 0, fmt.Errorf("min_version %q must be 1.2 or 1.3 (1.0 and 1.1 only for receivers that cannot do better)", s)
	}
	return v, nil
}

// Options are a webhook's tls settings, with file paths already resolved.
type Options struct {
	// CAFile is a PEM bundle of CA certificates trusted for the receiver,
	// in addition to the system roots unless CAOnly is set.
	CAFile string
	CAOnly bool
	// CertFile and KeyFile are the client certificate (PEM, chain allowed)
	// and its unencrypted private key (PKCS#1, SEC 1 or PKCS#8).
	CertFile, KeyFile string
	// ServerName overrides the name sent in SNI and checked against the
	// receiver's certificate (default: Host).
	ServerName string
	// Host is the host of the receiver's URL (a DNS name or an IP
	// address), which its certificate must name when ServerName is not
	// set. It is checked even when no SNI is sent (IP addresses).
	Host string
	// InsecureSkipVerify turns off every check of the receiver's
	// certificate.
	InsecureSkipVerify bool
	// MinVersion is the lowest TLS version offered (see ParseVersion).
	MinVersion string
	// OnReloadError is told when a changed file cannot be used; the
	// previous contents stay in use. Optional.
	OnReloadError func(error)
}

// FileError is a certificate file that cannot be used. Key is the config
// key that names it (ca_file, cert_file or key_file).
type FileError struct {
	Key, Path string
	Err       error
}

func (e *FileError) Error() string {
	err := e.Err
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == e.Path {
		err = pe.Err // the path is named once
	}
	return fmt.Sprintf("%s %s: %v", e.Key, e.Path, err)
}
func (e *FileError) Unwrap() error { return e.Err }

// Config holds a webhook's certificate files and hands out a *tls.Config
// that reads them again when they change.
type Config struct {
	opts Options
	min  uint16

	mu        sync.Mutex
	caStamp   stamp
	pool      *x509.CertPool // nil: system roots (no ca_file)
	certStamp [2]stamp
	cert      *tls.Certificate
	// failed remembers the stamps that last failed to load, so that one
	// bad file is reported once, not at every handshake.
	failed map[string]stamp
}

// stamp identifies a version of a file.
type stamp struct {
	mod  time.Time
	size int64
}

func statFile(path string) (stamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}, err
	}
	return stamp{mod: fi.ModTime(), size: fi.Size()}, nil
}

// New reads the files named in opts and returns a Config. A missing,
// unreadable or malformed file is a *FileError.
func New(opts Options) (*Config, error) {
	v, err := ParseVersion(opts.MinVersion)
	if err != nil {
		return nil, err
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, errors.New("cert_file and key_file must be set together")
	}
	c := &Config{opts: opts, min: v, failed: map[string]stamp{}}
	if opts.CAFile != "" {
		st, err := statFile(opts.CAFile)
		if err != nil {
			return nil, &FileError{Key: "ca_file", Path: opts.CAFile, Err: err}
		}
		pool, err := loadPool(opts.CAFile, opts.CAOnly)
		if err != nil {
			return nil, err
		}
		c.pool, c.caStamp = pool, st
	}
	if opts.CertFile != "" {
		st, err := c.certStamps()
		if err != nil {
			return nil, err
		}
		cert, err := loadPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return nil, err
		}
		c.cert, c.certStamp = cert, st
	}
	return c, nil
}

func (c *Config) certStamps() ([2]stamp, error) {
	cs, err := statFile(c.opts.CertFile)
	if err != nil {
		return [2]stamp{}, &FileError{Key: "cert_file", Path: c.opts.CertFile, Err: err}
	}
	ks, err := statFile(c.opts.KeyFile)
	if err != nil {
		return [2]stamp{}, &FileError{Key: "key_file", Path: c.opts.KeyFile, Err: err}
	}
	return [2]stamp{cs, ks}, nil
}

// loadPool reads a PEM bundle of CA certificates, added to a copy of the
// system roots unless only is set.
func loadPool(path string, only bool) (*x509.CertPool, error) {
	fail := func(err error) error { return &FileError{Key: "ca_file", Path: path, Err: err} }
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fail(err)
	}
	var pool *x509.CertPool
	if !only {
		if pool, err = x509.SystemCertPool(); err != nil {
			pool = nil
		}
	}
	if pool == nil {
		pool = x509.NewCertPool()
	}
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fail(fmt.Errorf("certificate %d: %w", n+1, err))
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, fail(errors.New("no PEM certificate in the file (want -----BEGIN CERTIFICATE----- blocks)"))
	}
	return pool, nil
}

// loadPair reads a client certificate and its key. Errors never quote the
// key.
func loadPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, &FileError{Key: "cert_file", Path: certFile, Err: err}
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, &FileError{Key: "key_file", Path: keyFile, Err: err}
	}
	if !bytes.Contains(certPEM, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, &FileError{Key: "cert_file", Path: certFile, Err: errors.New("no PEM certificate in the file (want a -----BEGIN CERTIFICATE----- block)")}
	}
	if b, _ := pem.Decode(keyPEM); b == nil {
		return nil, &FileError{Key: "key_file", Path: keyFile, Err: errors.New("no PEM private key in the file")}
	} else if strings.Contains(b.Type, "ENCRYPTED") || b.Headers["Proc-Type"] != "" {
		return nil, &FileError{Key: "key_file", Path: keyFile, Err: errors.New("the key is encrypted: give an unencrypted key (openssl pkey -in KEY -out KEY.plain)")}
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, &FileError{Key: "key_file", Path: keyFile, Err: fmt.Errorf("does not go with cert_file %s or cannot be parsed: %w", certFile, err)}
	}
	return &pair, nil
}

// TLS returns the client configuration to dial the receiver with. It reads
// changed files at each handshake.
func (c *Config) TLS() *tls.Config {
	t := &tls.Config{
		MinVersion:         c.min,
		ServerName:         c.opts.ServerName,
		InsecureSkipVerify: c.opts.InsecureSkipVerify, //nolint:gosec // the operator's explicit choice, warned about at start
	}
	if c.opts.CertFile != "" {
		t.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return c.clientCert(), nil
		}
	}
	if c.opts.CAFile != "" && !c.opts.InsecureSkipVerify {
		// The roots can change between handshakes, so the chain is
		// verified here, against the current pool, instead of by
		// crypto/tls against a fixed one.
		t.InsecureSkipVerify = true //nolint:gosec // verified in VerifyConnection
		t.VerifyConnection = c.verify
	}
	return t
}

// clientCert is the current client certificate, read again if its files
// changed.
func (c *Config) clientCert() *tls.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.certStamps()
	if err != nil {
		c.reloadFailed("cert", stamp{}, err)
		return c.cert
	}
	if st == c.certStamp {
		return c.cert
	}
	cert, err := loadPair(c.opts.CertFile, c.opts.KeyFile)
	if err != nil {
		// Often the certificate was replaced and its key is not yet:
		// keep the old pair until both match.
		c.reloadFailed("cert", st[0], err)
		return c.cert
	}
	c.cert, c.certStamp = cert, st
	delete(c.failed, "cert")
	return c.cert
}

// roots is the current CA pool, read again if ca_file changed.
func (c *Config) roots() *x509.CertPool {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := statFile(c.opts.CAFile)
	if err != nil {
		c.reloadFailed("ca", stamp{}, &FileError{Key: "ca_file", Path: c.opts.CAFile, Err: err})
		return c.pool
	}
	if st == c.caStamp {
		return c.pool
	}
	pool, err := loadPool(c.opts.CAFile, c.opts.CAOnly)
	if err != nil {
		c.reloadFailed("ca", st, err)
		return c.pool
	}
	c.pool, c.caStamp = pool, st
	delete(c.failed, "ca")
	return c.pool
}

func (c *Config) reloadFailed(which string, st stamp, err error) {
	if prev, ok := c.failed[which]; ok && prev == st {
		return
	}
	c.failed[which] = st
	if c.opts.OnReloadError != nil {
		c.opts.OnReloadError(fmt.Errorf("reading the changed %s file again: %w (the previous one stays in use)", which, err))
	}
}

// verify checks the receiver's chain against the current roots and its
// name, as crypto/tls would: ServerName, else Host, else the SNI name. The
// SNI name alone is not enough: it is empty for an IP address, and an
// empty name would let any certificate of a trusted CA pass.
func (c *Config) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the receiver sent no certificate")
	}
	name := c.opts.ServerName
	if name == "" {
		name = c.opts.Host
	}
	if name == "" {
		name = cs.ServerName
	}
	if name == "" {
		return errors.New("tls: no name to check the receiver's certificate against: set tls.server_name")
	}
	opts := x509.VerifyOptions{
		Roots:         c.roots(),
		DNSName:       name,
		Intermediates: x509.NewCertPool(),
	}
	for _, ic := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(ic)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return fmt.Errorf("tls: receiver certificate not trusted with ca_file %s: %w", c.opts.CAFile, err)
	}
	return nil
}
