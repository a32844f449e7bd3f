"""vLLM's Prometheus metrics for one simulated engine, in its own CollectorRegistry.

Built from the checked list in ``metric_names``; one registry per engine, so many engines
in one process never share a series. Label values: ``model_name`` is the first served name
and ``engine`` is ``"0"``, as a single-engine ``vllm serve`` reports.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from factory_sim.engine.metric_names import (
    FINISH_REASONS,
    SIM_REQUESTS,
    VLLM_METRICS,
    MetricSpec,
    build_1_2_5_buckets,
)

ENGINE_INDEX = "0"
COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


class EngineMetrics:
    """Typed handles on every family; ``render()`` is the /metrics body."""

    def __init__(self, model_name: str, max_model_len: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        labels = (model_name, ENGINE_INDEX)
        made: dict[str, Gauge | Counter | Histogram] = {}
        for spec in VLLM_METRICS:
            made[spec.name] = self._make(spec, max_model_len)
        self._sim_requests = Counter(
            SIM_REQUESTS.name,
            SIM_REQUESTS.documentation,
            labelnames=("path", "model_name"),
            registry=self.registry,
        )

        def gauge(name: str) -> Gauge:
            metric = made[name]
            assert isinstance(metric, Gauge)  # construction invariant, not input validation
            return metric.labels(*labels)

        def counter(name: str) -> Counter:
            metric = made[name]
            assert isinstance(metric, Counter)
            return metric.labels(*labels)

        def histogram(name: str) -> Histogram:
            metric = made[name]
            assert isinstance(metric, Histogram)
            return metric.labels(*labels)

        self.running = gauge("vllm:num_requests_running")
        self.waiting = gauge("vllm:num_requests_waiting")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc")
        self.prefix_queries = counter("vllm:prefix_cache_queries")
        self.prefix_hits = counter("vllm:prefix_cache_hits")
        self.preemptions = counter("vllm:num_preemptions")
        self.prompt_tokens = counter("vllm:prompt_tokens")
        self.generation_tokens = counter("vllm:generation_tokens")
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens")
        self.request_generation_tokens = histogram("vllm:request_generation_tokens")
        self.ttft = histogram("vllm:time_to_first_token_seconds")
        self.itl = histogram("vllm:inter_token_latency_seconds")
        self.e2e = histogram("vllm:e2e_request_latency_seconds")
        self.queue_time = histogram("vllm:request_queue_time_seconds")
        self.inference_time = histogram("vllm:request_inference_time_seconds")
        self.prefill_time = histogram("vllm:request_prefill_time_seconds")
        self.decode_time = histogram("vllm:request_decode_time_seconds")
        success = made["vllm:request_success"]
        assert isinstance(success, Counter)
        # vLLM pre-creates one series per finish reason, so all four exist from the start.
        self.success = {r: success.labels(model_name, ENGINE_INDEX, r) for r in FINISH_REASONS}

    def _make(self, spec: MetricSpec, max_model_len: int) -> Gauge | Counter | Histogram:
        labelnames = ("model_name", "engine", *spec.extra_labels)
        if spec.type == "gauge":
            return Gauge(spec.name, spec.documentation, labelnames, registry=self.registry)
        if spec.type == "counter":
            return Counter(spec.name, spec.documentation, labelnames, registry=self.registry)
        buckets = spec.buckets or build_1_2_5_buckets(max_model_len)
        return Histogram(
            spec.name, spec.documentation, labelnames, registry=self.registry, buckets=buckets
        )

    def count_request(self, path: str, model_name: str) -> None:
        self._sim_requests.labels(path, model_name).inc()

    def totals(self) -> dict[str, int]:
        """Completions received (chat and text) and finished, by reason: the counters a
        test sums over engines that come and go."""
        totals = {"received": 0}
        for family in self.registry.collect():
            if family.name == SIM_REQUESTS.name:
                totals["received"] += sum(
                    int(s.value)
                    for s in family.samples
                    if s.name.endswith("_total") and s.labels["path"] in COMPLETION_PATHS
                )
        for reason in FINISH_REASONS:
            labels = {"model_name": self.model_name, "engine": ENGINE_INDEX}
            value = self.registry.get_sample_value(
                "vllm:request_success_total", {**labels, "finished_reason": reason}
            )
            totals[reason] = int(value or 0)
        return totals

    def render(self) -> bytes:
        return generate_latest(self.registry)
