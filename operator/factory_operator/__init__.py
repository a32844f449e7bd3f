"""Inference Factory operator: InferenceFactory and FleetRegion reconciled into vLLM pools.

Layers, highest first (enforced by import-linter, see ``.importlinter``):

- ``main``: the ``factory-operator`` console entry point (flags, logging, /metrics, kopf.run).
- ``handlers``: thin kopf glue; every handler calls the same reconcile.
- ``k8s``: I/O against the API server (observe, server-side apply, delete, status patch).
- ``plan``: pure functions: desired children and status from spec + observed state.
- ``api``: pydantic models (the single source of the CRDs), errors, CRD generation.
"""
