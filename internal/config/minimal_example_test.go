package config

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// The README's quick start shows examples/minimal.yaml (docs_test.go checks
// that the README holds it verbatim); it must load with the real loader and
// take the defaults the docs promise.
func TestMinimalExampleLoads(t *testing.T) {
	t.Setenv("WALHOOK_SECRET", "s3cret")
	c, err := Load("../../examples/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Models) != 1 || c.Models[0].Model != "Site" || c.Models[0].Schema != "public" || c.Models[0].Name != "dcim_site" {
		t.Errorf("models = %+v", c.Models)
	}
	if len(c.Webhooks) != 1 {
		t.Fatalf("webhooks = %+v", c.Webhooks)
	}
	w := c.Webhooks[0]
	if w.Secret != "s3cret" || w.HTTPMethod != "POST" || w.Format != "netbox" || w.Signature != "netbox" ||
		w.Timeout.D() != 10*time.Second || w.Retry.MaxAttempts != 8 || !w.IsEnabled() {
		t.Errorf("webhook = %+v", w)
	}
	if db := c.Database; db.Slot != "walhook" || db.Publication != "walhook" || db.Schema != "walhook" {
		t.Errorf("database = %+v", db)
	}
	if got := c.HTTP.ListenAddr(); got != "127.0.0.1:9187" {
		t.Errorf("http.listen = %q", got)
	}
}

// Without WALHOOK_SECRET the quick start refuses to start rather than send
// unsigned webhooks.
func TestMinimalExampleNeedsSecret(t *testing.T) {
	raw, err := os.ReadFile("../../examples/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse("minimal.yaml", raw, func(string) (string, bool) { return "", false })
	var ce *Error
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "WALHOOK_SECRET") {
		t.Fatalf("without WALHOOK_SECRET: %v", err)
	}
}
