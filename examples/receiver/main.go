// Command receiver is a minimal webhook receiver for trying walhook: it
// checks X-Hook-Signature (hex HMAC-SHA512 of the body, keyed with
// $WALHOOK_SECRET, the variable the README's walhook.yaml reads), drops
// repeats of a delivery it already accepted (X-Walhook-Delivery), and prints
// each body. Without a secret it refuses to start, unless -unverified says
// to accept every request unchecked.
//
//	WALHOOK_SECRET=change-me go run ./examples/receiver   # listens on :8080
//	go run ./examples/receiver -unverified                # no signature check
package main

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sync"
	"time"
)

// secretVar is the environment variable that holds the secret.
const secretVar = "WALHOOK_SECRET"

// validSignature reports whether sig is the hex HMAC-SHA512 of body keyed
// with secret. It compares in constant time.
func validSignature(secret, body []byte, sig string) bool {
	mac := hmac.New(sha512.New, secret)
	mac.Write(body)
	want := hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(want), []byte(sig))
}

// secretFrom returns the secret from the environment, or nil with
// unverified; without either it says what to do.
func secretFrom(getenv func(string) string, unverified bool) ([]byte, error) {
	secret := getenv(secretVar)
	switch {
	case secret != "":
		return []byte(secret), nil
	case unverified:
		return nil, nil
	case getenv("WEBHOOK_SECRET") != "":
		return nil, fmt.Errorf("WEBHOOK_SECRET is set but the receiver reads %s (the variable walhook.yaml uses): rename it", secretVar)
	}
	return nil, fmt.Errorf("%s is not set: set it to the webhook's secret, or pass -unverified to accept every request without checking its signature", secretVar)
}

// handler checks each request's signature (unless secret is nil), prints
// the body of each new delivery to out and ignores repeats.
func handler(secret []byte, out io.Writer, logger *log.Logger) http.Handler {
	var mu sync.Mutex
	seen := map[string]bool{}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 10<<20))
		if err != nil {
			http.Error(w, "read body", http.StatusBadRequest)
			return
		}
		if secret != nil && !validSignature(secret, body, r.Header.Get("X-Hook-Signature")) {
			logger.Printf("rejected delivery %s: bad X-Hook-Signature", r.Header.Get("X-Walhook-Delivery"))
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		id := r.Header.Get("X-Walhook-Delivery")
		mu.Lock()
		dup := seen[id]
		seen[id] = true
		mu.Unlock()
		if dup {
			logger.Printf("delivery %s again (already processed): ignored", id)
		} else {
			fmt.Fprintf(out, "delivery %s: %s\n", id, body)
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

func main() {
	fs := flag.NewFlagSet("receiver", flag.ContinueOnError)
	unverified := fs.Bool("unverified", false, "accept every request without checking X-Hook-Signature (when "+secretVar+" is not set)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		os.Exit(2)
	}
	secret, err := secretFrom(os.Getenv, *unverified)
	if err != nil {
		fmt.Fprintln(os.Stderr, "receiver:", err)
		os.Exit(2)
	}
	addr := os.Getenv("LISTEN")
	if addr == "" {
		addr = ":8080"
	}
	logger := log.New(os.Stderr, "", log.LstdFlags)
	if secret == nil {
		logger.Printf("receiver listening on %s WITHOUT checking signatures (-unverified): it accepts every request", addr)
	} else {
		logger.Printf("receiver listening on %s, checking X-Hook-Signature with %s", addr, secretVar)
	}
	srv := &http.Server{Addr: addr, Handler: handler(secret, os.Stdout, logger), ReadHeaderTimeout: 10 * time.Second}
	logger.Fatal(srv.ListenAndServe())
}
