// Package web serves walhook's HTTP endpoints on http.listen: Prometheus
// metrics (/metrics, from a registry of its own), liveness (/healthz) and
// readiness (/readyz) probes, and a server-rendered status page that lists
// deliveries and re-queues failed ones.
//
// Metrics is the cdc.Observer and dispatch.Observer of a process. The
// outbox depth, the oldest pending delivery and the slot lag are read from
// the database at scrape time (at most once a second, with a timeout), by
// index-only scans of the outbox's partial indexes; delivered rows are
// never counted.
//
// Security: with http.token set, everything but /healthz needs the token,
// as "Authorization: Bearer <token>" or through the login form, which sets
// an HttpOnly, SameSite=Strict session cookie. Without a token (which the
// configuration allows only on a loopback address) requests must name a
// loopback host, which defeats DNS rebinding. State-changing requests are
// POST forms carrying a CSRF token (an HMAC of the session id with a
// per-process key) and pass net/http's cross-origin protection; requests
// authenticated by a bearer header need no CSRF token. Pages are
// html/template output (payloads are untrusted data) under a strict
// Content-Security-Policy, and are never cached.
package web
