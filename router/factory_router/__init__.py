"""factory_router: one OpenAI-compatible endpoint that routes by sovereignty, latency and load.

Layers, highest first (checked by import-linter, see `.importlinter`):

- `main`: the `factory-router` console script (settings, process lifecycle).
- `app`: the HTTP/1.1 server, OpenAI endpoints, proxying, admin, metrics, logs.
- `upstream` | `signals` | `discovery`: I/O towards engines, Prometheus, Kubernetes/files.
- `policy`: pure logic: tenants and residency, candidate filtering, scoring, baseline
  policies, prefix affinity, retry budget and ejection state machines, the error model,
  and the one place where timeouts and limits are defined.
"""
