-- A circuit breaker closed: the receiver of webhook $1 answers again, so
-- its rows waiting for a retry are due now.
UPDATE {{deliveries}}
SET next_attempt_at = now()
WHERE webhook = $1 AND state = 'pending' AND next_attempt_at > now()
