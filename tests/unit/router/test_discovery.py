"""Discovery: the static file and the pure Kubernetes translation (watch events included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from factory_router.discovery.kube import KubeCache, fleet_from_objects
from factory_router.discovery.static import fleet_from_doc, load_fleet_file
from factory_router.policy.errors import PolicyError

STATIC = """
regions:
  - {name: eu-west-1, jurisdiction: eu}
  - {name: us-east-1, jurisdiction: US}
  - {name: limbo-1}
rtt_ms:
  eu-west-1: {us-east-1: 80}
backends:
  - {model: m, pool: eu-a, region: eu-west-1, url: "http://127.0.0.1:8001/", pod: p0}
  - {model: m, pool: us-a, region: us-east-1, url: "http://127.0.0.1:8002", cost: 2}
  - {model: m, pool: x, url: "http://127.0.0.1:8003"}
  - {model: m, pool: y, region: limbo-1, url: "http://127.0.0.1:8004"}
"""


def test_static_file(tmp_path: Path) -> None:
    path = tmp_path / "backends.yaml"
    path.write_text(STATIC)
    fleet = load_fleet_file(path)
    assert fleet.jurisdictions == {"EU", "US"}
    by_pool = {b.pool: b for b in fleet.backends}
    assert by_pool["eu-a"].url == "http://127.0.0.1:8001" and by_pool["eu-a"].id == "eu-a/p0"
    assert by_pool["us-a"].cost == 2
    assert fleet.jurisdiction_of(by_pool["x"]) is None
    assert fleet.jurisdiction_of(by_pool["y"]) is None
    assert fleet.compliant("m", frozenset({"EU", "US"})) == [by_pool["eu-a"], by_pool["us-a"]]
    assert fleet.rtt.pairs[frozenset({"us-east-1", "eu-west-1"})] == 80


@pytest.mark.parametrize(
    "doc",
    [
        {"backends": [{"model": "m", "pool": "p", "url": "ftp://x"}]},
        {"backends": [{"model": "m", "pool": "p"}]},
        {"regions": [{"name": "a", "jurisdiction": "*"}]},
        {"regions": [{"name": "a"}, {"name": "a"}]},
        {"backend": []},
        {
            "backends": [
                {"model": "m", "pool": "p", "url": "http://a"},
                {"model": "m", "pool": "p", "url": "http://a"},
            ]
        },
    ],
)
def test_static_file_errors(doc: Any) -> None:
    with pytest.raises(PolicyError):
        fleet_from_doc(doc)


def region(name: str, jurisdiction: str | None, **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = dict(spec)
    if jurisdiction is not None:
        s["jurisdiction"] = jurisdiction
    return {"metadata": {"name": name}, "spec": s}


def factory(
    name: str, model: str, pools: list[tuple[str, str, str | None]], ns: str = "ml"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"name": model},
            "pools": [
                {
                    "name": p,
                    "region": r,
                    "accelerator": {"kind": "nvidia", "type": "H100", "count": 2},
                }
                for p, r, _ in pools
            ],
        },
        "status": {"pools": [{"name": p, "region": r, "jurisdiction": j} for p, r, j in pools]},
    }


def eslice(
    service: str,
    endpoints: list[dict[str, Any]],
    ns: str = "ml",
    port: int = 8000,
    name: str | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name or f"{service}-abc",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": "http", "port": port}],
        "endpoints": endpoints,
    }


def ep(ip: str, pod: str, **conditions: bool) -> dict[str, Any]:
    return {
        "addresses": [ip],
        "conditions": conditions,
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "ml"},
    }


def pod(name: str, address: str | None = None) -> dict[str, Any]:
    ann = {"inference.factory.dev/address": address} if address else {}
    return {"metadata": {"name": name, "namespace": "ml", "annotations": ann}}


def test_kube_translation() -> None:
    fleet = fleet_from_objects(
        [
            region("eu-west-1", "EU", pricing={"H100": 6.88}),
            region("us-east-1", "US"),
            region("nojur-1", None),
        ],
        [
            factory(
                "llama",
                "llama-8b",
                [
                    ("eu", "eu-west-1", "EU"),
                    ("us", "us-east-1", "US"),
                    ("lie", "us-east-1", "EU"),
                    ("nj", "nojur-1", None),
                ],
            )
        ],
        [
            eslice(
                "llama-eu",
                [
                    ep("10.0.0.1", "llama-eu-0", ready=True, serving=True),
                    ep("10.0.0.2", "llama-eu-1", ready=False, serving=True, terminating=True),
                    ep("10.0.0.3", "llama-eu-2", ready=False, serving=False),
                ],
            ),
            eslice("llama-us", [ep("10.0.1.1", "llama-us-0")], port=9000),
            eslice("llama-lie", [ep("10.0.2.1", "llama-lie-0")]),
            eslice("llama-nj", [ep("fd00::1", "llama-nj-0")]),
            eslice("other-svc", [ep("10.9.9.9", "x")]),
        ],
        [pod("llama-eu-0", "127.0.0.1:41001"), pod("llama-us-0")],
    )
    b = {x.id: x for x in fleet.backends}
    eu0 = b["ml/llama-eu/llama-eu-0"]
    assert eu0.url == "http://127.0.0.1:41001"  # the annotation wins over the pod IP
    assert eu0.model == "llama-8b" and eu0.region == "eu-west-1" and eu0.pod == "llama-eu-0"
    # 2 x H100 at 6.88/h, nothing live: converted at the nominal 1,000 tokens/s per replica
    assert eu0.cost == pytest.approx(13.76 / 3.6) and eu0.cost_source == "list"
    assert b["ml/llama-eu/llama-eu-1"].terminating and b["ml/llama-eu/llama-eu-1"].serving
    assert not b["ml/llama-eu/llama-eu-2"].serving
    assert b["ml/llama-us/llama-us-0"].url == "http://10.0.1.1:9000"
    assert b["ml/llama-lie/llama-lie-0"].region is None  # status disagrees with FleetRegion
    assert b["ml/llama-nj/llama-nj-0"].url == "http://[fd00::1]:8000"
    assert not any("other-svc" in x for x in b)
    assert [x.id for x in fleet.compliant("llama-8b", frozenset({"EU"}))] == [
        "ml/llama-eu/llama-eu-0",
        "ml/llama-eu/llama-eu-1",
        "ml/llama-eu/llama-eu-2",
    ]


def test_regional_endpoint_for_pools_in_other_clusters() -> None:
    fleet = fleet_from_objects(
        [region("eu-west-1", "EU"), region("us-east-1", "US", endpoint="https://us.example/")],
        [factory("llama", "m", [("eu", "eu-west-1", "EU"), ("us", "us-east-1", "US")])],
        [eslice("llama-eu", [ep("10.0.0.1", "p0")])],
        [],
        local_region="eu-west-1",
    )
    ids = sorted(b.id for b in fleet.backends)
    assert ids == ["ml/llama-eu/p0", "region:us-east-1/m"]
    remote = next(b for b in fleet.backends if b.id.startswith("region:"))
    assert remote.url == "https://us.example" and remote.region == "us-east-1"
    assert remote.via_endpoint and not any(b.via_endpoint for b in fleet.backends if b.pod)


def test_watch_events_update_the_cache() -> None:
    cache = KubeCache()
    cache.replace("regions", [region("eu-west-1", "EU")])
    cache.replace("factories", [factory("llama", "m", [("eu", "eu-west-1", "EU")])])
    cache.replace("slices", [eslice("llama-eu", [ep("10.0.0.1", "p0")])])
    assert [b.id for b in cache.fleet().backends] == ["ml/llama-eu/p0"]
    # Rollout: a new pod comes, the old one terminates, then leaves.
    assert cache.apply(
        "slices",
        "MODIFIED",
        eslice(
            "llama-eu",
            [
                ep("10.0.0.1", "p0", ready=False, serving=True, terminating=True),
                ep("10.0.0.2", "p1", ready=True),
            ],
        ),
    )
    fleet = cache.fleet()
    assert [b.id for b in fleet.compliant("m", frozenset({"EU"})) if not b.terminating] == [
        "ml/llama-eu/p1"
    ]
    cache.apply("pods", "ADDED", pod("p1", "127.0.0.1:5555"))
    assert {b.url for b in cache.fleet().backends} == {
        "http://10.0.0.1:8000",
        "http://127.0.0.1:5555",
    }
    # The FleetRegion goes away: everything in it stops being routable.
    assert cache.apply("regions", "DELETED", region("eu-west-1", "EU"))
    assert cache.fleet().models_for(frozenset({"EU"})) == []
    assert not cache.apply("regions", "BOOKMARK", {"metadata": {"name": "x"}})


def test_batch_capacity_from_the_pool_else_the_factory() -> None:
    doc = factory("llama", "llama-8b", [("a", "eu-west-1", "EU"), ("b", "eu-west-1", "EU")])
    doc["spec"]["engine"] = {"args": {"maxNumSeqs": 64}}
    doc["spec"]["pools"][0]["engine"] = {"args": {"maxNumSeqs": 2}}
    fleet = fleet_from_objects(
        [region("eu-west-1", "EU")],
        [doc],
        [eslice("llama-a", [ep("10.0.0.1", "a-0")]), eslice("llama-b", [ep("10.0.0.2", "b-0")])],
        [],
    )
    capacity = {x.pool: x.max_num_seqs for x in fleet.backends}
    assert capacity == {"llama-a": 2, "llama-b": 64}
    del doc["spec"]["engine"]
    fleet = fleet_from_objects(
        [region("eu-west-1", "EU")], [doc], [eslice("llama-b", [ep("10.0.0.2", "b-0")])], []
    )
    assert fleet.backends[0].max_num_seqs is None  # unknown: learned from load data instead
