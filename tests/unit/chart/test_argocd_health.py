"""The Argo CD health check of InferenceFactory (deploy/gitops/argocd/health-inferencefactory.lua)
run by a Lua 5.1 interpreter (lupa; Argo CD's gopher-lua is Lua 5.1) against statuses the
operator's own status code produces (plan/status.py summarize, api InferenceFactoryStatus):
Argo shows Healthy, Progressing and Degraded as the operator means them. The argocd-cm snippet
in deploy/gitops/README.md carries the same script."""

from __future__ import annotations

import re
from typing import Any

import lupa.lua51 as lua51  # type: ignore[import-untyped]  # no stubs
import pytest
import yaml

from factory_operator.api import InferenceFactoryStatus, PoolStatus
from factory_operator.plan.status import summarize
from tests.unit.chart.chart_tools import GITOPS

SCRIPT = (GITOPS / "argocd" / "health-inferencefactory.lua").read_text()
NOW = "2026-01-01T00:00:00Z"
GENERATION = 3


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) of the script for one object, as Argo CD runs it (`obj` global)."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    result = runtime.execute(SCRIPT)
    return result["status"], result["message"]


def pool(state: str, reason: str | None = None, ready: int = 1, desired: int = 1) -> PoolStatus:
    return PoolStatus(name=f"pool-{state.lower()}", region="eu-west-1", jurisdiction="EU",
                      state=state, reason=reason, ready_replicas=ready,
                      desired_replicas=desired)  # fmt: skip


def factory(pools: list[PoolStatus] | None, *, observed: int = GENERATION) -> dict[str, Any]:
    """A factory at GENERATION whose status the operator computed at `observed`."""
    obj: dict[str, Any] = {
        "apiVersion": "inference.factory.dev/v1alpha1",
        "kind": "InferenceFactory",
        "metadata": {"name": "llama-8b", "namespace": "inference", "generation": GENERATION},
    }
    if pools is not None:
        conditions = summarize(pools, {}, generation=observed, now=NOW, previous=[])
        status = InferenceFactoryStatus(observed_generation=observed, conditions=conditions,
                                        pools=pools)  # fmt: skip
        obj["status"] = status.to_wire()
    return obj


@pytest.mark.parametrize(("pools", "expected", "reason"), [
    ([pool("Running")], "Healthy", "AllPoolsReady"),
    ([pool("Running"), pool("ManagedElsewhere")], "Healthy", "AllPoolsReady"),
    ([pool("ManagedElsewhere")], "Healthy", "ManagedElsewhere"),
    ([pool("Running"), pool("Progressing", ready=0)], "Progressing", "PoolsNotReady"),
    ([pool("Degraded", "InsufficientAccelerators", ready=0)], "Degraded",
     "InsufficientAccelerators"),
    ([pool("Blocked", "ResidencyViolation", ready=0, desired=0)], "Degraded",
     "ResidencyViolation"),
    ([pool("Blocked", "AcceleratorTypeAmbiguous", ready=0, desired=0)], "Degraded",
     "AcceleratorTypeAmbiguous"),
    ([pool("Degraded", "VolumeNotShared", ready=0)], "Degraded", "VolumeNotShared"),
    ([pool("Progressing", ready=0), pool("Degraded", "PodsRejected", ready=0)], "Degraded",
     "PodsRejected"),
], ids=["ready", "ready-with-others-elsewhere", "all-elsewhere", "rolling-out",
        "no-accelerators", "residency", "ambiguous-accelerator", "volume-not-shared",
        "rolling-but-rejected"])  # fmt: skip
def test_health_follows_the_operators_conditions(
    pools: list[PoolStatus], expected: str, reason: str
) -> None:
    status, message = health(factory(pools))
    assert status == expected
    assert message.startswith(reason)


def test_no_status_yet_is_progressing() -> None:
    assert health(factory(None))[0] == "Progressing"
    no_conditions = factory(None)
    no_conditions["status"] = {}
    assert health(no_conditions)[0] == "Progressing"


def test_a_generation_not_observed_yet_is_progressing_even_if_ready_before() -> None:
    status, message = health(factory([pool("Running")], observed=GENERATION - 1))
    assert status == "Progressing"
    assert message == f"Waiting for the operator to observe generation {GENERATION}"
    # A stale failure is not shown as the new generation's either.
    stale = factory([pool("Degraded", "InsufficientAccelerators", ready=0)], observed=1)
    assert health(stale)[0] == "Progressing"


def test_readme_argocd_cm_snippet_carries_the_same_script() -> None:
    readme = (GITOPS / "README.md").read_text()
    block = re.search(r"```yaml\n(# argocd-cm.*?)```", readme, re.DOTALL)
    assert block, "deploy/gitops/README.md shows the argocd-cm snippet"
    doc = yaml.safe_load(block.group(1))
    key = "resource.customizations.health.inference.factory.dev_InferenceFactory"
    assert doc["data"][key] == SCRIPT
