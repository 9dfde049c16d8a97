// Package sign is the one place that knows the headers of a webhook request:
// it builds them (Content-Type, User-Agent, the configured headers, the
// delivery id, traceparent and the signatures), signs bodies the NetBox way
// (X-Hook-Signature, HMAC-SHA512) and the Standard Webhooks way
// (webhook-id, webhook-timestamp, webhook-signature), verifies both for
// receivers and `walhook verify`, and says which header names and values a
// configuration may use. Dispatch sends what a Signer builds, and the
// delivery page shows what the same Signer builds, so the two cannot
// disagree.
package sign

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Sign returns the lowercase hex HMAC-SHA512 of body keyed with secret's
// UTF-8 bytes: the X-Hook-Signature header, as NetBox computes it.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha512.New, []byte(secret))
	m.Write(body)
	var sum [sha512.Size]byte
	return hex.EncodeToString(m.Sum(sum[:0]))
}

// Signature schemes of a webhook (config signature).
const (
	SchemeNetbox   = "netbox"            // X-Hook-Signature only
	SchemeStandard = "standard-webhooks" // webhook-id, webhook-timestamp, webhook-signature
	SchemeBoth     = "both"              // all of them
)

// Schemes lists the signature schemes, the default first.
func Schemes() []string { return []string{SchemeNetbox, SchemeStandard, SchemeBoth} }

// StandardSecretPrefix starts a Standard Webhooks secret: "whsec_<base64 key>".
const StandardSecretPrefix = "whsec_"

// DecodeStandardSecret returns the HMAC key of a Standard Webhooks secret:
// the base64 text after "whsec_" decoded (the prefix is optional here, as
// in the reference libraries).
func DecodeStandardSecret(secret string) ([]byte, error) {
	s := strings.TrimPrefix(strings.TrimSpace(secret), StandardSecretPrefix)
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		// Tolerate unpadded base64.
		if k2, err2 := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "=")); err2 == nil {
			key, err = k2, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("standard-webhooks secret is not %s<base64>: %w", StandardSecretPrefix, err)
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("standard-webhooks secret is empty: write %s<base64 of 24 to 64 random bytes>", StandardSecretPrefix)
	}
	return key, nil
}

// SignStandard returns one Standard Webhooks signature, "v1,<base64>": the
// HMAC-SHA256 of "msgID.timestamp.body" keyed with key.
func SignStandard(key []byte, msgID string, timestamp int64, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msgID))
	m.Write([]byte{'.'})
	m.Write(strconv.AppendInt(nil, timestamp, 10))
	m.Write([]byte{'.'})
	m.Write(body)
	var sum [sha256.Size]byte
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(sum[:0]))
}

// StandardSignatures returns the webhook-signature header value: one
// signature per secret, space-separated, in the order of secrets (several
// secrets let receivers rotate keys).
func StandardSignatures(secrets []string, msgID string, timestamp int64, body []byte) (string, error) {
	if len(secrets) == 0 {
		return "", errors.New("standard-webhooks signature needs a secret")
	}
	var b strings.Builder
	for i, s := range secrets {
		key, err := DecodeStandardSecret(s)
		if err != nil {
			return "", err
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(SignStandard(key, msgID, timestamp, body))
	}
	return b.String(), nil
}

// VerifyStandard checks a Standard Webhooks request: signatures is the
// webhook-signature header (space-separated "v1,<base64>" entries; other
// versions are ignored), and it passes when any entry matches any secret.
// With tolerance > 0 the timestamp must also be within tolerance of now.
func VerifyStandard(secrets []string, msgID, timestamp, signatures string, body []byte, now time.Time, tolerance time.Duration) error {
	ts, err := strconv.ParseInt(strings.TrimSpace(timestamp), 10, 64)
	if err != nil {
		return fmt.Errorf("webhook-timestamp %q is not Unix seconds", timestamp)
	}
	if tolerance > 0 {
		age := now.Sub(time.Unix(ts, 0))
		if age > tolerance || -age > tolerance {
			return fmt.Errorf("webhook-timestamp %d is %s away from now, more than the tolerance %s", ts, age.Round(time.Second).Abs(), tolerance)
		}
	}
	var given []string
	for _, f := range strings.Fields(signatures) {
		if v, ok := strings.CutPrefix(f, "v1,"); ok {
			given = append(given, v)
		}
	}
	if len(given) == 0 {
		return fmt.Errorf("webhook-signature %q has no v1,<base64> signature", signatures)
	}
	if len(secrets) == 0 {
		return errors.New("no secret given")
	}
	var want []string
	for _, s := range secrets {
		key, err := DecodeStandardSecret(s)
		if err != nil {
			return err
		}
		exp := SignStandard(key, msgID, ts, body)[len("v1,"):]
		for _, g := range given {
			if hmac.Equal([]byte(g), []byte(exp)) {
				return nil
			}
		}
		want = append(want, "v1,"+exp)
	}
	return fmt.Errorf("webhook-signature does not match: expected %s for webhook-id %q, webhook-timestamp %d and this body (%d bytes)",
		strings.Join(want, " or "), msgID, ts, len(body))
}

// VerifyNetbox checks an X-Hook-Signature value against any of secrets.
func VerifyNetbox(secrets []string, signature string, body []byte) error {
	if len(secrets) == 0 {
		return errors.New("no secret given")
	}
	sig := strings.ToLower(strings.TrimSpace(signature))
	var want []string
	for _, s := range secrets {
		exp := Sign(s, body)
		if hmac.Equal([]byte(sig), []byte(exp)) {
			return nil
		}
		want = append(want, exp)
	}
	return fmt.Errorf("X-Hook-Signature does not match: expected %s for this body (%d bytes)", strings.Join(want, " or "), len(body))
}

// CheckStandardSecret says what is wrong with a Standard Webhooks secret in
// a configuration, which (unlike a receiver's copy) must carry the whsec_
// prefix and a key of at least 16 bytes. The error never contains the
// secret.
func CheckStandardSecret(s string) error {
	b64, ok := strings.CutPrefix(s, StandardSecretPrefix)
	if !ok {
		return errors.New("the secret must look like whsec_<base64> (e.g. from: echo whsec_$(openssl rand -base64 32))")
	}
	key, err := DecodeStandardSecret(b64)
	if err != nil {
		return errors.New("the part after whsec_ is not valid base64")
	}
	if len(key) < 16 {
		return fmt.Errorf("the key after whsec_ is %d bytes; use at least 16 (24 to 64 recommended)", len(key))
	}
	return nil
}
