// Package dispatch drains walhook's outbox: it claims due deliveries from
// <schema>.deliveries with FOR UPDATE SKIP LOCKED, sends each one as a signed
// HTTP request, and records the outcome (delivered, retry later with
// exponential backoff, or failed after the last attempt). See SPEC §3 and §5.
//
// A Dispatcher is woken by NOTIFY on migrations.Channel(schema), falls back to
// a poll every dispatch.poll_interval, keeps at most dispatch.concurrency
// requests in flight across all webhooks, and never sends a delivery while an
// earlier change of the same webhook and object (model + object_key) is still
// pending or being delivered. Claimed rows carry a lease (locked_until) and
// the claiming dispatcher's heartbeat (walhook.dispatchers): rows of a
// dispatcher that stopped beating are taken back by any running Dispatcher
// within seconds (docs/queue.md). Several Dispatchers, in one process or
// many, may drain one outbox at once. Each webhook has its own request cap,
// optional rate limit and circuit breaker.
//
// The headers and signatures of each request are built by package
// dispatch/sign, which the delivery page uses too.
//
// Outcomes are written in batches, one UPDATE per batch; a row's outcome is
// written only while the row is still the claim this sender made.
// Options.Observer, when set, is told the outcome, duration and commit time
// of every attempt (walhook's Prometheus metrics). Each outcome is logged:
// delivered at debug, failed attempts at warn, without bodies or secrets.
//
// Delivery is at least once: a crash between a receiver's 2xx and the row's
// update resends the delivery with the same X-Walhook-Delivery header.
//
// Requeue is the library side of `walhook retry`; the SQL equivalent
//
//	UPDATE walhook.deliveries SET state = 'pending', next_attempt_at = now() WHERE state = 'failed';
//
// works as well, without restarting anything.
package dispatch
