package dispatch_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walhook/walhook/internal/config"
)

// TestStandardWebhooksHeadersOnTheWire: a webhook with signature: both and
// two rotating secrets sends X-Hook-Signature and the three Standard
// Webhooks headers, each checked here by an independent computation.
func TestStandardWebhooksHeadersOnTheWire(t *testing.T) {
	t.Parallel()
	e := setup(t)
	rec := newRecorder(t, nil)
	keys := [][]byte{[]byte("0123456789abcdef0123"), []byte("fedcba9876543210fedc")}
	secrets := []string{"whsec_" + base64.StdEncoding.EncodeToString(keys[0]), "whsec_" + base64.StdEncoding.EncodeToString(keys[1])}
	hook := hookConfig("std", rec.srv.URL+"/std", func(w *config.Webhook) {
		w.Signature = "both"
		w.Secrets = secrets
	})
	body := `{"event":"created","model":"Site","data":{"id":1}}`
	id := e.insertOne("std", body)
	e.start(e.pool, testConfig(2, hook))
	e.waitState(id, "delivered", 10*time.Second)
	reqs := rec.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests", len(reqs))
	}
	h := reqs[0].Header
	if h.Get("Webhook-Id") != strconv.FormatInt(id, 10) {
		t.Errorf("webhook-id = %q", h.Get("Webhook-Id"))
	}
	ts, err := strconv.ParseInt(h.Get("Webhook-Timestamp"), 10, 64)
	if err != nil || time.Since(time.Unix(ts, 0)) > time.Minute {
		t.Errorf("webhook-timestamp = %q", h.Get("Webhook-Timestamp"))
	}
	var want []string
	for _, k := range keys {
		m := hmac.New(sha256.New, k)
		m.Write([]byte(h.Get("Webhook-Id") + "." + h.Get("Webhook-Timestamp") + "." + body))
		want = append(want, "v1,"+base64.StdEncoding.EncodeToString(m.Sum(nil)))
	}
	if got := h.Get("Webhook-Signature"); got != strings.Join(want, " ") {
		t.Errorf("webhook-signature = %q, want %q", got, strings.Join(want, " "))
	}
	m := hmac.New(sha512.New, []byte(secrets[0]))
	m.Write([]byte(body))
	if got := h.Get("X-Hook-Signature"); got != hex.EncodeToString(m.Sum(nil)) {
		t.Errorf("X-Hook-Signature = %q", got)
	}
}
