"""Observe one factory's world: the factory itself, FleetRegions, accelerator nodes, its
children, its pods' scheduling problems and its ReplicaSets' creation failures. Reads only.

With a ``Watched`` view (the operator's watches, ``k8s.cache``) every kind it holds is read
from memory, so a converged reconcile sends no request; a kind it does not hold, and every
kind without one (tests, tools), is listed from the API server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from factory_contract import names as contract_names
from factory_operator.api import FleetRegion, InferenceFactory
from factory_operator.api.accelerators import ACCELERATOR_RESOURCES
from factory_operator.plan import (
    ChildRef,
    DeploymentInfo,
    NodeInfo,
    Observed,
    OperatorSettings,
    PodProblem,
)
from factory_operator.plan.storage import claim_names

from .cache import Watched, pod_problem, replica_set_problem
from .client import Kube, Obj

CHILD_KINDS = (("apps/v1", "Deployment"), ("v1", "Service"), ("policy/v1", "PodDisruptionBudget"))
PODMONITOR = ("monitoring.coreos.com/v1", "PodMonitor")
REGION_KIND = ("inference.factory.dev/v1alpha1", "FleetRegion")
FACTORY_KIND = ("inference.factory.dev/v1alpha1", "InferenceFactory")


@dataclass(frozen=True)
class World:
    """Observed state for the planner plus the live child objects for the apply diff."""

    regions: dict[str, FleetRegion]
    observed: Observed
    live: dict[tuple[str, str], Obj] = field(default_factory=dict)


def _labels(obj: Obj) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("labels") or {})


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def node_info(obj: Obj) -> NodeInfo:
    """A Node reduced to labels, accelerator allocatable and readiness."""
    status = obj.get("status") or {}
    allocatable = status.get("allocatable") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return NodeInfo(
        name=obj["metadata"]["name"],
        labels=_labels(obj),
        allocatable={r: _int(allocatable[r]) for r in ACCELERATOR_RESOURCES if r in allocatable},
        ready=ready,
        schedulable=not (obj.get("spec") or {}).get("unschedulable"),
    )


def _deployment_info(obj: Obj, pool_key: str, revision_key: str) -> DeploymentInfo:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    failure = next(
        (
            c.get("message") or c.get("reason")
            for c in status.get("conditions") or []
            if c.get("type") == "ReplicaFailure" and c.get("status") == "True"
        ),
        None,
    )
    return DeploymentInfo(
        name=obj["metadata"]["name"],
        pool=_labels(obj).get(pool_key, ""),
        spec_replicas=int(spec.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        updated_replicas=int(status.get("updatedReplicas") or 0),
        generation=int(obj["metadata"].get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        revision=template_labels.get(revision_key),
        replica_failure=failure,
    )


def _pod_problems(pods: list[Obj], rsets: list[Obj], pool_key: str) -> list[PodProblem]:
    found = [pod_problem(pod, pool_key) for pod in pods]
    found += [replica_set_problem(rs, pool_key) for rs in rsets]
    return [p for p in found if p is not None]


async def read_claims(kube: Kube, namespace: str, names: list[str]) -> dict[str, list[str]] | None:
    """Access modes of the named claims (missing ones left out); None when the operator may
    not read claims (its role predates the check): the check is skipped, nothing fails."""
    claims: dict[str, list[str]] = {}
    for name in names:
        try:
            found = await kube.list(
                "v1", "PersistentVolumeClaim", namespace, field_selector=f"metadata.name={name}"
            )
        except ApiException as err:
            if err.status in (401, 403):
                return None
            raise
        for claim in found:
            claims[name] = list((claim.get("spec") or {}).get("accessModes") or [])
    return claims


async def read_factory(kube: Kube, namespace: str, name: str) -> Obj | None:
    """The factory as the API server holds it now, or None once it is gone.

    kopf hands every handler its last-seen body, which lags the operator's own status patches
    while the object's event worker is busy (seconds with a hundred factories): conditions
    planned from it moved lastTransitionTime and re-wrote converged statuses. A list by name,
    not a get: the operator's role grants list, watch and patch on factories.
    """
    items = await kube.list(*FACTORY_KIND, namespace, field_selector=f"metadata.name={name}")
    return items[0] if items else None


def _region_model(obj: Obj) -> FleetRegion:
    return FleetRegion.model_validate(
        {k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in obj}
    )


async def _problems(
    kube: Kube, watched: Watched | None, namespace: str, factory: str, prefix: str
) -> list[PodProblem]:
    key, selector = f"{prefix}/pool", f"{prefix}/factory={factory}"
    pods = watched.factory_problems("Pod", namespace, factory) if watched else None
    if pods is None:
        pending = await kube.list(
            "v1", "Pod", namespace, label_selector=selector, field_selector="status.phase=Pending"
        )
        pods = _pod_problems(pending, [], key)
    rsets = watched.factory_problems("ReplicaSet", namespace, factory) if watched else None
    if rsets is None:
        found = await kube.list("apps/v1", "ReplicaSet", namespace, label_selector=selector)
        rsets = _pod_problems([], found, key)
    return [*pods, *rsets]


def _watched_claims(
    watched: Watched | None, namespace: str, names: list[str]
) -> dict[str, list[str]] | None:
    if watched is None or watched.claims is None:
        return None
    claims: dict[str, list[str]] = {}
    for name in names:
        for modes in watched.claims.get((namespace, name), ()):
            claims[name] = list(modes)
    return claims


async def observe(
    kube: Kube,
    factory: InferenceFactory,
    settings: OperatorSettings,
    now: str,
    watched: Watched | None = None,
) -> World:
    """Everything ``plan_factory`` needs about the cluster: from the watches where
    ``watched`` holds the kind, else read fresh."""
    prefix = settings.annotation_prefix
    pool_key, revision_key = f"{prefix}/pool", f"{prefix}/revision"
    track_key = contract_names.prefixed(contract_names.TRACK_LABEL, prefix)
    namespace = factory.metadata.namespace or "default"
    name = factory.metadata.name
    selector = f"{prefix}/factory={name}"

    if watched is not None:
        region_objs, nodes = watched.region_objects(), watched.node_list()
    else:
        region_objs = await kube.list(*REGION_KIND)
        nodes = [node_info(n) for n in await kube.list("v1", "Node")]
    regions = {region.name: region for region in map(_region_model, region_objs)}
    has_podmonitor = await kube.has_kind(*PODMONITOR)

    kinds = [*CHILD_KINDS, PODMONITOR] if has_podmonitor else list(CHILD_KINDS)
    live: dict[tuple[str, str], Obj] = {}
    children: list[ChildRef] = []
    deployments: dict[str, DeploymentInfo] = {}
    canaries: dict[str, DeploymentInfo] = {}
    for api_version, kind in kinds:
        objs = None
        if watched is not None:
            objs = watched.child_objects(kind, namespace, name, f"{prefix}/factory")
        if objs is None:
            objs = await kube.list(api_version, kind, namespace, label_selector=selector)
        for obj in objs:
            child = obj["metadata"]["name"]
            live[(kind, child)] = obj
            children.append(ChildRef(api_version, kind, child, _labels(obj).get(pool_key, "")))
            if kind == "Deployment":
                info = _deployment_info(obj, pool_key, revision_key)
                canary = _labels(obj).get(track_key) == contract_names.CANARY_TRACK
                (canaries if canary else deployments)[info.pool] = info
    problems = await _problems(kube, watched, namespace, name, prefix)
    names = claim_names(factory)
    claims = _watched_claims(watched, namespace, names) if names else None
    if names and (watched is None or watched.claims is None):
        claims = await read_claims(kube, namespace, names)
    observed = Observed(
        now=now,
        nodes=nodes,
        deployments=deployments,
        canaries=canaries,
        problems=problems,
        children=children,
        podmonitor_crd=has_podmonitor,
        claims=claims,
    )
    return World(regions=regions, observed=observed, live=live)
