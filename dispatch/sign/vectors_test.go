package sign_test

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"testing"

	"github.com/walhook/walhook/dispatch/sign"
)

func TestSign(t *testing.T) {
	tests := []struct {
		name, secret, body string
		want               string // "" means: compute independently
	}{
		// Vectors computed with: printf '%s' BODY | openssl dgst -sha512 -hmac SECRET
		{name: "openssl netbox body", secret: "It's a secret!",
			body: `{"event": "created", "model": "Site", "data": {"id": 1}}`,
			want: "411b84837908fdc5d066c467c19a7d4cb32bdeb443503ccafa7c3abe8db99a6f5b36e8fd34219819a7a2c930a4b1cee14292bd967fba8f82bf5382f6ef09003c"},
		{name: "openssl short", secret: "key", body: "abc",
			want: "3926a207c8c42b0c41792cbd3e1a1aaaf5f7a25704f62dfc939c4987dd7ce060009c5bb1c2447355b3216f10b537e9afa7b64a4e5391b0d631172d07939e087a"},
		{name: "utf-8 secret", secret: "søcrét ✓", body: `{"name":"Zürich"}`},
		{name: "empty body", secret: "s", body: ""},
		{name: "long secret", secret: string(make([]byte, 300)), body: "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := hmac.New(sha512.New, []byte(tt.secret))
			m.Write([]byte(tt.body))
			independent := hex.EncodeToString(m.Sum(nil))
			got := sign.Sign(tt.secret, []byte(tt.body))
			if got != independent {
				t.Errorf("Sign = %s, crypto/hmac says %s", got, independent)
			}
			if tt.want != "" && got != tt.want {
				t.Errorf("Sign = %s, want %s", got, tt.want)
			}
		})
	}
}

func ExampleSign() {
	// A receiver verifies X-Hook-Signature by computing the same value over
	// the raw request body with its copy of the secret.
	fmt.Println(sign.Sign("key", []byte("abc")))
	// Output: 3926a207c8c42b0c41792cbd3e1a1aaaf5f7a25704f62dfc939c4987dd7ce060009c5bb1c2447355b3216f10b537e9afa7b64a4e5391b0d631172d07939e087a
}
