"""Live load data: a simulated engine behind every Ready pod, scraped by a real Prometheus."""

from __future__ import annotations

import json
from typing import Any

import httpx
from prometheus_api_client import PrometheusConnect

from tests.e2e.conftest import Fleet
from tests.support.waiting import wait_until

LABELS = ("namespace", "factory", "pool", "region", "jurisdiction", "pod")


def _ready_engine_pods(fleet: Fleet) -> dict[str, dict[str, Any]]:
    out = fleet.cluster.kubectl(
        "get", "pods", "-A", "-l", "app.kubernetes.io/managed-by=inference-factory", "-o", "json"
    )
    pods = {}
    for pod in json.loads(out)["items"]:
        ready = any(c["type"] == "Ready" and c["status"] == "True"
                    for c in pod["status"].get("conditions", []))  # fmt: skip
        if ready and not pod["metadata"].get("deletionTimestamp"):
            pods[pod["metadata"]["name"]] = pod
    return pods


def _series(prom: PrometheusConnect, query: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = prom.custom_query(query)
    return result


def test_one_series_per_ready_pod_with_the_fleet_labels(fleet: Fleet) -> None:
    prom = PrometheusConnect(url=fleet.env["prometheus_url"], disable_ssl=True)

    def matched() -> list[dict[str, Any]] | None:
        pods = _ready_engine_pods(fleet)
        series = _series(prom, 'vllm:num_requests_running{job="vllm"}')
        return series if pods and {s["metric"]["pod"] for s in series} == set(pods) else None

    series = wait_until(matched, 120, interval=0.5, what="one series per Ready engine pod")
    pods = _ready_engine_pods(fleet)
    assert len(series) == len(pods)
    for s in series:
        metric = s["metric"]
        pod = pods[metric["pod"]]
        labels = pod["metadata"]["labels"]
        assert all(metric.get(k) for k in LABELS), metric
        assert metric["namespace"] == pod["metadata"]["namespace"]
        for key in ("factory", "pool", "region", "jurisdiction"):
            assert metric[key] == labels[f"inference.factory.dev/{key}"]
        assert metric["model_name"] and metric["engine"] == "0"


def test_scaling_a_pool_changes_the_live_series(fleet: Fleet) -> None:
    prom = PrometheusConnect(url=fleet.env["prometheus_url"], disable_ssl=True)
    out = fleet.cluster.kubectl("get", "inferencefactories", "-A", "-o", "json")
    factory = json.loads(out)["items"][0]
    ns, name = factory["metadata"]["namespace"], factory["metadata"]["name"]
    pool = factory["spec"]["pools"][0]
    query = f'count(vllm:num_requests_running{{factory="{name}",pool="{pool["name"]}"}})'

    def count() -> int:
        result = _series(prom, query)
        return int(float(result[0]["value"][1])) if result else 0

    original = pool["replicas"]
    try:
        for target in (original["min"] + 1, max(1, original["min"] - 1)):
            patch = {"spec": {"pools": [{**pool, "replicas": {"min": target,
                                                             "max": max(target, original["max"])}}
                                        , *factory["spec"]["pools"][1:]]}}  # fmt: skip
            fleet.cluster.kubectl("patch", "inferencefactory", name, "-n", ns, "--type=merge",
                                  "-p", json.dumps(patch))  # fmt: skip
            wait_until(lambda target=target: count() == target, 60, interval=0.5,
                       what=f"{target} live series")  # fmt: skip
    finally:
        restore = {"spec": {"pools": factory["spec"]["pools"]}}
        fleet.cluster.kubectl("patch", "inferencefactory", name, "-n", ns, "--type=merge",
                              "-p", json.dumps(restore))  # fmt: skip


def test_killing_a_regions_simulators_takes_their_targets_down(fleet: Fleet) -> None:
    prom = PrometheusConnect(url=fleet.env["prometheus_url"], disable_ssl=True)
    wait_until(lambda: _series(prom, 'up{job="vllm",region="ap-south-1"} == 1'), 120,
               interval=0.5, what="ap-south-1 engines scraped")  # fmt: skip
    killed = fleet.factoryctl("dev", "kill-sim", "ap-south-1")
    assert killed.returncode == 0, killed.stderr
    try:
        wait_until(lambda: not _series(prom, 'up{job="vllm",region="ap-south-1"} == 1')
                   and _series(prom, 'up{job="vllm",region="ap-south-1"} == 0'), 30,
                   interval=0.5, what="ap-south-1 targets down")  # fmt: skip
        # Their series go stale: no current sample of the engine's own metrics.
        wait_until(lambda: not _series(prom, 'vllm:num_requests_running{region="ap-south-1"}'),
                   30, interval=0.5, what="stale series")  # fmt: skip
        others = _series(prom, 'up{job="vllm",region!="ap-south-1"} == 1')
        assert others, "other regions must stay up"
    finally:
        assert fleet.factoryctl("dev", "up", "--only", "engines").returncode == 0
    wait_until(lambda: _series(prom, 'up{job="vllm",region="ap-south-1"} == 1'), 60,
               interval=0.5, what="ap-south-1 back")  # fmt: skip
    assert httpx.get(fleet.env["prometheus_url"] + "/-/ready", timeout=5).status_code == 200
