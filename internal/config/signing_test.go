package config

import (
	"strings"
	"testing"
)

const signingBase = `
database:
  dsn: postgres://walhook@localhost:5432/app
models:
  - table: dcim_site
    model: Site
    object_type: dcim.site
  - table: dcim_region
    model: Region
webhooks:
  - name: w
    url: https://hooks.example.com/x
`

func TestSigningAndFormatConfig(t *testing.T) {
	good := []string{
		"    secret: plain\n",
		"    signature: standard-webhooks\n    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n",
		"    signature: both\n    secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, whsec_AAAAAAAAAAAAAAAAAAAAAAAA]\n",
		"    format: netbox-v4\n    models: [Site]\n",
		"    format: netbox-v4\n    object_type: dcim.any\n",
		"    coalesce: transaction\n",
	}
	for _, g := range good {
		if c, ce := parseErr(t, y(signingBase+g), nil); ce != nil {
			t.Errorf("%q: %v", g, ce)
		} else if w := c.Webhooks[0]; strings.Contains(g, "secrets") && len(w.SigningSecrets()) != 2 {
			t.Errorf("%q: secrets %v", g, w.SigningSecrets())
		}
	}
	bad := []struct{ src, want string }{
		{"    signature: standard-webhooks\n", "needs a secret"},
		{"    signature: standard-webhooks\n    secret: plain\n", "whsec_<base64>"},
		{"    signature: both\n    secret: whsec_***\n", "not valid base64"},
		{"    signature: both\n    secret: whsec_AAAA\n", "at least 16"},
		{"    secrets: [a, b]\n", "several secrets"},
		{"    secret: a\n    secrets: [b]\n", "either secret or secrets"},
		{"    signature: standard-webhooks\n    secrets: [whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, nope]\n", "secrets[1]"},
		{"    format: netbox-v4\n", "needs object_type"},
		{"    secrets: whsec_x\n", ""},
		{"    headers: {Webhook-Signature: x}\n", "set by walhook"},
	}
	for _, b := range bad {
		_, ce := parseErr(t, y(signingBase+b.src), nil)
		if ce == nil {
			t.Errorf("%q accepted", b.src)
			continue
		}
		msg := ce.Error()
		if !strings.Contains(msg, b.want) || !strings.Contains(msg, "walhook.yaml:1") {
			t.Errorf("%q: %s (want %q with a line number)", b.src, msg, b.want)
		}
	}
}
