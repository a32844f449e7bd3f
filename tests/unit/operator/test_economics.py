"""Unit economics (issue 19, item 4): the cost formula, each pool's cost in status (written by
the economics timer only, kept by every other reconcile), and the operator's price, power and
accelerator gauges."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import LATER, REGIONS, factory, pool
from test_plan_status import _running

from factory_operator.api import FleetRegion, InferenceFactory
from factory_operator.k8s import OperatorMetrics
from factory_operator.k8s.economics import (
    TokenReader,
    refresh_economics,
    tokens_from_vector,
    tokens_query,
)
from factory_operator.plan import OperatorSettings, plan_factory
from factory_operator.plan.economics import cost_per_million_tokens, pool_costs

Obj = dict[str, Any]


def priced(name: str, jurisdiction: str, pricing: dict[str, float]) -> FleetRegion:
    return FleetRegion.model_validate(
        {
            "metadata": {"name": name},
            "spec": {"jurisdiction": jurisdiction, "pricing": pricing, "power": {"H100": 700}},
        }
    )


PRICED = {**REGIONS, "eu-west-1": priced("eu-west-1", "EU", {"H100": 7.57, "inf2": 1.19})}
POOLS = [pool("dub", "eu-west-1", count=2, replicas=2), pool("us", "us-east-1")]


def test_cost_per_million_tokens_bills_every_replica() -> None:
    # 2 replicas x 2 H100 at 7.57 USD/h = 30.28 USD/h for 1,000 tokens/s = 3.6 Mtok/h.
    assert cost_per_million_tokens(7.57, 2, 2, 1000.0) == pytest.approx(30.28 / 3.6)
    assert cost_per_million_tokens(7.57, 2, 2, 0.0) is None  # no token: no cost, not infinity
    assert cost_per_million_tokens(7.57, 2, 0, 10.0) is None


def _converged(settings: OperatorSettings) -> InferenceFactory:
    observed = _running(factory(POOLS), settings)
    plan = plan_factory(factory(POOLS), PRICED, observed, settings)
    return factory(POOLS, status=plan.status.to_wire())


def test_pool_costs_from_ready_replicas_price_and_tokens(settings: OperatorSettings) -> None:
    live = _converged(settings)
    costs = pool_costs(live, PRICED, {"dub": 1000.0, "us": 50.0})
    assert costs == {"dub": 8.411, "us": None}  # us-east-1 has no price: no cost
    assert pool_costs(live, PRICED, {}) == {"dub": None, "us": None}


class FakeKube:
    """``patch_status`` over one factory in memory (merge patch: top-level keys replaced)."""

    def __init__(self, body: Obj) -> None:
        self.body = body
        self.patches: list[Obj] = []

    async def patch_status(
        self, api_version: str, kind: str, name: str, namespace: str | None, status: Obj
    ) -> Obj:
        self.patches.append(status)
        self.body = {**self.body, "status": {**self.body.get("status", {}), **status}}
        return self.body


AT = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)  # LATER


def _reader(rates: dict[str, float]) -> TokenReader:
    def query(promql: str, at: float) -> list[Obj]:
        assert promql == tokens_query("ml", "llama")
        assert at == AT.timestamp()  # evaluated at the time status will show
        return [{"metric": {"pool": p}, "value": [0, str(v)]} for p, v in rates.items()]

    return TokenReader("http://prometheus.invalid", query=query)


def test_status_gets_costs_once_and_reconciles_keep_them(settings: OperatorSettings) -> None:
    live = _converged(settings)
    kube = FakeKube(live.model_dump(by_alias=True, exclude_none=True, mode="json"))
    metrics = OperatorMetrics()

    def tick(rates: dict[str, float]) -> Obj | None:
        current = InferenceFactory.model_validate(kube.body)
        return asyncio.run(
            refresh_economics(
                kube,
                current,
                PRICED,
                metrics,
                _reader(rates),
                now=AT,
            )
        )

    assert tick({"dub": 1000.0}) is not None
    status = kube.body["status"]
    assert [p.get("costPerMillionTokens") for p in status["pools"]] == [8.411, None]
    assert status["costs"] == "dub=8.411" and status["costsTime"] == LATER
    # The same figures (at 4 significant digits): no write.
    assert tick({"dub": 1000.02}) is None and len(kube.patches) == 1

    # A reconcile plans the same status from the patched factory: nothing to write, and the
    # cost is still there (only the timer changes it).
    patched = InferenceFactory.model_validate(kube.body)
    again = plan_factory(patched, PRICED, _running(patched, settings), settings)
    assert again.status.to_wire() == patched.status.to_wire()  # type: ignore[union-attr]

    # The pool goes quiet: its cost goes, once.
    assert tick({}) is not None
    assert "costPerMillionTokens" not in kube.body["status"]["pools"][0]
    assert kube.body["status"]["costs"] == ""
    assert tick({}) is None


def test_without_prometheus_only_the_gauges(settings: OperatorSettings) -> None:
    live = _converged(settings)
    kube = FakeKube({})
    metrics = OperatorMetrics()
    assert asyncio.run(refresh_economics(kube, live, PRICED, metrics, None, now=AT)) is None
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if "accelerator" in s.name
    }
    assert samples[
        (
            "factory_operator_accelerator_price_per_hour",
            (("accelerator_type", "H100"), ("region", "eu-west-1")),
        )
    ] == pytest.approx(7.57)
    assert (
        samples[
            (
                "factory_operator_pool_accelerators",
                (
                    ("accelerator_kind", "nvidia"),
                    ("accelerator_type", "H100"),
                    ("factory", "llama"),
                    ("jurisdiction", "EU"),
                    ("model", "llama-3.1-8b"),
                    ("namespace", "ml"),
                    ("pool", "dub"),
                    ("region", "eu-west-1"),
                ),
            )
        ]
        == 2
    )
    assert not kube.patches


def test_gauges_forget_what_went() -> None:
    metrics = OperatorMetrics()
    metrics.set_region_economics({("a", "H100"): 7.0, ("a", "L4"): 1.0}, {("a", "H100"): 700})
    metrics.set_region_economics({("a", "H100"): 7.5}, {})
    metrics.set_pool_accelerators("ml", "llama", {("p", "a", "EU", "m", "nvidia", "H100"): 1})
    metrics.forget_factory("ml", "llama")
    left = {
        (s.name, s.labels.get("accelerator_type"), s.value)
        for family in metrics.registry.collect()
        for s in family.samples
        if "accelerator" in s.name
    }
    assert left == {("factory_operator_accelerator_price_per_hour", "H100", 7.5)}


def test_token_vector_parsing() -> None:
    vector = [
        {"metric": {"pool": "a"}, "value": [0, "12.5"]},
        {"metric": {"pool": "b"}, "value": [0, "NaN"]},
        {"metric": {}, "value": [0, "1"]},
        {"metric": {"pool": "c"}},
    ]
    assert tokens_from_vector(vector) == {"a": 12.5}
