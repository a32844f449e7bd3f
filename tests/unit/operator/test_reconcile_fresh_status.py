"""A converged factory gets no status write, even when kopf's body predates the last one.

Under load kopf hands a reconcile a body that can be seconds older than the operator's own
last status patch. Conditions planned from that stale status get new lastTransitionTimes,
so the "patch only when changed" check fires on a status that had not changed: the idle
writes of bench/operator_scale (91 in a minute with 100 factories).
"""

from __future__ import annotations

import copy
from typing import Any

from conftest import LATER, NODES, NOW, REGIONS, factory, pool
from test_plan_status import _running

from factory_operator.handlers import reconcile_factory
from factory_operator.k8s import OperatorMetrics
from factory_operator.plan import Observed, OperatorSettings, plan_factory

LATEST = "2026-01-01T00:10:00Z"
POOLS = [pool("a", "eu-west-1"), pool("us", "us-east-1")]
Obj = dict[str, Any]


def test_planning_from_a_stale_status_moves_transition_times(settings: OperatorSettings) -> None:
    first = plan_factory(factory(POOLS), REGIONS, Observed(now=NOW, nodes=NODES), settings)
    after_first = factory(POOLS, status=first.status.to_wire())
    # A later reconcile sees the pools ready: Ready turns True at LATER. This is now live.
    live = plan_factory(after_first, REGIONS, _running(after_first, settings, LATER), settings)
    assert live.status != first.status

    # Planned from the live status, nothing changes: no write.
    from_live = factory(POOLS, status=live.status.to_wire())
    again = plan_factory(from_live, REGIONS, _running(from_live, settings, LATEST), settings)
    assert again.status == live.status

    # Planned from a body that still holds the first status (or none), the same world yields
    # a status that differs from the live one in transition times only: a needless write that
    # moves Ready's time and even Degraded's, which has been False all along.
    for stale in (after_first, factory(POOLS)):
        plan = plan_factory(stale, REGIONS, _running(stale, settings, LATEST), settings)
        assert plan.status != live.status
        assert _without_times(plan.status.to_wire()) == _without_times(live.status.to_wire())


def _without_times(status: Obj) -> Obj:
    status = copy.deepcopy(status)
    for cond in status["conditions"]:
        del cond["lastTransitionTime"]
    return status


class FakeApi:
    """The few calls ``reconcile_factory`` makes through ``Kube``, over objects in memory;
    every write is recorded."""

    def __init__(self, objects: list[Obj]) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}
        self.writes: list[str] = []

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        wanted = dict(s.split("=", 1) for s in (label_selector or "").split(",") if s)
        fields = dict(s.split("=", 1) for s in (field_selector or "").split(",") if s)
        return [
            copy.deepcopy(o)
            for (k, name), o in self.objects.items()
            if k == kind
            and fields.get("metadata.name", name) == name
            and "status.phase" not in fields  # no pods are pending
            and all(o["metadata"].get("labels", {}).get(lk) == v for lk, v in wanted.items())
        ]

    async def has_kind(self, api_version: str, kind: str) -> bool:
        return kind != "PodMonitor"

    async def apply(self, manifest: Obj) -> None:
        self.writes.append(f"apply {manifest['kind']}")
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = copy.deepcopy(manifest)

    async def patch_status(
        self, api_version: str, kind: str, name: str, namespace: str | None, status: Obj
    ) -> None:
        self.writes.append(f"patch-status {kind}")
        self.objects[(kind, name)]["status"] = copy.deepcopy(status)

    async def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        self.writes.append(f"delete {kind}")
        del self.objects[(kind, name)]

    async def create_event(self, event: Obj) -> None:
        self.writes.append("create Event")

    def roll_out(self) -> None:
        """What the Deployment controller does: every replica ready at the current spec."""
        for (kind, _), obj in self.objects.items():
            if kind == "Deployment":
                obj["metadata"]["generation"] = 1
                n = obj["spec"]["replicas"]
                obj["status"] = {
                    "observedGeneration": 1,
                    "replicas": n,
                    "readyReplicas": n,
                    "updatedReplicas": n,
                }


def _cluster(body: Obj) -> FakeApi:
    nodes = [
        {"kind": "Node", "metadata": {"name": n.name, "labels": dict(n.labels)},
         "status": {"allocatable": {r: str(c) for r, c in n.allocatable.items()},
                    "conditions": [{"type": "Ready", "status": "True"}]}}
        for n in NODES
    ]  # fmt: skip
    regions = [r.to_wire() for r in REGIONS.values()]
    return FakeApi([copy.deepcopy(body), *nodes, *regions])


async def test_a_converged_factory_is_not_rewritten_from_kopfs_older_body(
    settings: OperatorSettings,
) -> None:
    # The body kopf saw at creation, without status; its handlers and daemon may be handed it
    # again after the operator has written the status.
    created: Obj = factory(POOLS).to_wire()
    created["metadata"]["generation"] = 1
    api, metrics = _cluster(created), OperatorMetrics()

    await reconcile_factory(api, created, settings, metrics)  # type: ignore[arg-type]
    api.roll_out()
    await reconcile_factory(api, created, settings, metrics)  # type: ignore[arg-type]
    status = api.objects[("InferenceFactory", "llama")]["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    writes = len(api.writes)

    plan = await reconcile_factory(api, created, settings, metrics)  # type: ignore[arg-type]
    assert api.writes[writes:] == []
    assert plan.status.to_wire() == status


async def test_a_factory_deleted_since_kopf_saw_it_is_left_alone(
    settings: OperatorSettings,
) -> None:
    body: Obj = factory(POOLS).to_wire()
    api = _cluster(body)
    del api.objects[("InferenceFactory", "llama")]
    await reconcile_factory(api, body, settings, OperatorMetrics())  # type: ignore[arg-type]
    assert api.writes == []
