"""The reconcile from memory (``k8s.cache``): no request once converged, and the operator's
own writes read back before the watch delivers them."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from conftest import NODES, REGIONS, factory, pool
from test_reconcile_fresh_status import FakeApi, _cluster

from factory_operator.handlers import reconcile_factory
from factory_operator.k8s import OperatorMetrics, OwnWrites, Watched, cached_object
from factory_operator.k8s.cache import pod_problem
from factory_operator.plan import OperatorSettings

POOLS = [pool("a", "eu-west-1"), pool("us", "us-east-1")]
KEY = "inference.factory.dev/factory"
Obj = dict[str, Any]


class CountingApi(FakeApi):
    """FakeApi that counts its list calls and answers writes as the API server does."""

    def __init__(self, objects: list[Obj]) -> None:
        super().__init__(objects)
        self.lists = 0
        self.version = 100

    async def list(self, *args: Any, **kwargs: Any) -> list[Obj]:
        self.lists += 1
        return await super().list(*args, **kwargs)

    def _stamp(self, obj: Obj) -> Obj:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        return copy.deepcopy(obj)

    async def apply(self, manifest: Obj) -> Obj:  # type: ignore[override]
        await super().apply(manifest)
        return self._stamp(self.objects[(manifest["kind"], manifest["metadata"]["name"])])

    async def patch_status(  # type: ignore[override]
        self, api_version: str, kind: str, name: str, namespace: str | None, status: Obj
    ) -> Obj:
        await super().patch_status(api_version, kind, name, namespace, status)
        return self._stamp(self.objects[(kind, name)])


def watch(api: FakeApi, own: OwnWrites) -> Watched:
    """What kopf's indexes hold once the watches have delivered every object."""
    children: dict[str, dict[Any, list[Any]]] = defaultdict(lambda: defaultdict(list))
    regions: dict[Any, list[Any]] = {}
    for (kind, name), obj in api.objects.items():
        if kind == "FleetRegion":
            regions[name] = [cached_object(obj)]
        elif KEY in (obj["metadata"].get("labels") or {}):
            owner = (obj["metadata"].get("namespace") or "", obj["metadata"]["labels"][KEY])
            children[kind][owner].append(cached_object(obj))
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        children.setdefault(kind, defaultdict(list))
    return Watched(
        regions=regions,
        nodes={n.name: [n] for n in NODES},
        children=children,
        problems={"Pod": {}, "ReplicaSet": {}},
        claims={},
        own=own,
    )


async def test_a_converged_factory_reconciles_from_memory_without_a_request(
    settings: OperatorSettings,
) -> None:
    body: Obj = factory(POOLS).to_wire()
    body["metadata"].update(generation=1, namespace="default", resourceVersion="1")
    api = CountingApi(list(_cluster(body).objects.values()))
    metrics, own = OperatorMetrics(), OwnWrites()

    # The watch has not delivered the children yet: the own writes stand in for them.
    await reconcile_factory(api, body, settings, metrics, watched=watch(api, own))  # type: ignore[arg-type]
    api.roll_out()
    await reconcile_factory(api, body, settings, metrics, watched=watch(api, own))  # type: ignore[arg-type]
    status = api.objects[("InferenceFactory", "llama")]["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    writes = len(api.writes)

    # kopf's body still predates every status write: the own write is read instead.
    plan = await reconcile_factory(api, body, settings, metrics, watched=watch(api, own))  # type: ignore[arg-type]
    assert api.writes[writes:] == []
    assert plan.status.to_wire() == status
    assert api.lists == 0


def test_an_own_write_stands_until_the_watch_has_that_version() -> None:
    own = OwnWrites()
    old = {"kind": "Service", "metadata": {"name": "s", "namespace": "n", "uid": "u",
                                           "resourceVersion": "5"}}  # fmt: skip
    new = copy.deepcopy(old)
    new["metadata"]["resourceVersion"] = "7"
    own.wrote(new)
    assert own.fresher("Service", "n", "s", None) == new  # created, not delivered yet
    assert own.fresher("Service", "n", "s", old) == new  # the watch lags
    assert own.fresher("Service", "n", "s", new) == new  # caught up: the watch's again
    assert own.fresher("Service", "n", "s", old) == old


def test_a_deleted_child_is_gone_until_the_watch_drops_it() -> None:
    own = OwnWrites()
    seen = {"kind": "Service", "metadata": {"name": "s", "namespace": "n", "uid": "u",
                                            "resourceVersion": "5"}}  # fmt: skip
    own.deleted("Service", "n", "s", "u")
    assert own.fresher("Service", "n", "s", seen) is None
    recreated = copy.deepcopy(seen)
    recreated["metadata"]["uid"] = "v"
    assert own.fresher("Service", "n", "s", recreated) == recreated


def test_after_its_time_the_watch_is_trusted_even_when_it_lost_the_object() -> None:
    own = OwnWrites(ttl=0.0)
    own.wrote({"kind": "Service", "metadata": {"name": "s", "namespace": "n",
                                               "resourceVersion": "7"}})  # fmt: skip
    assert own.fresher("Service", "n", "s", None) is None


def test_only_refused_pending_pods_are_problems() -> None:
    pending = {
        "metadata": {"labels": {"inference.factory.dev/pool": "a"}},
        "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/3 nodes: Insufficient nvidia.com/gpu"}]},
    }  # fmt: skip
    found = pod_problem(pending, "inference.factory.dev/pool")
    assert found is not None and (found.pool, found.reason) == ("a", "Unschedulable")
    running = {**pending, "status": {**pending["status"], "phase": "Running"}}
    assert pod_problem(running, "inference.factory.dev/pool") is None


def test_cached_children_keep_only_the_replica_owners_of_their_managed_fields() -> None:
    obj = {"kind": "Deployment", "metadata": {"name": "d", "resourceVersion": "1",
           "managedFields": [
               {"manager": "inference-factory", "operation": "Apply",
                "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:x": {}}}}},
               {"manager": "kube-controller-manager", "operation": "Update",
                "fieldsV1": {"f:status": {}}}]}}  # fmt: skip
    kept = cached_object(obj).obj()["metadata"]["managedFields"]
    assert kept == [{"manager": "inference-factory", "operation": "Apply",
                     "fieldsV1": {"f:spec": {"f:replicas": {}}}}]  # fmt: skip
    assert REGIONS  # the builders' regions are what the cluster above holds
