"""The operator's condition gauges follow the condition's current reason only."""

from __future__ import annotations

from factory_operator.k8s import OperatorMetrics


def _series(metrics: OperatorMetrics) -> dict[tuple[str, ...], float]:
    return {
        tuple(s.labels[k] for k in ("factory", "type", "status", "reason")): s.value
        for m in metrics.condition.collect()
        for s in m.samples
    }


def test_a_changed_reason_replaces_the_old_series() -> None:
    metrics = OperatorMetrics()
    metrics.set_condition("ns", "llama", "Ready", "False", "PoolsNotReady")
    metrics.set_condition("ns", "llama", "Ready", "True", "AllPoolsReady")
    series = _series(metrics)
    assert series[("llama", "Ready", "True", "AllPoolsReady")] == 1
    assert series[("llama", "Ready", "False", "AllPoolsReady")] == 0
    assert not any(key[3] == "PoolsNotReady" for key in series)


def test_a_deleted_factory_leaves_no_condition_series() -> None:
    metrics = OperatorMetrics()
    metrics.set_condition("ns", "llama", "Ready", "True", "AllPoolsReady")
    metrics.set_condition("ns", "qwen", "Ready", "True", "AllPoolsReady")
    metrics.forget_factory("ns", "llama")
    assert {key[0] for key in _series(metrics)} == {"qwen"}
