"""The world of the contract tests: the example factories, the FleetRegions and nodes they
run on (deploy/examples/, deploy/local/), the operator's real plan for them, and the cluster
that plan makes (pods, EndpointSlices, the factory's status) as Kubernetes would fill it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from factory_contract import metrics, names
from factory_operator.api import FleetRegion, InferenceFactory
from factory_operator.api.accelerators import ACCELERATOR_RESOURCES
from factory_operator.plan import (
    DeploymentInfo,
    NodeInfo,
    Observed,
    OperatorSettings,
    Plan,
    plan_factory,
)
from factoryctl.components.resources import fleet_regions, sample_factories
from factoryctl.topology import load_topology, node_manifests

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "deploy" / "examples"
TOPOLOGY = load_topology(ROOT / "deploy" / "local" / "topology.yaml")
NOW = "2026-01-01T00:00:00Z"
Obj = dict[str, Any]


def _documents(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _nodes() -> list[NodeInfo]:
    """The local fleet's nodes, as the operator's observer reduces them."""
    return [
        NodeInfo(
            n["metadata"]["name"],
            n["metadata"]["labels"],
            {
                r: int(v)
                for r, v in n["status"]["allocatable"].items()
                if r in ACCELERATOR_RESOURCES
            },
        )
        for n in node_manifests(TOPOLOGY)
    ]


NODES = _nodes()
# The examples' FleetRegions (each with its endpoint), and the local fleet's (one per
# region of the topology, priced like the examples, no endpoint).
EXAMPLE_REGIONS = [
    d for d in _documents(EXAMPLES / "fleetregions.yaml") if d["kind"] == "FleetRegion"
]
LOCAL_REGIONS = fleet_regions(SimpleNamespace(topology=TOPOLOGY))  # type: ignore[arg-type]
FACTORIES = sample_factories(real_engine=True)  # deploy/examples/ and deploy/local/


@dataclass(frozen=True)
class Cluster:
    """What the API server holds once the plan is applied and every pod runs."""

    factory: Obj
    slices: list[Obj]
    pods: list[Obj]


def plan_of(doc: Obj, regions: list[Obj], settings: OperatorSettings, running: Plan | None) -> Plan:
    factory = InferenceFactory.model_validate(
        {**doc, "metadata": {**doc["metadata"], "uid": "uid-1", "generation": 1}}
    )
    by_name = {r["metadata"]["name"]: FleetRegion.model_validate(r) for r in regions}
    deployments = {}
    for d in running.apply if running is not None else []:
        if d["kind"] == "Deployment":
            labels = d["spec"]["template"]["metadata"]["labels"]
            replicas = d["spec"]["replicas"]
            deployments[labels[names.prefixed(names.POOL_LABEL)]] = DeploymentInfo(
                name=d["metadata"]["name"],
                pool=labels[names.prefixed(names.POOL_LABEL)],
                spec_replicas=replicas,
                ready_replicas=replicas,
                updated_replicas=replicas,
                generation=1,
                observed_generation=1,
                revision=labels[names.prefixed(names.REVISION_LABEL)],
            )
    observed = Observed(now=NOW, nodes=NODES, deployments=deployments, podmonitor_crd=True)
    return plan_factory(factory, by_name, observed, settings)


def apply_plan(doc: Obj, plan: Plan) -> Cluster:
    """The cluster after the plan: pods of every Deployment, EndpointSlices of every Service."""
    namespace = doc["metadata"].get("namespace", "default")
    deployments = [c for c in plan.apply if c["kind"] == "Deployment"]
    pods: list[Obj] = []
    for d in deployments:
        for i in range(d["spec"]["replicas"]):
            pods.append(
                {
                    "metadata": {
                        "name": f"{d['metadata']['name']}-{i}",
                        "namespace": namespace,
                        "labels": d["spec"]["template"]["metadata"]["labels"],
                    },
                    "ip": f"10.{len(pods) // 250}.{len(pods) % 250}.1",
                    "port": d["spec"]["template"]["spec"]["containers"][0]["ports"][0][
                        "containerPort"
                    ],
                }
            )
    slices = []
    for svc in (c for c in plan.apply if c["kind"] == "Service"):
        selector = svc["spec"]["selector"]
        members = [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]
        slices.append(
            {
                "metadata": {
                    "name": f"{svc['metadata']['name']}-x1",
                    "namespace": namespace,
                    "labels": {
                        names.SERVICE_NAME_LABEL: svc["metadata"]["name"],
                        **svc["metadata"]["labels"],
                    },
                },
                "ports": [{"name": "http", "port": members[0]["port"] if members else 8000}],
                "endpoints": [
                    {
                        "addresses": [p["ip"]],
                        "conditions": {"ready": True, "serving": True, "terminating": False},
                        "targetRef": {
                            "kind": "Pod",
                            "name": p["metadata"]["name"],
                            "namespace": namespace,
                        },
                    }
                    for p in members
                ],
            }
        )
    factory = {**doc, "status": plan.status.to_wire()}
    return Cluster(factory, slices, [{"metadata": p["metadata"]} for p in pods])


def series_labels(pod: Obj, plan: Plan) -> dict[str, str]:
    """The labels Prometheus gives the pod's series under the operator's PodMonitor."""
    monitors = [c for c in plan.apply if c["kind"] == "PodMonitor"]
    pool = pod["metadata"]["labels"][names.prefixed(names.POOL_LABEL)]
    monitor = next(m for m in monitors if m["metadata"]["name"].endswith(f"-{pool}"))
    meta = {metrics.pod_label_meta(k): v for k, v in pod["metadata"]["labels"].items()}
    labels = {
        metrics.NAMESPACE_SERIES_LABEL: pod["metadata"]["namespace"],
        metrics.POD_SERIES_LABEL: pod["metadata"]["name"],
    }
    for rule in monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]:
        labels[rule["targetLabel"]] = ";".join(meta.get(s, "") for s in rule["sourceLabels"])
    return labels
