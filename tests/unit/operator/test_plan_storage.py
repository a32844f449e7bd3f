"""Claims shared by replicas: a ReadWriteOnce model or cache claim with more than one replica
is reported (Degraded, VolumeNotShared); the pools still run."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import NODES, NOW, REGIONS, factory, pool

from factory_operator.api import InferenceFactory
from factory_operator.plan import Observed, OperatorSettings, plan_factory
from factory_operator.plan.storage import claim_names


def _plan(f: InferenceFactory, claims: dict[str, list[str]] | None) -> Any:
    return plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES, claims=claims),
                        OperatorSettings())  # fmt: skip


def _degraded(plan: Any) -> Any:
    return next(c for c in plan.status.conditions if c.type == "Degraded")


@pytest.mark.parametrize(
    ("modes", "replicas", "problem"),
    [
        (["ReadWriteOnce"], 2, True),
        (["ReadWriteOncePod"], 3, True),
        (["ReadWriteOnce"], 1, False),
        (["ReadOnlyMany"], 4, False),
        (["ReadWriteMany"], 4, False),
    ],
)
def test_model_claim_must_be_readable_from_several_nodes(
    modes: list[str], replicas: int, problem: bool
) -> None:
    f = factory([pool("a", "eu-west-1", replicas=replicas)], uri="pvc://weights/llama")
    plan = _plan(f, {"weights": modes})
    degraded = _degraded(plan)
    assert (degraded.reason == "VolumeNotShared") is problem
    if problem:
        assert "model claim weights is" in degraded.message
        assert "ReadOnlyMany or ReadWriteMany" in degraded.message
    assert any(c["kind"] == "Deployment" for c in plan.apply)  # still deployed


def test_two_pools_of_one_replica_share_the_claim_too() -> None:
    f = factory([pool("a", "eu-west-1"), pool("b", "eu-central-1")], uri="pvc://weights/llama")
    assert _degraded(_plan(f, {"weights": ["ReadWriteOnce"]})).reason == "VolumeNotShared"


def test_cache_claim_must_be_writable_from_several_nodes() -> None:
    body = factory([pool("a", "eu-west-1", replicas=2)]).to_wire()
    body["metadata"] = {"name": "llama", "namespace": "ml"}
    body["spec"]["cache"] = {"persistentVolumeClaim": "hf-cache"}
    f = InferenceFactory.model_validate(body)
    assert claim_names(f) == ["hf-cache"]
    read_only = _degraded(_plan(f, {"hf-cache": ["ReadOnlyMany"]}))
    assert read_only.reason == "VolumeNotShared" and "cache claim hf-cache" in read_only.message
    assert _degraded(_plan(f, {"hf-cache": ["ReadWriteMany"]})).status == "False"


def test_unreadable_or_missing_claims_are_not_guessed() -> None:
    f = factory([pool("a", "eu-west-1", replicas=2)], uri="pvc://weights/llama")
    assert _degraded(_plan(f, None)).status == "False"  # no RBAC for claims: not checked
    assert _degraded(_plan(f, {})).status == "False"  # missing: the pods say so
