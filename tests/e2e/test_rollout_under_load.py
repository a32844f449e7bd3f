"""A pool scaled down and then rolled while requests flow through the router: none dropped."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from factoryctl.load import LoadResult, Workload, run
from tests.e2e.conftest import Fleet
from tests.support.waiting import wait_until

FACTORY, NAMESPACE, POOL = "llama-8b", "inference", "h100-dub"


def _factory(fleet: Fleet) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(fleet.cluster.kubectl(
        "get", "inferencefactory", FACTORY, "-n", NAMESPACE, "-o", "json"))  # fmt: skip
    return found


def _deployment(fleet: Fleet) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(fleet.cluster.kubectl(
        "get", "deployment", f"{FACTORY}-{POOL}", "-n", NAMESPACE, "-o", "json"))  # fmt: skip
    return found


def _patch_pools(fleet: Fleet, pools: list[dict[str, Any]]) -> None:
    fleet.cluster.kubectl("patch", "inferencefactory", FACTORY, "-n", NAMESPACE, "--type=merge",
                          "-p", json.dumps({"spec": {"pools": pools}}))  # fmt: skip


def _settled(fleet: Fleet, replicas: int, revision: str | None = None) -> bool:
    status = _deployment(fleet).get("status", {})
    labels = _deployment(fleet)["spec"]["template"]["metadata"]["labels"]
    return (
        status.get("replicas") == replicas
        and status.get("updatedReplicas") == replicas
        and status.get("readyReplicas") == replicas
        and (revision is None or labels["inference.factory.dev/revision"] != revision)
    )


def test_scale_down_and_roll_under_load_drop_nothing(fleet: Fleet) -> None:
    env = fleet.env
    work = Workload(env["router_url"], {"eu-only": env["tenants"]["eu-only"]["api_key"]},
                    {"eu-only": ["llama-3.1-8b-instruct"]}, rate=12, duration=45,
                    shared_prefix=0.3, max_tokens=48, seed=7)  # fmt: skip
    result: list[LoadResult] = []
    loader = threading.Thread(target=lambda: result.append(asyncio.run(run(work))))
    original = _factory(fleet)["spec"]["pools"]
    pools = json.loads(json.dumps(original))
    target = next(p for p in pools if p["name"] == POOL)
    loader.start()
    try:
        # Scale the pool down to one replica while requests flow.
        target["replicas"] = {"min": 1, "max": target["replicas"]["max"]}
        _patch_pools(fleet, pools)
        wait_until(lambda: _settled(fleet, 1), 60, interval=0.5, what="scaled down to 1")
        # Then roll it: a new engine argument, so every pod of the pool is replaced.
        revision = _deployment(fleet)["spec"]["template"]["metadata"]["labels"][
            "inference.factory.dev/revision"
        ]
        target["engine"] = {"args": {"maxNumSeqs": 48}}
        _patch_pools(fleet, pools)
        wait_until(lambda: _settled(fleet, 1, revision), 60, interval=0.5, what="rolled")
    finally:
        loader.join(timeout=120)
        _patch_pools(fleet, original)
    assert result, "the load generator did not finish"
    outcome = result[0]
    assert outcome.sent > 300, outcome.summary()
    assert outcome.by_status == {200: outcome.sent}, outcome.summary()
    assert set(outcome.by_region) <= {"eu-west-1", "eu-central-1"}, outcome.summary()
