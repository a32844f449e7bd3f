"""The operator's Prometheus metrics, created per operator instance (no global registry).

``factory_operator_api_writes_total`` counts every write request the operator sends (apply,
delete, status patch, event): once converged it must stay flat, which is how idempotence is
proven. kopf's own writes (finalizer, last-handled annotation) are not counted here.

The autoscaler's (issue 17): ``inference_factory_pool_desired_replicas`` is its desired count
per pool (what KEDA or an HPA consumes in mode external; named by the CRD's description),
``factory_operator_capacity_pressure_missing_{requests,replicas}`` what a jurisdiction's pools
at their ceiling cannot take (0 when nothing is missing), ``factory_operator_scale_events``
its decisions that changed a count (a flapping pool shows as a fast-growing counter).

Unit economics (issue 19, item 4): ``factory_operator_accelerator_price_per_hour`` and
``factory_operator_accelerator_power_watts`` per region and accelerator type (each
FleetRegion's ``spec.pricing`` and ``spec.power``), and
``factory_operator_pool_accelerators``, the accelerators one replica of a pool takes, labelled
with its model and accelerator kind and type: the recording rules of deploy/monitoring join
them with ``factory_operator_pool_replicas`` and the engines' token counters into cost per
million tokens and tokens per joule.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CONDITION_STATUSES = ("True", "False", "Unknown")  # a condition's status: one gauge each
ROLLOUT_PHASES = ("Stable", "Progressing", "Paused", "Promoting", "RolledBack")
POOL_ECONOMICS_LABELS = [
    "namespace",
    "factory",
    "pool",
    "region",
    "jurisdiction",
    "model",
    "accelerator_kind",
    "accelerator_type",
]


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

        self.desired_replicas = Gauge(
            "inference_factory_pool_desired_replicas",
            "Replicas the autoscaler wants for the pool (mode external: for KEDA/HPA).",
            ["namespace", "factory", "pool", "region", "jurisdiction", "mode"],
            registry=self.registry,
        )
        self.missing_requests = Gauge(
            "factory_operator_capacity_pressure_missing_requests",
            "Requests a jurisdiction's pools, all at their ceiling, cannot take (0: none).",
            ["namespace", "factory", "jurisdiction"],
            registry=self.registry,
        )
        self.missing_replicas = Gauge(
            "factory_operator_capacity_pressure_missing_replicas",
            "The same, in replicas of the jurisdiction's preferred pool.",
            ["namespace", "factory", "jurisdiction"],
            registry=self.registry,
        )
        self.scale_events = Counter(
            "factory_operator_scale_events",
            "Autoscaler decisions that changed a pool's (desired) count.",
            ["namespace", "factory", "pool", "direction"],
            registry=self.registry,
        )
        self.price_per_hour = Gauge(
            "factory_operator_accelerator_price_per_hour",
            "Price of one accelerator-hour in USD (FleetRegion spec.pricing).",
            ["region", "accelerator_type"],
            registry=self.registry,
        )
        self.power_watts = Gauge(
            "factory_operator_accelerator_power_watts",
            "Power draw of one accelerator in watts (FleetRegion spec.power).",
            ["region", "accelerator_type"],
            registry=self.registry,
        )
        self.pool_accelerators = Gauge(
            "factory_operator_pool_accelerators",
            "Accelerators per replica of the pool (GPUs, or Neuron devices).",
            POOL_ECONOMICS_LABELS,
            registry=self.registry,
        )
        self.rollout_phase = Gauge(
            "factory_operator_rollout_phase",
            "1 on the phase the factory's rollout is in (Stable, Progressing, Paused, "
            "Promoting, RolledBack), 0 on the others.",
            ["namespace", "factory", "phase"],
            registry=self.registry,
        )
        self.rollout_step_entered = Gauge(
            "factory_operator_rollout_step_entered_timestamp_seconds",
            "When the rollout entered the step in progress (Unix time; 0 when none is).",
            ["namespace", "factory"],
            registry=self.registry,
        )
        self.canary_weight = Gauge(
            "factory_operator_rollout_canary_weight",
            "Percent of the pool's traffic the router sends to its canary.",
            ["namespace", "factory", "pool"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "factory_operator_rollout_rollbacks",
            "Rollouts rolled back, by the check that failed.",
            ["namespace", "factory", "check"],
            registry=self.registry,
        )
        # Series exported per factory for the gauges above, removed when they no longer apply.
        self._scaled: dict[tuple[str, str], set[tuple[str, ...]]] = {}
        self._pressured: dict[tuple[str, str], set[str]] = {}
        self._priced: set[tuple[str, str]] = set()
        self._powered: set[tuple[str, str]] = set()
        self._equipped: dict[tuple[str, str], set[tuple[str, ...]]] = {}
        self._canaries: dict[tuple[str, str], set[str]] = {}

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

    def set_autoscaling(
        self,
        namespace: str,
        factory: str,
        desired: Mapping[tuple[str, str, str, str], int],
        missing: Mapping[str, tuple[float, int]] | None,
    ) -> None:
        """Export one factory's autoscaler outcome, replacing what it exported before.

        ``desired``: (pool, region, jurisdiction, mode) -> desired replicas; ``missing``:
        jurisdiction -> (requests, replicas) missing, 0 for one without pressure; None keeps
        what was exported."""
        key = (namespace, factory)
        for labels in self._scaled.pop(key, set()) - set(desired):
            self.desired_replicas.remove(namespace, factory, *labels)
        for labels, value in desired.items():
            self.desired_replicas.labels(namespace, factory, *labels).set(value)
        self._scaled[key] = set(desired)
        if missing is None:
            return
        for jurisdiction in self._pressured.pop(key, set()) - set(missing):
            self.missing_requests.remove(namespace, factory, jurisdiction)
            self.missing_replicas.remove(namespace, factory, jurisdiction)
        for jurisdiction, (requests, replicas) in missing.items():
            self.missing_requests.labels(namespace, factory, jurisdiction).set(requests)
            self.missing_replicas.labels(namespace, factory, jurisdiction).set(replicas)
        self._pressured[key] = set(missing)

    def set_region_economics(
        self,
        prices: Mapping[tuple[str, str], float],
        power: Mapping[tuple[str, str], float],
    ) -> None:
        """Export every region's price and power per accelerator type, (region, type) ->
        value, replacing what was exported before (a type dropped from a region goes)."""
        for gauge, values, known in (
            (self.price_per_hour, prices, self._priced),
            (self.power_watts, power, self._powered),
        ):
            for labels in known - set(values):
                gauge.remove(*labels)
            for labels, value in values.items():
                gauge.labels(*labels).set(value)
            known.clear()
            known.update(values)

    def set_pool_accelerators(
        self, namespace: str, factory: str, pools: Mapping[tuple[str, ...], int]
    ) -> None:
        """Export one factory's accelerators per replica, (pool, region, jurisdiction, model,
        kind, type) -> count, replacing what it exported before."""
        key = (namespace, factory)
        for labels in self._equipped.pop(key, set()) - set(pools):
            self.pool_accelerators.remove(namespace, factory, *labels)
        for labels, count in pools.items():
            self.pool_accelerators.labels(namespace, factory, *labels).set(count)
        if pools:
            self._equipped[key] = set(pools)

    def set_rollout(
        self,
        namespace: str,
        factory: str,
        phase: str | None,
        entered: float,
        weights: Mapping[str, int],
    ) -> None:
        """Export one factory's rollout: its phase (None: no rollout status), when its step
        began, and each canary pool's weight (pools without a canary lose their series)."""
        for value in ROLLOUT_PHASES:
            if phase is None:
                self.rollout_phase.remove(namespace, factory, value)
            else:
                self.rollout_phase.labels(namespace, factory, value).set(int(value == phase))
        if phase is None:
            self.rollout_step_entered.remove(namespace, factory)
        else:
            self.rollout_step_entered.labels(namespace, factory).set(entered)
        key = (namespace, factory)
        for pool in self._canaries.pop(key, set()) - set(weights):
            self.canary_weight.remove(namespace, factory, pool)
        for pool, weight in weights.items():
            self.canary_weight.labels(namespace, factory, pool).set(weight)
        if weights:
            self._canaries[key] = set(weights)

    def forget_factory(self, namespace: str, factory: str) -> None:
        """Remove a deleted factory's condition and autoscaler series."""
        for key in [k for k in self._reasons if k[:2] == (namespace, factory)]:
            reason = self._reasons.pop(key)
            for value in CONDITION_STATUSES:
                self.condition.remove(namespace, factory, key[2], value, reason)
        self.set_autoscaling(namespace, factory, {}, {})
        self.set_pool_accelerators(namespace, factory, {})
        self.set_rollout(namespace, factory, None, 0.0, {})
        self._scaled.pop((namespace, factory), None)
        self._pressured.pop((namespace, factory), None)

    def writes_total(self) -> float:
        """Sum of all write requests so far (for tests and benchmarks)."""
        return sum(
            s.value
            for m in self.api_writes.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
