"""The admin surface apart (issue 13, item 4): the tenants' port answers the API and a bare
health and readiness check only; readiness details, /metrics and /admin/* are on the admin
listener; no answer and no log line shows a URL's user:password."""

from __future__ import annotations

import logging

import httpx
import pytest
from pydantic import ValidationError

from factory_router.app.logs import JsonFormatter, redact
from factory_router.main import Settings
from factory_router.policy.config import RouterConfig, Timeouts
from tests.unit.router.router_testkit import admin, auth, backend, engines, router, wait_until

SECRET = "s3cret-pw"
PROMETHEUS = f"http://scraper:{SECRET}@127.0.0.1:9/prometheus"  # nothing listens on 9
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_tenant_port_has_the_api_and_bare_checks_only() -> None:
    cfg = RouterConfig(
        prometheus_interval=0.05, timeouts=Timeouts(prometheus_query=0.5, first_byte=5)
    )
    async with (
        engines(1) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1")], config=cfg, prometheus_url=PROMETHEUS) as r,
        httpx.AsyncClient(base_url=r.url) as c,
    ):
        assert r.port != r.admin_port
        await wait_until(lambda: r.state.prometheus_error is not None, timeout=5)
        replies = {
            path: await c.get(path, headers=auth("admin"))
            for path in ("/healthz", "/health", "/readyz", "/metrics", "/admin/explain")
        }
        assert replies["/healthz"].status_code == replies["/health"].status_code == 200
        ready = replies["/readyz"]
        assert ready.status_code == 200 and ready.json() == {"status": "degraded"}
        for path in ("/metrics", "/admin/explain"):
            assert replies[path].status_code == 404
            assert replies[path].json()["error"]["code"] == "not_found"
        chat = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
        assert chat.status_code == 200
        assert all(SECRET not in reply.text for reply in [*replies.values(), chat])


async def test_admin_port_has_details_metrics_and_explain_never_credentials() -> None:
    cfg = RouterConfig(
        prometheus_interval=0.05, timeouts=Timeouts(prometheus_query=0.5, first_byte=5)
    )
    async with (
        engines(1) as (eu,),
        router([backend(eu, "eu-a", "eu-west-1")], config=cfg, prometheus_url=PROMETHEUS) as r,
        admin(r) as c,
    ):
        await wait_until(lambda: r.state.prometheus_error is not None, timeout=5)
        details = await c.get("/readyz")
        load = details.json()["load_data"]
        assert details.status_code == 200 and details.json()["status"] == "degraded"
        assert load["prometheus_url"] == "http://***@127.0.0.1:9/prometheus"
        metrics = await c.get("/metrics")
        assert metrics.status_code == 200 and "factory_router_load_data_stale 1.0" in metrics.text
        explained = await c.get(
            "/admin/explain", params={"tenant": "eu-only", "model": "m"}, headers=auth("admin")
        )
        assert explained.status_code == 200 and explained.json()["chosen"] == f"eu-a/{eu.url}"
        assert SECRET not in details.text + explained.text
        assert (await c.get("/admin/explain", headers=auth("eu"))).status_code == 403
        # The API is not served here: the admin port is no second way in for tenants.
        api = await c.post("/v1/chat/completions", json=CHAT, headers=auth("eu"))
        assert api.status_code == 404 and eu.total == 0


async def test_tenant_readyz_is_503_when_unready_and_says_no_more() -> None:
    async with router([]) as r, httpx.AsyncClient(base_url=r.url) as c, admin(r) as a:
        bare = await c.get("/readyz")
        assert bare.status_code == 503 and bare.json() == {"status": "unready"}
        details = await a.get("/readyz")
        assert details.status_code == 503
        assert details.json()["problems"] == ["no backends discovered"]


def test_redact_hides_userinfo_of_every_url() -> None:
    text = (
        "GET http://u:p%40ss@prom:9090/api/v1/query failed; "
        "also https://tok@host, HTTPS://a:b:c@d@e.example/x and http://plain:80/a@b"
    )
    assert redact(text) == (
        "GET http://***@prom:9090/api/v1/query failed; "
        "also https://***@host, HTTPS://***@e.example/x and http://plain:80/a@b"
    )
    assert redact("user@example.com, no URL") == "user@example.com, no URL"


def test_log_lines_never_carry_credentials() -> None:
    try:
        raise ConnectionError(f"cannot reach {PROMETHEUS}")
    except ConnectionError as exc:
        record = logging.LogRecord(
            "factory_router.signals", logging.ERROR, __file__, 1,
            "query to %s failed", (PROMETHEUS,), (type(exc), exc, exc.__traceback__),
        )  # fmt: skip
    record.fields = {"url": PROMETHEUS}
    line = JsonFormatter().format(record)
    assert SECRET not in line and line.count("http://***@127.0.0.1:9/prometheus") == 3


def test_admin_listen_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--region", "r", "--tenants", "t", "--backends", "b"]
    assert Settings(_cli_parse_args=base).admin_listen == "127.0.0.1:9091"  # type: ignore[call-arg]
    monkeypatch.setenv("FACTORY_ROUTER_ADMIN_LISTEN", "0.0.0.0:9100")
    assert Settings(_cli_parse_args=base).admin_listen == "0.0.0.0:9100"  # type: ignore[call-arg]
    for bad in ("9100", "host:port", "127.0.0.1:8080"):  # the last: the same as --listen
        with pytest.raises(ValidationError):
            Settings(_cli_parse_args=[*base, "--admin-listen", bad])  # type: ignore[call-arg]
