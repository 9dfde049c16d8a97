package sign

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Names of the headers walhook sets, canonical.
const (
	HeaderSignature        = "X-Hook-Signature"   // NetBox: hex HMAC-SHA512 of the body
	HeaderDelivery         = "X-Walhook-Delivery" // the delivery id, the same on every attempt
	HeaderTraceparent      = "Traceparent"        // W3C trace context, a new span per attempt
	HeaderWebhookID        = "Webhook-Id"         // Standard Webhooks: the delivery id
	HeaderWebhookTimestamp = "Webhook-Timestamp"  // Standard Webhooks: Unix seconds of the attempt
	HeaderWebhookSignature = "Webhook-Signature"  // Standard Webhooks: "v1,<base64>" per secret
)

// DefaultContentType is the Content-Type of a webhook that sets none.
const DefaultContentType = "application/json"

// reserved are set by walhook (or by Go's HTTP client) on every request,
// whatever the signature scheme.
var reserved = []string{"Content-Length", "Host", "Transfer-Encoding", "Connection", HeaderSignature, HeaderDelivery, HeaderTraceparent}

// standard are set when signing the Standard Webhooks way.
var standard = []string{HeaderWebhookID, HeaderWebhookTimestamp, HeaderWebhookSignature}

// Reserved reports whether walhook (or Go's HTTP client) sets header name on
// every request: a configuration may not set it.
func Reserved(name string) bool {
	return slices.Contains(reserved, http.CanonicalHeaderKey(name))
}

// StandardHeader reports whether name is one of the Standard Webhooks
// headers; walhook owns them whenever it signs that way, and a
// configuration may not set them at all.
func StandardHeader(name string) bool {
	return slices.Contains(standard, http.CanonicalHeaderKey(name))
}

// ValidName reports whether name is an RFC 9110 token.
func ValidName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// ValidValue reports whether v can be sent as a header value: no control
// characters (CR, LF, NUL among them) except horizontal tab.
func ValidValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// Settings is what a webhook's configuration says about its requests.
type Settings struct {
	ContentType string            // "" is DefaultContentType
	UserAgent   string            // e.g. walhook/1.2.3
	Headers     map[string]string // the configured headers
	Scheme      string            // SchemeNetbox (also ""), SchemeStandard or SchemeBoth
	Secrets     []string          // in order; none: unsigned
}

// Kind says where a header's value comes from.
type Kind int

// Header kinds.
const (
	// Fixed values are the same on every request of the webhook.
	Fixed Kind = iota
	// Configured values come from the webhook's headers setting; they
	// often hold credentials.
	Configured
	// PerDelivery values are the same on every attempt of a delivery.
	PerDelivery
	// PerAttempt values change with every attempt.
	PerAttempt
	// Secret values are derived from the webhook's secret.
	Secret
)

// A Signer builds the headers of one webhook's requests. It is safe for
// concurrent use.
type Signer struct {
	static  http.Header // Content-Type, User-Agent, configured headers
	kinds   map[string]Kind
	netbox  bool     // sets X-Hook-Signature
	keys    [][]byte // Standard Webhooks keys; none: not signing that way
	macs    sync.Pool
	ordered []string // header names in the order they are described
}

// New checks s and returns its Signer. Errors name the header or the
// secret's position, never a value.
func New(s Settings) (*Signer, error) {
	sg := &Signer{static: http.Header{}, kinds: map[string]Kind{}}
	ct := s.ContentType
	if ct == "" {
		ct = DefaultContentType
	}
	sg.set("Content-Type", ct, Fixed)
	if s.UserAgent != "" {
		sg.set("User-Agent", s.UserAgent, Fixed)
	}
	names := make([]string, 0, len(s.Headers))
	for k := range s.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		v := s.Headers[k]
		if !ValidName(k) || !ValidValue(v) || Reserved(k) || StandardHeader(k) {
			return nil, fmt.Errorf("header %q cannot be configured (invalid, or set by walhook)", k)
		}
		sg.set(k, v, Configured)
	}
	sg.kinds[HeaderDelivery] = PerDelivery
	sg.ordered = append(sg.ordered, HeaderDelivery)
	sg.kinds[HeaderTraceparent] = PerAttempt
	sg.ordered = append(sg.ordered, HeaderTraceparent)
	if len(s.Secrets) == 0 {
		return sg, nil
	}
	switch s.Scheme {
	case "", SchemeNetbox, SchemeStandard, SchemeBoth:
	default:
		return nil, fmt.Errorf("signature %q is not one of %s", s.Scheme, strings.Join(Schemes(), ", "))
	}
	if s.Scheme == "" || s.Scheme == SchemeNetbox || s.Scheme == SchemeBoth {
		sg.netbox = true
		key := []byte(s.Secrets[0])
		sg.macs.New = func() any { return hmac.New(sha512.New, key) }
		sg.kinds[HeaderSignature] = Secret
		sg.ordered = append(sg.ordered, HeaderSignature)
	}
	if s.Scheme == SchemeStandard || s.Scheme == SchemeBoth {
		for i, secret := range s.Secrets {
			key, err := DecodeStandardSecret(secret)
			if err != nil {
				return nil, fmt.Errorf("secret %d of %d: %w", i+1, len(s.Secrets), err)
			}
			sg.keys = append(sg.keys, key)
		}
		sg.kinds[HeaderWebhookID] = PerDelivery
		sg.kinds[HeaderWebhookTimestamp] = PerAttempt
		sg.kinds[HeaderWebhookSignature] = Secret
		sg.ordered = append(sg.ordered, standard...)
	}
	return sg, nil
}

func (sg *Signer) set(name, value string, k Kind) {
	name = http.CanonicalHeaderKey(name)
	sg.static.Set(name, value)
	sg.kinds[name] = k
	sg.ordered = append(sg.ordered, name)
}

// Signed reports whether requests carry a signature.
func (sg *Signer) Signed() bool { return sg.netbox || len(sg.keys) > 0 }

// Names lists the headers of every request, in a stable order: Content-Type,
// User-Agent, the configured ones, then those set per delivery and attempt
// and the signatures.
func (sg *Signer) Names() []string { return slices.Clone(sg.ordered) }

// Kind says where the value of header name comes from; ok is false for a
// header the Signer does not set.
func (sg *Signer) Kind(name string) (k Kind, ok bool) {
	k, ok = sg.kinds[http.CanonicalHeaderKey(name)]
	return k, ok
}

// Header returns the headers of one attempt of delivery id with body, sent
// at now with traceparent. The result is the caller's.
func (sg *Signer) Header(id int64, body []byte, traceparent string, now time.Time) http.Header {
	h := make(http.Header, len(sg.static)+6)
	for k, v := range sg.static {
		h[k] = v
	}
	ids := strconv.FormatInt(id, 10)
	h[HeaderDelivery] = []string{ids}
	h[HeaderTraceparent] = []string{traceparent}
	if sg.netbox {
		m := sg.macs.Get().(hash.Hash)
		m.Reset()
		m.Write(body)
		var sum [sha512.Size]byte
		h[HeaderSignature] = []string{hex.EncodeToString(m.Sum(sum[:0]))}
		sg.macs.Put(m)
	}
	if len(sg.keys) > 0 {
		ts := now.Unix()
		var b strings.Builder
		for i, key := range sg.keys {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(SignStandard(key, ids, ts, body))
		}
		h[HeaderWebhookID] = []string{ids}
		h[HeaderWebhookTimestamp] = []string{strconv.FormatInt(ts, 10)}
		h[HeaderWebhookSignature] = []string{b.String()}
	}
	return h
}
