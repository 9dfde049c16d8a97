package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walhook/walhook/dispatch/sign"
)

func runVerify(t *testing.T, body string, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := cmdVerify(args, strings.NewReader(body), &out, &errb)
	if err == nil {
		return out.String(), 0
	}
	var ee *exitError
	if !errors.As(err, &ee) {
		t.Fatalf("error %T: %v", err, err)
	}
	return err.Error(), ee.code
}

func TestVerify(t *testing.T) {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	const body = `{"test": 2432232314}`
	std := []string{"--secret", secret, "--id", "msg_p5jXN8AQM9LWM0D4loKWxJek", "--timestamp", "1614265330"}
	cases := []struct {
		name string
		body string
		args []string
		code int
		want string
	}{
		{"standard vector", body, append(std, "--signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="), 0, "OK: standard-webhooks"},
		{"standard, one of several", body, append(std, "--signature", "v1,AAAA v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="), 0, "OK"},
		{"standard rotated secret", body, append([]string{"--secret", "whsec_AAAAAAAAAAAAAAAAAAAAAAAA"}, append(std, "--signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")...), 0, "OK"},
		{"standard mismatch", body + "\n", append(std, "--signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="), 1, "ends with a newline"},
		{"standard stale", body, append(std, "--tolerance", "5m", "--signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="), 1, "tolerance"},
		{"standard needs id", body, []string{"--secret", secret, "--signature", "v1,x"}, 2, "--id and --timestamp"},
		{"netbox", "x", []string{"--secret", "k", "--signature", sign.Sign("k", []byte("x"))}, 0, "OK: netbox"},
		{"netbox mismatch", "y", []string{"--secret", "k", "--signature", sign.Sign("k", []byte("x"))}, 1, "X-Hook-Signature does not match"},
		{"no signature", "x", []string{"--secret", "k"}, 2, "--signature is required"},
		{"no secret", "x", []string{"--signature", "ab"}, 2, "--secret"},
	}
	for _, c := range cases {
		out, code := runVerify(t, c.body, c.args...)
		if code != c.code || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d %q, want %d %q", c.name, code, out, c.code, c.want)
		}
	}
}

func TestVerifyFromConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "walhook.yaml")
	cfg := `database: {dsn: "postgres://h/db"}
models: [{table: t}]
webhooks:
  - name: w
    url: https://h/
    signature: standard-webhooks
    secrets: [whsec_AAAAAAAAAAAAAAAAAAAAAAAA, whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw]
`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	out, code := runVerify(t, `{"test": 2432232314}`, "-c", path, "--webhook", "w", "--id", "msg_p5jXN8AQM9LWM0D4loKWxJek",
		"--timestamp", "1614265330", "--signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if _, code := runVerify(t, "x", "-c", path, "--webhook", "nope", "--signature", "v1,x"); code != 2 {
		t.Errorf("unknown webhook: exit %d", code)
	}
}

// With -c and no --secret or --webhook, verify uses the configuration's
// only webhook; with several it asks which.
func TestVerifyTheOnlyWebhook(t *testing.T) {
	dir := t.TempDir()
	one := filepath.Join(dir, "one.yaml")
	two := filepath.Join(dir, "two.yaml")
	base := "database: {dsn: \"postgres://h/db\"}\nmodels: [{table: t}]\nwebhooks:\n  - {name: a, url: \"https://h/\", secret: k}\n"
	if err := os.WriteFile(one, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(two, []byte(base+"  - {name: b, url: \"https://h/\", secret: j}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sig := sign.Sign("k", []byte("x"))
	if out, code := runVerify(t, "x", "-c", one, "--signature", sig); code != 0 || !strings.Contains(out, "OK") {
		t.Errorf("one webhook: exit %d %q", code, out)
	}
	if out, code := runVerify(t, "x", "--signature", sig, "-c", two); code != 2 || !strings.Contains(out, "2 webhooks (a, b)") {
		t.Errorf("two webhooks: exit %d %q", code, out)
	}
	if out, code := runVerify(t, "x", "-c", two, "--webhook", "a", "--signature", sig); code != 0 {
		t.Errorf("two webhooks, --webhook a: exit %d %q", code, out)
	}
}
