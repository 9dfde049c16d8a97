package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/walhook/walhook/internal/clienttls/pkitest"
)

// The shipped config.example.yaml must stay valid.
func TestConfigExampleFileParses(t *testing.T) {
	t.Setenv("INVENTORY_SECRET", "x")
	c, err := Load("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Models) != 2 || len(c.Webhooks) != 1 || c.Webhooks[0].Retry.MaxAttempts != 8 {
		t.Errorf("unexpected example config: %+v", c)
	}
}

// Every commented example of config.example.yaml is valid once uncommented:
// a user who removes the "# " gets a configuration that loads.
func TestExampleFileCommentedOptionsParse(t *testing.T) {
	raw, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	key := regexp.MustCompile(`^(\s*)# ([a-z_]+:.*)$`)
	cont := regexp.MustCompile(`^(\s*)#   ([a-z_]+:.*)$`)
	var out []string
	uncommented, block := 0, false
	for _, line := range strings.Split(string(raw), "\n") {
		if m := key.FindStringSubmatch(line); m != nil {
			out = append(out, m[1]+m[2])
			uncommented++
			// A key with no value on its line opens a block whose
			// commented lines follow, indented.
			v := strings.TrimSpace(strings.SplitN(m[2], "#", 2)[0])
			block = strings.HasSuffix(v, ":")
			continue
		}
		if m := cont.FindStringSubmatch(line); m != nil && block {
			out = append(out, m[1]+"  "+m[2])
			continue
		}
		block = false
		out = append(out, line)
	}
	if uncommented < 5 {
		t.Fatalf("only %d commented options found: has the file's layout changed?", uncommented)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "uncommented.yaml")
	if err := os.WriteFile(path, []byte(strings.Join(out, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	// The tls example's files, relative to the configuration file.
	if err := os.Mkdir(filepath.Join(dir, "certs"), 0o700); err != nil {
		t.Fatal(err)
	}
	ca := pkitest.NewCA(t, "internal CA")
	client := ca.Client("walhook")
	pkitest.Write(t, dir, "certs/internal-ca.pem", ca.PEM)
	pkitest.Write(t, dir, "certs/client.pem", client.CertPEM)
	pkitest.Write(t, dir, "certs/client-key.pem", client.KeyPEM)
	t.Setenv("HOOK_SECRET_NEW", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	t.Setenv("HOOK_SECRET_OLD", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
	if _, err := Load(path); err != nil {
		t.Errorf("config.example.yaml with its %d commented options uncommented does not load:\n%v\n\n%s", uncommented, err, strings.Join(out, "\n"))
	}
}
