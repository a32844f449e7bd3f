"""Canary split and admin targeting (`policy.canary`, through `policy.route.plan`), the
tenants file's `admin`, and discovery of revisions and canaries (`discovery.kube`)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from factory_router.discovery.kube import fleet_from_objects
from factory_router.discovery.static import fleet_from_doc
from factory_router.policy.canary import Target, parse_target, requested_target
from factory_router.policy.config import RouterConfig
from factory_router.policy.errors import (
    InvalidTarget,
    ModelNotFound,
    NoCompliantBackend,
    PolicyError,
    TargetNotAllowed,
)
from factory_router.policy.fleet import Backend, Canary, Fleet, Pool, Region, build_fleet
from factory_router.policy.health import Ejector
from factory_router.policy.policies import PolicyName, Ranker, RouteRequest
from factory_router.policy.route import plan
from factory_router.policy.tenants import Tenant, hash_key, parse_tenants
from factory_router.signals.load import LoadState

EU = frozenset({"EU"})
NEW, OLD = "bbbbbbbbbb", "aaaaaaaaaa"


def backend(name: str, revision: str | None, *, region: str = "eu-west-1", **kw: Any) -> Backend:
    pool = kw.pop("pool", "llama-eu")
    return Backend(
        id=f"ml/{pool}/{name}",
        model="m",
        pool=pool,
        region=region,
        url=f"http://{name}:8000",
        factory="llama",
        namespace="ml",
        revision=revision,
        pool_name=pool.removeprefix("llama-"),
        **kw,
    )


def fleet_of(backends: list[Backend], weight: int | None, *, pool: str = "llama-eu") -> Fleet:
    canary = Canary(NEW, weight) if weight is not None else None
    pools = [
        Pool("ml", "llama", pool.removeprefix("llama-"), "m", "eu-west-1", pool, canary=canary)
    ]
    regions = [Region("eu-west-1", "EU"), Region("us-east-1", "US")]
    return build_fleet(regions, backends, pools=pools)


def route(
    fleet: Fleet,
    rng: random.Random | None,
    *,
    ejector: Ejector | None = None,
    target: Target | None = None,
    allowed: frozenset[str] = EU,
) -> list[str]:
    cfg = RouterConfig()
    req = RouteRequest("m", allowed, "eu-west-1", None, "rid", target)
    chosen = plan(
        fleet,
        req,
        ranker=Ranker(PolicyName.LEAST_REQUEST, cfg.scoring),
        view=LoadState(15.0, router_region="eu-west-1", scoring=cfg.scoring),
        ejector=ejector or Ejector(cfg.ejection),
        now=100.0,
        draw=rng.random if rng is not None else None,
    )
    return [r.backend.id.rsplit("/", 1)[1] for r in chosen.ordered]


STABLE = [backend("old-0", OLD), backend("old-1", OLD), backend("old-2", None)]
CANARY = [backend("new-0", NEW)]


@pytest.mark.parametrize("weight", [10, 50, 90])
def test_the_split_follows_the_weight_and_keeps_the_other_side_for_failover(weight: int) -> None:
    fleet = fleet_of([*STABLE, *CANARY], weight)
    rng = random.Random(7)
    n = 4000
    firsts: Counter[str] = Counter()
    for _ in range(n):
        ordered = route(fleet, rng)
        firsts["new" if ordered[0].startswith("new") else "old"] += 1
        first_side = ordered[0][:3]
        # The drawn side first, then the other side (failover), never mixed.
        sides = [name[:3] for name in ordered]
        assert sides == sorted(sides, key=lambda s: s != first_side)
        assert len(ordered) == 4
    share = firsts["new"] / n
    # Binomial: 4 standard deviations at n=4000 is at most 0.032.
    assert abs(share - weight / 100) < 0.032, share


def test_the_split_is_reproducible_with_a_seed() -> None:
    fleet = fleet_of([*STABLE, *CANARY], 30)

    def firsts(seed: int) -> list[str]:
        rng = random.Random(seed)
        return [route(fleet, rng)[0][:3] for _ in range(50)]

    assert firsts(3) == firsts(3)
    assert {"new", "old"} == set(firsts(3))


def test_each_canary_pool_draws_once_per_request() -> None:
    us = [backend("us-old", OLD, region="us-east-1", pool="llama-us")]
    us_new = [backend("us-new", NEW, region="us-east-1", pool="llama-us")]
    fleet = build_fleet(
        [Region("eu-west-1", "EU"), Region("us-east-1", "US")],
        [*STABLE, *CANARY, *us, *us_new],
        pools=[
            Pool("ml", "llama", "eu", "m", "eu-west-1", "llama-eu", canary=Canary(NEW, 50)),
            Pool("ml", "llama", "us", "m", "us-east-1", "llama-us", canary=Canary(NEW, 50)),
        ],
    )

    class Counting(random.Random):
        calls = 0

        def random(self) -> float:
            Counting.calls += 1
            return super().random()

    rng = Counting(1)
    route(fleet, rng, allowed=frozenset({"EU", "US"}))
    assert Counting.calls == 2
    route(fleet, rng)  # EU only: the US pool is not a candidate, it draws nothing
    assert Counting.calls == 3


def test_a_drawn_side_without_a_serving_replica_gives_way_to_the_other() -> None:
    draining = [backend("new-0", NEW, terminating=True), backend("new-1", NEW, serving=False)]
    fleet = fleet_of([*STABLE, *draining], 90)
    rng = random.Random(5)
    for _ in range(200):
        ordered = route(fleet, rng)
        assert ordered[0].startswith("old")
        assert "new-1" not in ordered  # not serving: never
    # The stable side ejected: the canary serves everything.
    cfg = RouterConfig()
    ejector = Ejector(cfg.ejection)
    for b in STABLE:
        for _ in range(cfg.ejection.consecutive_failures):
            ejector.record_failure(b.id, 100.0)
    fleet = fleet_of([*STABLE, *CANARY], 10)
    for _ in range(200):
        assert route(fleet, rng, ejector=ejector) == ["new-0"]


def test_weight_0_keeps_the_canary_as_a_last_resort_only_and_100_the_stable() -> None:
    fleet = fleet_of([*STABLE, *CANARY], 0)
    rng = random.Random(1)
    for _ in range(100):
        assert sorted(route(fleet, rng)) == ["old-0", "old-1", "old-2"]
    only_canary = fleet_of([*(backend(b.id[-5:], b.revision, serving=False) for b in STABLE),
                            *CANARY], 0)  # fmt: skip
    assert route(only_canary, rng) == ["new-0"]
    fleet = fleet_of([*STABLE, *CANARY], 100)
    assert route(fleet, rng) == ["new-0"]
    # No canary in status: no split, every replica a candidate, no draw needed.
    assert len(route(fleet_of([*STABLE, *CANARY], None), None)) == 4


def test_the_split_never_widens_the_residency_filter() -> None:
    # The canary's only replica is in the US: an EU-only request never reaches it, whatever
    # the draw; with the EU side empty of the canary the stable EU replicas serve.
    us_canary = backend("new-us", NEW, region="us-east-1")
    fleet = fleet_of([*STABLE, us_canary], 90)
    rng = random.Random(2)
    for _ in range(300):
        assert "new-us" not in route(fleet, rng)
    only_us = fleet_of([us_canary], 50)
    with pytest.raises(ModelNotFound):
        route(only_us, rng)


def test_explain_without_a_draw_keeps_both_sides() -> None:
    fleet = fleet_of([*STABLE, *CANARY], 30)
    assert sorted(route(fleet, None)) == ["new-0", "old-0", "old-1", "old-2"]


# --- targeting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ml/llama/eu", Target("ml", "llama", "eu")),
        (" ml/llama/eu@bbbbbbbbbb ", Target("ml", "llama", "eu", NEW)),
        ("team-a/llama.3/eu-h100@v1_2.x", Target("team-a", "llama.3", "eu-h100", "v1_2.x")),
    ],
)
def test_target_header_grammar(value: str, expected: Target) -> None:
    assert parse_target(value) == expected


@pytest.mark.parametrize(
    "value",
    ["ml/llama", "ml/llama/eu/x", "ml//eu", "ML/llama/eu", "ml/llama/eu@", "ml/llama/eu@a b",
     "ml/llama/eu@-x", "*/llama/eu", "ml/llama/eu@" + "a" * 64, "x" * 5000],
)  # fmt: skip
def test_malformed_target_is_400(value: str) -> None:
    with pytest.raises(InvalidTarget) as err:
        parse_target(value)
    assert err.value.status == 400 and err.value.code == "invalid_target"
    assert len(err.value.message) <= 512


def test_only_admin_tenants_may_target() -> None:
    admin = Tenant("ops", EU, admin=True)
    tenant = Tenant("acme", EU)
    assert requested_target(tenant, None) is None
    assert requested_target(tenant, "  ") is None
    for value in ("ml/llama/eu", "garbage"):
        with pytest.raises(TargetNotAllowed) as err:
            requested_target(tenant, value)
        body = err.value.body()["error"]
        assert err.value.status == 403
        assert (body["type"], body["code"]) == ("permission_error", "target_not_allowed")
    assert requested_target(admin, "ml/llama/eu@x1") == Target("ml", "llama", "eu", "x1")
    with pytest.raises(InvalidTarget):
        requested_target(admin, "garbage")


def test_tenants_file_admin_flag() -> None:
    doc: dict[str, Any] = {
        "admin_keys_sha256": [hash_key("sk-admin")],
        "tenants": [
            {"name": "ops", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key("sk-ops-1")],
             "admin": True},
            {"name": "acme", "jurisdictions": ["EU"], "api_keys_sha256": [hash_key("sk-acme")]},
        ],
    }  # fmt: skip
    table = parse_tenants(doc)
    assert table.tenants["ops"].admin and not table.tenants["acme"].admin
    doc["tenants"][0]["admin"] = "yes"
    with pytest.raises(PolicyError):
        parse_tenants(doc)


def test_a_target_restricts_to_its_pool_and_revision_unsplit_within_residency() -> None:
    other_pool = backend("other", OLD, pool="llama-eu2")
    us_new = backend("new-us", NEW, region="us-east-1")
    fleet = fleet_of([*STABLE, *CANARY, other_pool, us_new], 0)  # weight 0: no split either
    rng = random.Random(4)
    assert route(fleet, rng, target=Target("ml", "llama", "eu", NEW)) == ["new-0"]
    assert sorted(route(fleet, rng, target=Target("ml", "llama", "eu", OLD))) == [
        "old-0",
        "old-1",
    ]
    assert sorted(route(fleet, rng, target=Target("ml", "llama", "eu"))) == [
        "new-0",
        "old-0",
        "old-1",
        "old-2",
    ]
    assert route(fleet, rng, target=Target("ml", "llama", "eu2")) == ["other"]
    for nothing in (
        Target("ml", "llama", "eu", "cccccccccc"),
        Target("other-ns", "llama", "eu"),
        Target("ml", "mistral", "eu"),
    ):
        with pytest.raises(NoCompliantBackend):
            route(fleet, rng, target=nothing)
    # The US canary replica exists, but the request is EU-only: residency still applies.
    only_us_new = fleet_of([us_new, *STABLE], 50)
    with pytest.raises(NoCompliantBackend):
        route(only_us_new, rng, target=Target("ml", "llama", "eu", NEW))


# --- discovery ------------------------------------------------------------------------


def _objects(canary: Any) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    regions = [{"metadata": {"name": "eu-west-1"}, "spec": {"jurisdiction": "EU"}}]
    status_pool: dict[str, Any] = {"name": "eu", "region": "eu-west-1", "jurisdiction": "EU"}
    if canary is not None:
        status_pool["canary"] = canary
    factory = {
        "metadata": {"name": "llama", "namespace": "ml"},
        "spec": {"model": {"name": "m"}, "pools": [{"name": "eu", "region": "eu-west-1"}]},
        "status": {"pools": [status_pool]},
    }
    endpoints = [
        {"addresses": [f"10.0.0.{i}"], "conditions": {"ready": True},
         "targetRef": {"kind": "Pod", "name": name, "namespace": "ml"}}
        for i, name in enumerate(["stable-0", "canary-0", "bare-0"])
    ]  # fmt: skip
    eslice = {
        "metadata": {
            "name": "llama-eu-x",
            "namespace": "ml",
            "labels": {"kubernetes.io/service-name": "llama-eu"},
        },
        "ports": [{"name": "http", "port": 8000}],
        "endpoints": endpoints,
    }
    label = "inference.factory.dev/revision"
    pods = [
        {"metadata": {"name": "stable-0", "namespace": "ml", "labels": {label: OLD}}},
        {"metadata": {"name": "canary-0", "namespace": "ml",
                      "labels": {label: NEW, "inference.factory.dev/track": "canary"}}},
        {"metadata": {"name": "bare-0", "namespace": "ml", "labels": {}}},
    ]  # fmt: skip
    return regions, [factory], [eslice], pods


def test_discovery_reads_revisions_from_pods_and_the_canary_from_status() -> None:
    fleet = fleet_from_objects(*_objects({"revision": NEW, "weight": 25, "desiredReplicas": 1}))
    by_pod = {b.pod: b for b in fleet.backends}
    assert by_pod["stable-0"].revision == OLD
    assert by_pod["canary-0"].revision == NEW
    assert by_pod["bare-0"].revision is None
    assert {b.bare_pool for b in fleet.backends} == {"eu"}
    assert {b.pool for b in fleet.backends} == {"llama-eu"}
    assert [p.canary for p in fleet.pools] == [Canary(NEW, 25)]
    assert fleet.canary_of(by_pod["stable-0"]) == Canary(NEW, 25)
    # The split through discovery's fleet: the canary gets about a quarter.
    rng = random.Random(11)
    firsts = Counter(route(fleet, rng)[0] for _ in range(2000))
    assert abs(firsts["canary-0"] / 2000 - 0.25) < 0.04, firsts
    assert firsts["stable-0"] + firsts["bare-0"] + firsts["canary-0"] == 2000


@pytest.mark.parametrize(
    "canary",
    [None, "x", {"revision": NEW}, {"revision": "", "weight": 5}, {"revision": NEW, "weight": "5"},
     {"revision": NEW, "weight": 101}, {"revision": NEW, "weight": -1}, {"weight": 5},
     {"revision": NEW, "weight": True}, {"revision": NEW, "weight": 2.5}],
)  # fmt: skip
def test_a_malformed_canary_reads_as_none_and_nothing_is_split(canary: Any) -> None:
    fleet = fleet_from_objects(*_objects(canary))
    assert [p.canary for p in fleet.pools] == [None]
    assert len(fleet.backends) == 3
    assert len(route(fleet, random.Random(1))) == 3


def test_static_backends_carry_a_revision() -> None:
    fleet = fleet_from_doc(
        {
            "regions": [{"name": "eu-west-1", "jurisdiction": "EU"}],
            "backends": [
                {"model": "m", "pool": "eu", "region": "eu-west-1", "url": "http://a:1",
                 "factory": "llama", "namespace": "ml", "revision": NEW},
                {"model": "m", "pool": "eu", "region": "eu-west-1", "url": "http://b:1"},
            ],
        }
    )  # fmt: skip
    a, b = fleet.backends
    assert (a.revision, a.bare_pool, b.revision) == (NEW, "eu", None)
    assert Target("ml", "llama", "eu", NEW).matches(a) and not Target("ml", "llama", "eu").matches(
        b
    )
    with pytest.raises(PolicyError):
        fleet_from_doc(
            {"backends": [{"model": "m", "pool": "p", "url": "http://a", "revision": ""}]}
        )


def test_a_target_never_matches_a_region_reached_through_its_endpoint() -> None:
    """The router there gets no x-factory-target (engines and peers get an allowlist) and
    would split, or choose another pool of the model: the admin would be answered by a
    revision or pool it did not ask for."""
    peer = Backend(
        id="region:eu-central-1/m", model="m", pool="llama-fra", region="eu-central-1",
        url="https://fra.example", factory="llama", namespace="ml", via_endpoint=True,
        pool_name="fra",
    )  # fmt: skip
    regions = [Region("eu-west-1", "EU"), Region("eu-central-1", "EU")]
    fleet = build_fleet(regions, [*STABLE, peer])
    assert "m" in route(fleet, None)  # untargeted, the region is a candidate
    with pytest.raises(NoCompliantBackend):
        route(fleet, None, target=Target("ml", "llama", "fra"))
