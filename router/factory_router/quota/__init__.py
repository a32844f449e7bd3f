"""Per-tenant quotas: requests per minute, tokens per minute and per day (issue 19 item 2).

- `buckets`: pure. The buckets of a tenant's limits (`buckets_of`), the token estimate of a request
  (`estimate`), token buckets in memory (`LocalBuckets`, the per-replica fallback), the
  429 (`QuotaExceeded`) and OpenAI's `x-ratelimit-*` headers.
- `redis_store`: the same buckets in a shared Redis, one Lua script per decision (check
  and reserve atomically; settle), with tight timeouts.
- `service`: `QuotaService`, what the proxy calls: `admit` before any engine is asked,
  `settle(ticket, actual)` when the answer has ended; a circuit that falls back to the
  per-replica buckets at the first Redis failure and goes back once Redis answers again.

Nothing here imports the rest of the router but `policy` and `metering.usage` (what an
answer used); `app` wires it in.
"""
