"""The Prometheus label set of the engines' series and the vLLM metrics the router reads.

Every engine series carries ``namespace`` and ``pod`` (from service discovery) and the pool
labels ``factory``, ``pool``, ``region``, ``jurisdiction``, copied from the pod's labels
``<prefix>/<name>``. ``pool`` is the pool's own name (``status.pools[].name``), not its
Service's name ``<factory>-<pool>``: a reader that knows a pool by its Service name joins on
``factory`` and ``pool`` (``names.pool_object_name``). Three writers apply the set: the
PodMonitor the operator generates per pool, the chart's fleet-wide PodMonitor and the local
fleet's file_sd targets; a test holds each to ``POOL_SERIES_LABELS``.
"""

from __future__ import annotations

from collections.abc import Mapping

from .names import (
    DEFAULT_PREFIX,
    FACTORY_LABEL,
    JURISDICTION_LABEL,
    POOL_LABEL,
    REGION_LABEL,
    prefixed,
)

NAMESPACE_SERIES_LABEL = "namespace"
POD_SERIES_LABEL = "pod"
POOL_SERIES_LABELS = (FACTORY_LABEL, POOL_LABEL, REGION_LABEL, JURISDICTION_LABEL)
SERIES_LABELS = (NAMESPACE_SERIES_LABEL, POD_SERIES_LABEL, *POOL_SERIES_LABELS)

# vLLM's metrics (docs.vllm.ai "Production Metrics") that the router's load snapshot reads.
NUM_REQUESTS_WAITING = "vllm:num_requests_waiting"
NUM_REQUESTS_RUNNING = "vllm:num_requests_running"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
TTFT_SECONDS_SUM = "vllm:time_to_first_token_seconds_sum"
TTFT_SECONDS_COUNT = "vllm:time_to_first_token_seconds_count"

_POD_LABEL_META = "__meta_kubernetes_pod_label_"


def pod_label_meta(key: str) -> str:
    """The service-discovery label that holds pod label ``key`` (non-alphanumerics as ``_``)."""
    return _POD_LABEL_META + "".join(c if c.isalnum() else "_" for c in key)


def podmonitor_relabelings(prefix: str = DEFAULT_PREFIX) -> list[dict[str, object]]:
    """Prometheus Operator relabelings that copy the pool labels from the pod's labels."""
    return [
        {"sourceLabels": [pod_label_meta(prefixed(name, prefix))], "targetLabel": name}
        for name in POOL_SERIES_LABELS
    ]


def pool_series_labels(
    pod_labels: Mapping[str, str], prefix: str = DEFAULT_PREFIX
) -> dict[str, str]:
    """The pool labels a series of this pod carries ("" for a label the pod lacks, which
    Prometheus treats as absent)."""
    return {name: pod_labels.get(prefixed(name, prefix), "") for name in POOL_SERIES_LABELS}


# The router's per-revision series (what clients saw of each revision of a pool), labelled
# ``REVISION_SERIES_LABELS``; the operator's rollout gates compare canary against stable.
REVISION_SERIES_LABELS = ("namespace", FACTORY_LABEL, POOL_LABEL, "revision")
BACKEND_ATTEMPTS = "factory_router_backend_attempts_total"  # outcome="ok"|"error"
BACKEND_TTFT_SECONDS = "factory_router_backend_ttft_seconds"  # histogram
BACKEND_ITL_SECONDS = "factory_router_backend_itl_seconds"  # histogram
BACKEND_COMPLETION_TOKENS = "factory_router_backend_completion_tokens_total"
BACKEND_STREAM_SECONDS = "factory_router_backend_stream_seconds_total"
