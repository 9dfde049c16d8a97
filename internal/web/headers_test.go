package web_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/walhook/walhook/dispatch"
	"github.com/walhook/walhook/dispatch/sign"
	"github.com/walhook/walhook/internal/config"
	"github.com/walhook/walhook/internal/web"
)

var pageHeaderRE = regexp.MustCompile(`<tr><td><code>([^<]+)</code></td>`)

// TestDeliveryPageHeadersAreTheSentOnes sends a delivery of each signature
// setting through a real dispatcher and checks that the delivery page lists
// exactly the headers the receiver got, and none of the secrets.
func TestDeliveryPageHeadersAreTheSentOnes(t *testing.T) {
	whsec := func(key string) string {
		return sign.StandardSecretPrefix + base64.StdEncoding.EncodeToString([]byte(key))
	}
	var (
		mu  sync.Mutex
		got = map[string]http.Header{}
	)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got[r.URL.Path] = r.Header.Clone()
		mu.Unlock()
	}))
	t.Cleanup(recv.Close)
	hooks := []config.Webhook{
		{Name: "listed", URL: recv.URL + "/listed", Secrets: []string{"listed-secret-value"}},
		{Name: "standard", URL: recv.URL + "/standard", Signature: sign.SchemeStandard,
			Secrets: []string{whsec("first standard key, 24 b"), whsec("second standard key 24 b")}},
		{Name: "both", URL: recv.URL + "/both", Signature: sign.SchemeBoth, Secret: whsec("the both key of 24 bytes"),
			Headers: map[string]string{"X-Team": "infra-secret-team"}},
		{Name: "plain", URL: recv.URL + "/plain"},
	}
	e := newEnv(t, func(c *config.Config, _ *web.Options) {
		c.Webhooks = hooks
		c.ApplyDefaults()
	})
	ids := map[string]int64{}
	for _, w := range hooks {
		ids[w.Name] = e.insert(row{webhook: w.Name})
	}
	d, err := dispatch.New(dispatch.Options{Pool: e.pool, Config: e.cfg, Version: "test",
		Logger: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == len(hooks) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver got %d of %d deliveries", n, len(hooks))
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	for _, w := range hooks {
		t.Run(w.Name, func(t *testing.T) {
			_, body := do(t, client(t), "GET", fmt.Sprintf("%s/deliveries/%d", e.srv.URL, ids[w.Name]), nil)
			var shown []string
			for _, m := range pageHeaderRE.FindAllStringSubmatch(body, -1) {
				shown = append(shown, http.CanonicalHeaderKey(m[1]))
			}
			var sent []string
			for k := range got["/"+w.Name] {
				switch k {
				case "Content-Length", "Accept-Encoding": // set by Go's client
				default:
					sent = append(sent, k)
				}
			}
			slices.Sort(shown)
			slices.Sort(sent)
			if !slices.Equal(shown, sent) {
				t.Errorf("the page shows the headers %v; the receiver got %v", shown, sent)
			}
			for _, secret := range append(slices.Clone(w.SigningSecrets()), "infra-secret-team") {
				if strings.Contains(body, secret) {
					t.Errorf("the page shows a secret")
				}
			}
			signed := len(w.SigningSecrets()) > 0
			if unsigned := strings.Contains(body, "Unsigned: the webhook has no secret"); unsigned == signed {
				t.Errorf("the page says unsigned=%v for a webhook with %d secrets", unsigned, len(w.SigningSecrets()))
			}
		})
	}
}
