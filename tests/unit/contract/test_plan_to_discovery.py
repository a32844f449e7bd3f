"""Contract test (issue 16, item 2): the operator's real ``plan_factory`` output, applied to
a simulated cluster, is what the router's Kubernetes discovery reads, for every example
factory (deploy/examples/ and deploy/local/).

The cluster is simulated as Kubernetes would fill it: each Deployment's pods carry its
template labels, each Service gets an EndpointSlice (label ``kubernetes.io/service-name``)
with one endpoint per pod its selector matches, on the container port; the factory carries
the status the plan computed. The Prometheus series of each pod are labelled the way the
operator's own PodMonitor relabels them, so the router's load snapshot is checked against
the same plan.
"""

from __future__ import annotations

from typing import Any

import pytest

from factory_contract import names
from factory_operator.plan import OperatorSettings, Plan
from factory_router.discovery.kube import fleet_from_objects
from factory_router.policy.fleet import Fleet
from factory_router.signals.prometheus import snapshot_from_results
from tests.unit.contract.fleet_world import (
    EXAMPLE_REGIONS,
    FACTORIES,
    LOCAL_REGIONS,
    Cluster,
    apply_plan,
    plan_of,
    series_labels,
)

Obj = dict[str, Any]


def _check_backends(
    doc: Obj, plan: Plan, cluster: Cluster, fleet: Fleet, regions: list[Obj]
) -> None:
    spec = doc["spec"]
    namespace = doc["metadata"].get("namespace", "default")
    name = doc["metadata"]["name"]
    jurisdictions = {r["metadata"]["name"]: r["spec"]["jurisdiction"] for r in regions}
    pricing = {r["metadata"]["name"]: r["spec"].get("pricing", {}) for r in regions}
    deployed = {
        c["spec"]["template"]["metadata"]["labels"][names.prefixed(names.POOL_LABEL)]: c
        for c in plan.apply
        if c["kind"] == "Deployment"
    }
    assert deployed, f"{name}: the plan deploys nothing"
    for pool in spec["pools"]:
        status = next(p for p in plan.status.pools if p.name == pool["name"])
        service = names.pool_object_name(name, pool["name"])
        backends = [b for b in fleet.backends if b.pool == service and not b.via_endpoint]
        if pool["name"] not in deployed:
            assert not backends, f"{service}: backends without a Deployment"
            continue
        replicas = deployed[pool["name"]]["spec"]["replicas"]
        assert status.desired_replicas == replicas
        assert sorted(b.pod or "" for b in backends) == [f"{service}-{i}" for i in range(replicas)]
        args = (pool.get("engine") or {}).get("args") or {}
        capacity = args.get(
            "maxNumSeqs", (spec.get("engine") or {}).get("args", {}).get("maxNumSeqs")
        )
        accelerator = pool["accelerator"]
        price = pricing[pool["region"]].get(accelerator["type"])
        for b in backends:
            assert (b.model, b.region, b.namespace, b.factory) == (
                spec["model"]["name"], pool["region"], namespace, name,
            )  # fmt: skip
            assert b.url.startswith("http://10.") and b.serving and not b.terminating
            assert fleet.jurisdiction_of(b) == jurisdictions[pool["region"]] == status.jurisdiction
            assert b.max_num_seqs == capacity
            if price:  # no live cost in a plan's status: the list price at 1,000 tokens/s
                assert b.cost == pytest.approx(price * accelerator["count"] / 3.6)
                assert b.cost_source == "list"
            else:
                assert b.cost_source in ("unpriced", "none")
        [hold] = [p for p in fleet.pools if p.factory == name and p.name == pool["name"]]
        assert (hold.service, hold.region, hold.namespace) == (service, pool["region"], namespace)
        assert hold.desired_replicas == replicas
        assert hold.wakeable == ("autoscaling" in spec and pool["replicas"].get("max", 0) >= 1)
        allowed = frozenset({jurisdictions[pool["region"]]})
        assert set(backends) <= set(fleet.compliant(spec["model"]["name"], allowed))
    # Load: each pod's series, labelled by the operator's PodMonitor, reach its backend, by
    # pod and (the fallback) by pool.
    by_pod = {p["metadata"]["name"]: series_labels(p, plan) for p in cluster.pods}
    results = {
        "running": [{"metric": labels, "value": [0, "3"]} for labels in by_pod.values()],
        "waiting": [{"metric": labels, "value": [0, "1"]} for labels in by_pod.values()],
    }
    snapshot = snapshot_from_results(results, 0.0)
    for b in fleet.backends:
        if b.via_endpoint:
            continue
        labels = by_pod[b.pod or ""]
        assert labels[names.REGION_LABEL] == b.region
        assert labels[names.JURISDICTION_LABEL] == fleet.jurisdiction_of(b)
        assert labels[names.FACTORY_LABEL] == b.factory
        assert snapshot.by_pod[b.pod or ""].running == 3
        assert snapshot.by_pool[(b.pool, b.region or "")].running == 3


SCENARIOS = [
    pytest.param(doc, regions, id=f"{doc['metadata']['name']}@{where}")
    for where, regions in (("examples", EXAMPLE_REGIONS), ("local", LOCAL_REGIONS))
    for doc in FACTORIES
]


@pytest.mark.parametrize(("doc", "regions"), SCENARIOS)
def test_planned_pools_are_the_backends_discovery_builds(doc: Obj, regions: list[Obj]) -> None:
    settings = OperatorSettings()
    starting = plan_of(doc, regions, settings, running=None)
    running = plan_of(doc, regions, settings, running=starting)
    assert {p.state for p in running.status.pools} == {"Running"}
    cluster = apply_plan(doc, running)
    fleet = fleet_from_objects(regions, [cluster.factory], cluster.slices, cluster.pods)
    _check_backends(doc, running, cluster, fleet, regions)


@pytest.mark.parametrize("doc", FACTORIES, ids=lambda d: d["metadata"]["name"])
def test_pools_still_starting_are_held_for(doc: Obj) -> None:
    """Before any pod runs: no backend, every deployed pool in the fleet's pools with its
    desired replicas (what a request is held for)."""
    plan = plan_of(doc, LOCAL_REGIONS, OperatorSettings(), running=None)
    factory = {**doc, "status": plan.status.to_wire()}
    fleet = fleet_from_objects(LOCAL_REGIONS, [factory], [], [])
    assert fleet.backends == ()
    deployed = {
        c["metadata"]["name"]: c["spec"]["replicas"]
        for c in plan.apply
        if c["kind"] == "Deployment"
    }
    assert {p.service: p.desired_replicas for p in fleet.pools} == deployed
    assert fleet.waking(doc["spec"]["model"]["name"], fleet.jurisdictions) == list(fleet.pools)


@pytest.mark.parametrize("doc", FACTORIES, ids=lambda d: d["metadata"]["name"])
def test_one_cluster_per_region_reaches_other_regions_through_their_endpoint(doc: Obj) -> None:
    """The operator of eu-west-1 deploys only its region's pools (the others are
    ManagedElsewhere); the router there reaches the others through their FleetRegion's
    endpoint."""
    local = "eu-west-1"
    settings = OperatorSettings(region=local)
    starting = plan_of(doc, EXAMPLE_REGIONS, settings, running=None)
    running = plan_of(doc, EXAMPLE_REGIONS, settings, running=starting)
    cluster = apply_plan(doc, running)
    fleet = fleet_from_objects(
        EXAMPLE_REGIONS, [cluster.factory], cluster.slices, cluster.pods, local_region=local
    )
    endpoints = {r["metadata"]["name"]: r["spec"]["endpoint"] for r in EXAMPLE_REGIONS}
    elsewhere = {p["region"] for p in doc["spec"]["pools"] if p["region"] != local}
    remote = {b.region: b for b in fleet.backends if b.via_endpoint}
    assert set(remote) == elsewhere
    for region, b in remote.items():
        assert b.url == endpoints[region] and b.model == doc["spec"]["model"]["name"]
    here = [b for b in fleet.backends if not b.via_endpoint]
    assert {b.region for b in here} <= {local}
    states = {p.name: p.state for p in running.status.pools}
    for p in doc["spec"]["pools"]:
        assert (states[p["name"]] == "ManagedElsewhere") == (p["region"] != local)
