package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSecretFrom(t *testing.T) {
	tests := []struct {
		name       string
		env        map[string]string
		unverified bool
		want       string
		wantErr    string
	}{
		{name: "WALHOOK_SECRET", env: map[string]string{"WALHOOK_SECRET": "s3cret"}, want: "s3cret"},
		{name: "secret wins over -unverified", env: map[string]string{"WALHOOK_SECRET": "s3cret"}, unverified: true, want: "s3cret"},
		{name: "none: refuses", wantErr: "WALHOOK_SECRET is not set"},
		{name: "the old name: refuses and says so", env: map[string]string{"WEBHOOK_SECRET": "s3cret"}, wantErr: "rename it"},
		{name: "none with -unverified", unverified: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := secretFrom(func(k string) string { return tt.env[k] }, tt.unverified)
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
			case err != nil:
				t.Fatal(err)
			case string(got) != tt.want:
				t.Fatalf("secret %q, want %q", got, tt.want)
			}
		})
	}
}

func TestHandlerChecksSignaturesAndDropsRepeats(t *testing.T) {
	var out bytes.Buffer
	srv := httptest.NewServer(handler([]byte("k"), &out, log.New(io.Discard, "", 0)))
	defer srv.Close()
	post := func(id, sig string) int {
		req, _ := http.NewRequest("POST", srv.URL, strings.NewReader("x"))
		req.Header.Set("X-Walhook-Delivery", id)
		req.Header.Set("X-Hook-Signature", sig)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	mac := hmac.New(sha512.New, []byte("k"))
	mac.Write([]byte("x"))
	sig := hex.EncodeToString(mac.Sum(nil))
	if code := post("1", sig); code != http.StatusNoContent {
		t.Errorf("good signature: %d", code)
	}
	if code := post("1", sig); code != http.StatusNoContent || strings.Count(out.String(), "delivery 1:") != 1 {
		t.Errorf("repeat: %d, printed %q", code, out.String())
	}
	if code := post("2", "00"); code != http.StatusUnauthorized || strings.Contains(out.String(), "delivery 2") {
		t.Errorf("bad signature: %d, printed %q", code, out.String())
	}
}
