"""The chart's quota settings (router.quota): the router's flags from values, the bundled
Redis (off by default; restricted Pod Security; reachable from the router pods only), an
existing Redis by URL or by Secret (and the NetworkPolicy egress it needs)."""

from __future__ import annotations

from tests.unit.chart.chart_tools import (
    BASE_SET,
    Obj,
    by_name,
    helm_template,
    helm_template_error,
    of_kind,
)
from tests.unit.chart.test_chart import _check_restricted

BUNDLED = ("--set", "router.quota.redis.bundled.enabled=true")


def _router(objs: list[Obj]) -> Obj:
    container: Obj = by_name(objs, "Deployment", "router")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def _policies(objs: list[Obj]) -> dict[str, Obj]:
    return {p["metadata"]["name"]: p["spec"] for p in of_kind(objs, "NetworkPolicy")}


def test_defaults_no_redis_and_per_replica_shares() -> None:
    objs = helm_template()
    args = _router(objs)["args"]
    assert "--quota-replicas=2" in args
    assert "--quota-default-max-tokens=1024" in args
    assert not [a for a in args if a.startswith("--quota-redis-url")]
    assert not [o for o in objs if o["metadata"]["name"].endswith("-redis")]
    hpa = _router(helm_template("--set", "router.autoscaling.enabled=true"))["args"]
    assert "--quota-replicas=6" in hpa  # the most replicas there can be: never over the limit


def test_bundled_redis_is_restricted_private_and_the_routers_url() -> None:
    objs = helm_template(*BUNDLED)
    redis = by_name(objs, "Deployment", "redis")
    _check_restricted(redis["spec"]["template"]["spec"], "redis")
    assert redis["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    # Never two Redis pods behind the Service (each would hold part of the counters).
    assert redis["spec"]["replicas"] == 1 and redis["spec"]["strategy"] == {"type": "Recreate"}
    service = by_name(objs, "Service", "redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    args = _router(objs)["args"]
    assert f"--quota-redis-url=redis://{service['metadata']['name']}:6379/0" in args
    policies = _policies(objs)
    own = policies["fleet-inference-factory-redis"]
    assert own["policyTypes"] == ["Ingress", "Egress"] and "egress" not in own
    (rule,) = own["ingress"]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": by_name(objs, "Deployment", "router")["spec"]["selector"][
            "matchLabels"]}}
    ]  # fmt: skip
    router_egress = policies["fleet-inference-factory-router"]["egress"]
    assert any(
        r["to"][0].get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        == "redis"
        and r["ports"] == [{"port": 6379, "protocol": "TCP"}]
        for r in router_egress
    )


def test_an_existing_redis_needs_its_network_peer() -> None:
    url = ("--set", "router.quota.redis.url=redis://quota.internal:6379/0")
    error = helm_template_error(*BASE_SET, *url)
    assert "networkPolicy.quotaRedis" in error
    objs = helm_template(*url, "--set", "networkPolicy.quotaRedis.cidrs={10.1.2.3/32}")
    assert "--quota-redis-url=redis://quota.internal:6379/0" in _router(objs)["args"]
    egress = _policies(objs)["fleet-inference-factory-router"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}],
            "ports": [{"port": 6379, "protocol": "TCP"}]} in egress  # fmt: skip
    assert helm_template(*url, "--set", "networkPolicy.enabled=false")


def test_a_redis_url_with_a_password_comes_from_a_secret() -> None:
    objs = helm_template(
        "--set",
        "router.quota.redis.urlSecret.name=quota-redis",
        "--set",
        "networkPolicy.quotaRedis.namespaceLabels.kubernetes\\.io/metadata\\.name=redis",
    )
    router = _router(objs)
    assert not [a for a in router["args"] if a.startswith("--quota-redis-url")]
    env = {e["name"]: e for e in router["env"]}
    assert env["FACTORY_ROUTER_QUOTA_REDIS_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "quota-redis", "key": "url"}
    }
