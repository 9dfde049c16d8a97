package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/walhook/walhook/dispatch/sign"
)

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// cmdVerify checks a webhook signature over a body read on stdin, for
// receiver authors: exit 0 and OK when it matches, 1 and what differs when
// not, 2 for usage errors.
func cmdVerify(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs, path := newFlags("verify", stderr)
	var secrets stringList
	var scheme, sig, id, ts, webhook, bodyFile string
	var tolerance time.Duration
	fs.Var(&secrets, "secret", "the webhook's secret (repeatable: any of them may match); default: the secret(s) of --webhook in the config, or of its only webhook")
	fs.StringVar(&webhook, "webhook", "", "take the secret(s) and scheme of this webhook from the configuration")
	fs.StringVar(&scheme, "scheme", "", "netbox or standard-webhooks (default: from --webhook, else standard-webhooks when --signature starts with v1,)")
	fs.StringVar(&sig, "signature", "", "the X-Hook-Signature or webhook-signature header value")
	fs.StringVar(&id, "id", "", "the webhook-id header (standard-webhooks)")
	fs.StringVar(&ts, "timestamp", "", "the webhook-timestamp header (standard-webhooks)")
	fs.DurationVar(&tolerance, "tolerance", 0, "standard-webhooks: also require webhook-timestamp within this much of now (e.g. 5m; 0: not checked)")
	fs.StringVar(&bodyFile, "body", "", "read the body from this file instead of stdin")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: walhook verify [flags] < body

Checks a webhook signature over the exact request body (read on stdin).
  walhook verify --secret s3cret --signature 9f86d0... < body.json
  walhook verify --secret whsec_... --id 42 --timestamp 1700000000 --signature 'v1,K5o...=' < body.json
  walhook verify -c walhook.yaml --webhook inventory --signature ... < body.json
  walhook verify -c walhook.yaml --signature ... < body.json   (its only webhook)

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if sig == "" {
		return usageErr("--signature is required: the X-Hook-Signature or webhook-signature header as received")
	}
	if webhook == "" && len(secrets) == 0 {
		// Neither --secret nor --webhook: the configuration's webhook, if it
		// has only one (and there is a configuration).
		explicit := false
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "c" || f.Name == "config" })
		if _, err := os.Stat(*path); explicit || err == nil {
			cfg, err := loadConfig(*path)
			if err != nil {
				return err
			}
			if len(cfg.Webhooks) != 1 {
				var names []string
				for _, w := range cfg.Webhooks {
					names = append(names, w.Name)
				}
				return usageErr("%s has %d webhooks (%s): say which with --webhook NAME, or give --secret", *path, len(names), strings.Join(names, ", "))
			}
			webhook = cfg.Webhooks[0].Name
		}
	}
	if webhook != "" {
		cfg, err := loadConfig(*path)
		if err != nil {
			return err
		}
		found := false
		for _, w := range cfg.Webhooks {
			if w.Name != webhook {
				continue
			}
			found = true
			if len(secrets) == 0 {
				secrets = w.SigningSecrets()
			}
			if scheme == "" && w.Signature == sign.SchemeStandard {
				scheme = sign.SchemeStandard
			}
		}
		if !found {
			return usageErr("--webhook: no webhook %q in %s", webhook, *path)
		}
	}
	if len(secrets) == 0 {
		if webhook != "" {
			return usageErr("webhook %q has no secret in %s: its requests are not signed", webhook, *path)
		}
		return usageErr("give the secret with --secret (repeatable), or -c FILE (and --webhook NAME when it has several webhooks) to read it from the configuration")
	}
	if scheme == "" || scheme == sign.SchemeBoth {
		scheme = sign.SchemeNetbox
		if strings.HasPrefix(strings.TrimSpace(sig), "v1,") {
			scheme = sign.SchemeStandard
		}
	}
	if scheme != sign.SchemeNetbox && scheme != sign.SchemeStandard {
		return usageErr("--scheme %q: use netbox or standard-webhooks", scheme)
	}
	if scheme == sign.SchemeStandard && (id == "" || ts == "") {
		return usageErr("standard-webhooks signs webhook-id.webhook-timestamp.body: give --id and --timestamp as received")
	}
	var body []byte
	var err error
	if bodyFile != "" {
		body, err = os.ReadFile(bodyFile)
	} else {
		body, err = io.ReadAll(stdin)
	}
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if scheme == sign.SchemeStandard {
		err = sign.VerifyStandard(secrets, id, ts, sig, body, time.Now(), tolerance)
	} else {
		err = sign.VerifyNetbox(secrets, sig, body)
	}
	if err != nil {
		if bytes.HasSuffix(body, []byte("\n")) {
			err = fmt.Errorf("%w\n(the body read ends with a newline: if the request body did not, pass it without one, e.g. printf '%%s' \"$BODY\")", err)
		}
		return &exitError{code: 1, err: fmt.Errorf("signature mismatch (%s): %w", scheme, err)}
	}
	fmt.Fprintf(stdout, "OK: %s signature matches (%d-byte body)\n", scheme, len(body))
	return nil
}
