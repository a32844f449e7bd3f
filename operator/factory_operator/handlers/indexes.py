"""kopf indexes: the cluster a reconcile reads from memory instead of listing it.

kopf keeps each index up to date from its watch of the kind, before any handler of an event
runs, and starts no handler until every index has been filled by its first list. Every
handler receives them as keyword arguments named by their ids; ``watched_view`` turns them
into the ``k8s.cache.Watched`` view that ``observe`` reads.

- ``fleet_regions`` (name), ``fleet_nodes`` (name: labels, accelerators, readiness);
- ``children_<kind>`` for Deployments, Services, PodDisruptionBudgets and PodMonitors that
  carry the factory label, by (namespace, factory);
- ``problems_pods`` (pending pods the scheduler refused) and ``problems_replicasets`` (that
  cannot create pods), by (namespace, factory): only the problems, not the objects;
- ``claims``: the access modes of PersistentVolumeClaims, by (namespace, name);
- ``factory_runtimes`` by (namespace, name) and ``factories_by_region`` by pool region: each
  factory's ``FactoryRuntime`` (kept in its kopf memo), which the watchers wake.

Services, PodDisruptionBudgets, PodMonitors, Pods, ReplicaSets and claims are indexed only
when the operator may watch them (``WATCHABLE``, probed at start by ``main``): otherwise
``observe`` lists that kind per reconcile, as before the cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from factory_operator.api import GROUP, VERSION
from factory_operator.k8s import OwnWrites, Watched, cached_object, node_info
from factory_operator.k8s.cache import pod_problem, replica_set_problem
from factory_operator.plan import OperatorSettings

FACTORIES = "inferencefactories"
REGIONS = "fleetregions"
REGIONS_INDEX = "fleet_regions"
NODES_INDEX = "fleet_nodes"
CLAIMS_INDEX = "claims"
RUNTIMES_INDEX = "factory_runtimes"
BY_REGION_INDEX = "factories_by_region"
# kind -> (group, version, plural, index id)
CHILDREN = {
    "Deployment": ("apps", "v1", "deployments", "children_deployments"),
    "Service": ("", "v1", "services", "children_services"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets", "children_pdbs"),
    "PodMonitor": ("monitoring.coreos.com", "v1", "podmonitors", "children_podmonitors"),
}
PROBLEMS = {
    "Pod": ("", "v1", "pods", "problems_pods"),
    "ReplicaSet": ("apps", "v1", "replicasets", "problems_replicasets"),
}
CLAIMS = ("", "v1", "persistentvolumeclaims")
# Kinds the chart's RBAC may not let the operator watch (kind -> group, plural).
WATCHABLE = {
    kind: (group, plural)
    for kind, (group, _, plural, _) in {**CHILDREN, **PROBLEMS}.items()
    if kind != "Deployment"
} | {"PersistentVolumeClaim": (CLAIMS[0], CLAIMS[2])}


@dataclass
class FactoryRuntime:
    """One factory's in-memory state: the event that wakes its resync daemon and the lock
    that orders its reconciles. Lives in the factory's kopf memo."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def runtime(memo: Any) -> FactoryRuntime:
    """The factory's runtime, created in its memo on first use."""
    if "runtime" not in memo:
        memo["runtime"] = FactoryRuntime()
    found: FactoryRuntime = memo["runtime"]
    return found


def _factory_of(body: kopf.Body, key: str, namespace: str | None) -> tuple[str, str]:
    return (namespace or "", body.get("metadata", {}).get("labels", {}).get(key, ""))


def register_indexes(
    registry: kopf.OperatorRegistry, settings: OperatorSettings, watch: Collection[str]
) -> None:
    """Register the indexes; ``watch``: the kinds of ``WATCHABLE`` the operator may watch."""
    factory_key = f"{settings.annotation_prefix}/factory"
    pool_key = f"{settings.annotation_prefix}/pool"
    owned = {factory_key: kopf.PRESENT}

    @kopf.index(GROUP, VERSION, REGIONS, id=REGIONS_INDEX, registry=registry)
    def fleet_regions(body: kopf.Body, name: str, **_: Any) -> dict[str, Any]:
        return {name: cached_object(body)}

    @kopf.index("", "v1", "nodes", id=NODES_INDEX, registry=registry)
    def fleet_nodes(body: kopf.Body, name: str, **_: Any) -> dict[str, Any]:
        return {name: node_info(dict(body))}

    @kopf.index(GROUP, VERSION, FACTORIES, id=RUNTIMES_INDEX, registry=registry)
    def factory_runtimes(
        name: str, namespace: str | None, memo: kopf.Memo, **_: Any
    ) -> dict[Any, Any]:
        return {(namespace or "", name): runtime(memo)}

    @kopf.index(GROUP, VERSION, FACTORIES, id=BY_REGION_INDEX, registry=registry)
    def factories_by_region(spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> dict[Any, Any]:
        return {p.get("region", ""): runtime(memo) for p in spec.get("pools") or []}

    def children(body: kopf.Body, namespace: str | None, **_: Any) -> dict[Any, Any]:
        return {_factory_of(body, factory_key, namespace): cached_object(body)}

    for kind, (group, version, plural, index_id) in CHILDREN.items():
        if kind == "Deployment" or kind in watch:
            kopf.index(group, version, plural, id=index_id, labels=owned, registry=registry)(
                children
            )

    def problems(
        body: kopf.Body, name: str, namespace: str | None, resource: kopf.Resource, **_: Any
    ) -> dict[Any, Any]:
        find = pod_problem if resource.plural == "pods" else replica_set_problem
        problem = find(body, pool_key)
        # An empty mapping, not None: kopf keeps an object's old value when given None.
        key = _factory_of(body, factory_key, namespace)
        return {key: (name, problem)} if problem is not None else {}

    for kind, (group, version, plural, index_id) in PROBLEMS.items():
        if kind in watch:
            kopf.index(group, version, plural, id=index_id, labels=owned, registry=registry)(
                problems
            )

    if "PersistentVolumeClaim" in watch:

        @kopf.index(*CLAIMS, id=CLAIMS_INDEX, registry=registry)
        def claims(spec: kopf.Spec, name: str, namespace: str | None, **_: Any) -> dict[Any, Any]:
            return {(namespace or "", name): tuple(spec.get("accessModes") or [])}


def watched_view(indexes: Mapping[str, Any], own: OwnWrites) -> Watched:
    """The indexes a handler was given, as the view ``observe`` reads."""
    return Watched(
        regions=indexes[REGIONS_INDEX],
        nodes=indexes[NODES_INDEX],
        children={k: indexes[v[3]] for k, v in CHILDREN.items() if v[3] in indexes},
        problems={k: indexes[v[3]] for k, v in PROBLEMS.items() if v[3] in indexes},
        claims=indexes.get(CLAIMS_INDEX),
        own=own,
    )
