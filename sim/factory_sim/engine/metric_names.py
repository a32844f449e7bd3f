"""The vLLM metric families this simulator exposes, checked against vLLM's own source.

Checked against ``vllm/v1/metrics/loggers.py`` (class ``PrometheusStatLogger``) as of the
vLLM 0.12/0.13 line: read from a fork that tracks vLLM main (1CatAI/1Cat-vLLM, commit
92a785cb21e2, which already carries ``vllm:inter_token_latency_seconds``, introduced when
``vllm:time_per_output_token_seconds`` was deprecated) and cross-checked with upstream
vllm-project/vllm commits a6f0308c and 005a810b for the older families. Finish reasons from
``vllm/v1/engine/__init__.py`` (``FINISH_REASON_STRINGS``). Every family carries the labels
``model_name`` and ``engine``; prometheus_client appends ``_total`` to counter samples, so
``vllm:prompt_tokens`` is scraped as ``vllm:prompt_tokens_total``. Every family here is also
compared with a live vLLM 0.32 (the pinned CPU build) by
``tests/integration/vllm/test_sim_conformance.py``: same name, type, labels and buckets.

Names here are family names as ``prometheus_client.parser`` reports them (no ``_total``).
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

MetricType = Literal["gauge", "counter", "histogram"]


class MetricSpec(NamedTuple):
    name: str
    type: MetricType
    documentation: str
    extra_labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None  # None for 1-2-5 buckets up to max_model_len


BASE_LABELS: Final = ("model_name", "engine")
FINISH_REASONS: Final = ("stop", "length", "abort", "error")

TTFT_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS: Final = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
REQUEST_LATENCY_BUCKETS: Final = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)

VLLM_METRICS: Final = (
    MetricSpec(
        "vllm:num_requests_running", "gauge", "Number of requests in model execution batches."
    ),
    MetricSpec("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    MetricSpec("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."),
    MetricSpec(
        "vllm:prefix_cache_queries",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
    ),
    MetricSpec(
        "vllm:prefix_cache_hits",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
    ),
    MetricSpec(
        "vllm:num_preemptions", "counter", "Cumulative number of preemption from the engine."
    ),
    MetricSpec("vllm:prompt_tokens", "counter", "Number of prefill tokens processed."),
    MetricSpec("vllm:generation_tokens", "counter", "Number of generation tokens processed."),
    MetricSpec(
        "vllm:request_success",
        "counter",
        "Count of successfully processed requests.",
        extra_labels=("finished_reason",),
    ),
    MetricSpec("vllm:request_prompt_tokens", "histogram", "Number of prefill tokens processed."),
    MetricSpec(
        "vllm:request_generation_tokens", "histogram", "Number of generation tokens processed."
    ),
    MetricSpec(
        "vllm:time_to_first_token_seconds",
        "histogram",
        "Histogram of time to first token in seconds.",
        buckets=TTFT_BUCKETS,
    ),
    MetricSpec(
        "vllm:inter_token_latency_seconds",
        "histogram",
        "Histogram of inter-token latency in seconds.",
        buckets=ITL_BUCKETS,
    ),
    MetricSpec(
        "vllm:e2e_request_latency_seconds",
        "histogram",
        "Histogram of e2e request latency in seconds.",
        buckets=REQUEST_LATENCY_BUCKETS,
    ),
    MetricSpec(
        "vllm:request_queue_time_seconds",
        "histogram",
        "Histogram of time spent in WAITING phase for request.",
        buckets=REQUEST_LATENCY_BUCKETS,
    ),
    MetricSpec(
        "vllm:request_inference_time_seconds",
        "histogram",
        "Histogram of time spent in RUNNING phase for request.",
        buckets=REQUEST_LATENCY_BUCKETS,
    ),
    MetricSpec(
        "vllm:request_prefill_time_seconds",
        "histogram",
        "Histogram of time spent in PREFILL phase for request.",
        buckets=REQUEST_LATENCY_BUCKETS,
    ),
    MetricSpec(
        "vllm:request_decode_time_seconds",
        "histogram",
        "Histogram of time spent in DECODE phase for request.",
        buckets=REQUEST_LATENCY_BUCKETS,
    ),
)

# The simulator's own family (not vLLM's): requests received per HTTP path.
SIM_REQUESTS = MetricSpec(
    "factory_sim_requests",
    "counter",
    "Requests received by the simulated engine, per path.",
    extra_labels=("path",),
)


def build_1_2_5_buckets(max_value: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value``: vLLM's token-count buckets."""
    buckets: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return tuple(buckets)
            buckets.append(float(value))
        exponent += 1
