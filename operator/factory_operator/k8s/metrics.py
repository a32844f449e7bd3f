"""The operator's Prometheus metrics, created per operator instance (no global registry).

``factory_operator_api_writes_total`` counts every write request the operator sends (apply,
delete, status patch, event): once converged it must stay flat, which is how idempotence is
proven. kopf's own writes (finalizer, last-handled annotation) are not counted here.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CONDITION_STATUSES = ("True", "False", "Unknown")  # a condition's status: one gauge each


class OperatorMetrics:
    """All metrics of one operator, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.api_writes = Counter(
            "factory_operator_api_writes",
            "Write requests sent to the API server.",
            ["verb", "kind"],
            registry=self.registry,
        )
        self.api_reads = Counter(
            "factory_operator_api_reads",
            "Read requests sent to the API server.",
            ["kind"],
            registry=self.registry,
        )
        self.reconciles = Counter(
            "factory_operator_reconciles",
            "Reconciles by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "factory_operator_reconcile_seconds", "Reconcile duration.", registry=self.registry
        )
        self.condition = Gauge(
            "factory_operator_factory_condition",
            "1 when the factory's condition has this status.",
            ["namespace", "factory", "type", "status", "reason"],
            registry=self.registry,
        )
        self.replicas = Gauge(
            "factory_operator_pool_replicas",
            "Desired and ready replicas.",
            ["namespace", "factory", "pool", "region", "jurisdiction", "kind"],
            registry=self.registry,
        )

        # The reason last exported per (namespace, factory, condition type): a condition has
        # one reason at a time, so the series of the previous reason is removed, not left at
        # its last value (which would keep alerts firing after recovery).
        self._reasons: dict[tuple[str, str, str], str] = {}

    def set_condition(
        self, namespace: str, factory: str, kind: str, status: str, reason: str
    ) -> None:
        """Export one condition: 1 on its status, 0 on the others, under its reason only."""
        key = (namespace, factory, kind)
        previous = self._reasons.get(key)
        if previous is not None and previous != reason:
            for value in CONDITION_STATUSES:
                self.condition.remove(namespace, factory, kind, value, previous)
        self._reasons[key] = reason
        for value in CONDITION_STATUSES:
            self.condition.labels(namespace, factory, kind, value, reason).set(
                1 if value == status else 0
            )

    def forget_factory(self, namespace: str, factory: str) -> None:
        """Remove a deleted factory's condition series."""
        for key in [k for k in self._reasons if k[:2] == (namespace, factory)]:
            reason = self._reasons.pop(key)
            for value in CONDITION_STATUSES:
                self.condition.remove(namespace, factory, key[2], value, reason)

    def writes_total(self) -> float:
        """Sum of all write requests so far (for tests and benchmarks)."""
        return sum(
            s.value
            for m in self.api_writes.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
