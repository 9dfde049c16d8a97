package sign

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSignerHeaders(t *testing.T) {
	key := StandardSecretPrefix + base64.StdEncoding.EncodeToString([]byte("a standard key of 24 b!!"))
	body := []byte(`{"a":1}`)
	now := time.Unix(1700000000, 0)
	tests := []struct {
		name  string
		s     Settings
		names []string // in order
		kinds map[string]Kind
	}{
		{"unsigned", Settings{UserAgent: "walhook/t"},
			[]string{"Content-Type", "User-Agent", HeaderDelivery, HeaderTraceparent},
			map[string]Kind{"Content-Type": Fixed, HeaderDelivery: PerDelivery, HeaderTraceparent: PerAttempt}},
		{"netbox with configured headers", Settings{Secrets: []string{"s"}, Headers: map[string]string{"x-team": "infra", "Authorization": "Bearer t"}},
			[]string{"Content-Type", "Authorization", "X-Team", HeaderDelivery, HeaderTraceparent, HeaderSignature},
			map[string]Kind{"X-Team": Configured, "authorization": Configured, HeaderSignature: Secret}},
		{"standard", Settings{Scheme: SchemeStandard, Secrets: []string{key, key}},
			[]string{"Content-Type", HeaderDelivery, HeaderTraceparent, HeaderWebhookID, HeaderWebhookTimestamp, HeaderWebhookSignature},
			map[string]Kind{HeaderWebhookID: PerDelivery, HeaderWebhookTimestamp: PerAttempt, HeaderWebhookSignature: Secret}},
		{"both", Settings{Scheme: SchemeBoth, Secrets: []string{key}, ContentType: "application/x"},
			[]string{"Content-Type", HeaderDelivery, HeaderTraceparent, HeaderSignature, HeaderWebhookID, HeaderWebhookTimestamp, HeaderWebhookSignature},
			nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sg, err := New(tt.s)
			if err != nil {
				t.Fatal(err)
			}
			if got := sg.Names(); !slices.Equal(got, tt.names) {
				t.Errorf("Names() = %v, want %v", got, tt.names)
			}
			h := sg.Header(42, body, "00-t-s-01", now)
			if len(h) != len(tt.names) {
				t.Errorf("Header has %d headers, Names %d: %v", len(h), len(tt.names), h)
			}
			for _, n := range tt.names {
				if h.Get(n) == "" {
					t.Errorf("Header lacks %s", n)
				}
			}
			for n, want := range tt.kinds {
				if k, ok := sg.Kind(n); !ok || k != want {
					t.Errorf("Kind(%s) = %v, %v; want %v", n, k, ok, want)
				}
			}
			if sg.Signed() != (len(tt.s.Secrets) > 0) {
				t.Errorf("Signed() = %v", sg.Signed())
			}
			if tt.s.ContentType != "" && h.Get("Content-Type") != tt.s.ContentType {
				t.Errorf("Content-Type %q", h.Get("Content-Type"))
			}
		})
	}
}

func TestSignerRefuses(t *testing.T) {
	for _, s := range []Settings{
		{Headers: map[string]string{"Bad Name": "v"}},
		{Headers: map[string]string{"X-Ok": "line\r\nbreak-secret"}},
		{Headers: map[string]string{"host": "h"}},
		{Headers: map[string]string{"X-Hook-Signature": "h"}},
		{Headers: map[string]string{"webhook-id": "h"}},
		{Scheme: "hmac", Secrets: []string{"s"}},
		{Scheme: SchemeStandard, Secrets: []string{"whsec_not base64-secret"}},
	} {
		_, err := New(s)
		if err == nil {
			t.Errorf("%+v accepted", s)
			continue
		}
		if strings.Contains(err.Error(), "secret") && strings.Contains(err.Error(), "-secret") {
			t.Errorf("error shows a value: %v", err)
		}
	}
}
