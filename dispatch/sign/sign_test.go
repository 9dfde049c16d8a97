package sign

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The test vector published in the Standard Webhooks specification
// (github.com/standard-webhooks/standard-webhooks, README), also checked
// with openssl:
//
//	printf '%s' 'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}' |
//	  openssl dgst -sha256 -mac HMAC -macopt hexkey:31f290f6bf06298aab4f08d43c3f082cf648a362da2da4b0 -binary | base64
const (
	vecSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vecID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vecTS     = 1614265330
	vecBody   = `{"test": 2432232314}`
	vecSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func TestStandardWebhooksVector(t *testing.T) {
	key, err := DecodeStandardSecret(vecSecret)
	if err != nil {
		t.Fatal(err)
	}
	if got := SignStandard(key, vecID, vecTS, []byte(vecBody)); got != vecSig {
		t.Fatalf("SignStandard = %s, want %s", got, vecSig)
	}
	if err := VerifyStandard([]string{vecSecret}, vecID, "1614265330", vecSig, []byte(vecBody), time.Unix(vecTS, 0), 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	// Tampered body, id, timestamp; stale timestamp.
	for _, c := range []struct{ id, ts, body string }{
		{vecID, "1614265330", `{"test": 2432232315}`},
		{"msg_other", "1614265330", vecBody},
		{vecID, "1614265331", vecBody},
	} {
		if err := VerifyStandard([]string{vecSecret}, c.id, c.ts, vecSig, []byte(c.body), time.Unix(vecTS, 0), 0); err == nil {
			t.Errorf("%+v: verified", c)
		}
	}
	err = VerifyStandard([]string{vecSecret}, vecID, "1614265330", vecSig, []byte(vecBody), time.Unix(vecTS+3600, 0), 5*time.Minute)
	if err == nil || !strings.Contains(err.Error(), "tolerance") {
		t.Errorf("stale timestamp: %v", err)
	}
}

// independent computes the signature with crypto/hmac directly.
func independent(t *testing.T, secret, id, ts string, body []byte) string {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + ts + "." + string(body)))
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// signatureHeaders copies the signature headers a Signer for scheme and
// secrets sets into h.
func signatureHeaders(h http.Header, scheme string, secrets []string, id int64, body []byte, now time.Time) error {
	sg, err := New(Settings{Scheme: scheme, Secrets: secrets})
	if err != nil {
		return err
	}
	for k, v := range sg.Header(id, body, "", now) {
		if k == HeaderSignature || StandardHeader(k) {
			h[k] = v
		}
	}
	return nil
}

func TestSignatureHeaders(t *testing.T) {
	body := []byte(`{"event":"created","data":{"id":1}}`)
	now := time.Unix(1700000000, 999e6)
	s1, s2 := "whsec_"+base64.StdEncoding.EncodeToString([]byte("first key of 24 bytes!!!")), "whsec_"+base64.StdEncoding.EncodeToString([]byte("second key, rotated in"))

	h := http.Header{}
	if err := signatureHeaders(h, SchemeStandard, []string{s1, s2}, 42, body, now); err != nil {
		t.Fatal(err)
	}
	if h.Get("webhook-id") != "42" || h.Get("webhook-timestamp") != "1700000000" {
		t.Fatalf("headers %v", h)
	}
	if h.Get("X-Hook-Signature") != "" {
		t.Fatalf("standard-webhooks sent X-Hook-Signature")
	}
	sigs := strings.Split(h.Get("webhook-signature"), " ")
	want := []string{independent(t, s1, "42", "1700000000", body), independent(t, s2, "42", "1700000000", body)}
	if len(sigs) != 2 || sigs[0] != want[0] || sigs[1] != want[1] {
		t.Fatalf("webhook-signature %q, want %q", sigs, want)
	}
	// Rotation: a receiver that knows either secret (or both) accepts it.
	for _, secrets := range [][]string{{s1}, {s2}, {s2, s1}} {
		if err := VerifyStandard(secrets, "42", "1700000000", h.Get("webhook-signature"), body, now, time.Minute); err != nil {
			t.Errorf("secrets %v: %v", secrets, err)
		}
	}
	other := "whsec_" + base64.StdEncoding.EncodeToString([]byte("not this one"))
	if err := VerifyStandard([]string{other}, "42", "1700000000", h.Get("webhook-signature"), body, now, 0); err == nil {
		t.Error("verified with an unknown secret")
	}

	h = http.Header{}
	if err := signatureHeaders(h, SchemeBoth, []string{s1, s2}, 7, body, now); err != nil {
		t.Fatal(err)
	}
	mac := hmac.New(sha512.New, []byte(s1))
	mac.Write(body)
	if got := h.Get("X-Hook-Signature"); got != hex.EncodeToString(mac.Sum(nil)) {
		t.Errorf("both: X-Hook-Signature %q", got)
	}
	if h.Get("webhook-id") != "7" || h.Get("webhook-signature") == "" {
		t.Errorf("both: %v", h)
	}
	if err := VerifyNetbox([]string{s2, s1}, h.Get("X-Hook-Signature"), body); err != nil {
		t.Error(err)
	}
	if err := VerifyNetbox([]string{s2}, h.Get("X-Hook-Signature"), body); err == nil {
		t.Error("netbox verified with the wrong secret")
	}

	for _, scheme := range []string{"", SchemeNetbox} {
		h = http.Header{}
		if err := signatureHeaders(h, scheme, []string{"plain"}, 7, body, now); err != nil {
			t.Fatal(err)
		}
		if h.Get("X-Hook-Signature") != Sign("plain", body) || h.Get("webhook-signature") != "" || h.Get("webhook-id") != "" {
			t.Errorf("scheme %q: %v", scheme, h)
		}
	}
	h = http.Header{}
	if err := signatureHeaders(h, SchemeBoth, nil, 7, body, now); err != nil || len(h) != 0 {
		t.Errorf("no secret: %v %v", err, h)
	}
	if err := signatureHeaders(http.Header{}, SchemeStandard, []string{"whsec_!!!"}, 7, body, now); err == nil {
		t.Error("bad secret accepted")
	}
}

func TestDecodeStandardSecret(t *testing.T) {
	for _, s := range []string{"whsec_", "whsec_***", "", "whsec_====", "x y"} {
		if _, err := DecodeStandardSecret(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	a, err1 := DecodeStandardSecret(vecSecret)
	b, err2 := DecodeStandardSecret(strings.TrimPrefix(vecSecret, "whsec_"))
	if err1 != nil || err2 != nil || string(a) != string(b) {
		t.Errorf("prefix optional: %v %v", err1, err2)
	}
}
