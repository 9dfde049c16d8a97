// Command receiver is a minimal webhook receiver for trying walhook: it
// checks X-Hook-Signature (hex HMAC-SHA512 of the body, keyed with
// $WEBHOOK_SECRET), drops repeats of a delivery it already accepted
// (X-Walhook-Delivery), and prints each body.
//
//	WEBHOOK_SECRET=change-me go run ./examples/receiver   # listens on :8080
package main

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sync"
)

// validSignature reports whether sig is the hex HMAC-SHA512 of body keyed
// with secret. It compares in constant time.
func validSignature(secret, body []byte, sig string) bool {
	mac := hmac.New(sha512.New, secret)
	mac.Write(body)
	want := hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(want), []byte(sig))
}

func main() {
	secret := []byte(os.Getenv("WEBHOOK_SECRET"))
	addr := os.Getenv("LISTEN")
	if addr == "" {
		addr = ":8080"
	}
	var mu sync.Mutex
	seen := map[string]bool{}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 10<<20))
		if err != nil {
			http.Error(w, "read body", http.StatusBadRequest)
			return
		}
		if len(secret) > 0 && !validSignature(secret, body, r.Header.Get("X-Hook-Signature")) {
			log.Printf("rejected delivery %s: bad X-Hook-Signature", r.Header.Get("X-Walhook-Delivery"))
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		id := r.Header.Get("X-Walhook-Delivery")
		mu.Lock()
		dup := seen[id]
		seen[id] = true
		mu.Unlock()
		if dup {
			log.Printf("delivery %s again (already processed): ignored", id)
		} else {
			fmt.Printf("delivery %s: %s\n", id, body)
		}
		w.WriteHeader(http.StatusNoContent)
	})
	log.Printf("receiver listening on %s (signature check %v)", addr, len(secret) > 0)
	log.Fatal(http.ListenAndServe(addr, nil))
}
