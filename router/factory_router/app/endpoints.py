"""Non-proxy endpoints.

Tenant-facing port: `/v1/models`, `/healthz` (and `/health`) and `/readyz`, a bare status
(code and `{"status": ...}`, nothing about the configuration). Admin port
(`--admin-listen`): `/readyz` with the details (`readyz_details`), `/metrics`,
`/admin/explain` (admin key). No answer shows a URL's userinfo (`redact`).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from factory_router.app.http import placement_headers, request_id, send_error, send_json
from factory_router.app.http_message import Request
from factory_router.app.logs import redact
from factory_router.app.state import RouterState
from factory_router.policy.errors import BadRequest, Forbidden, NotFound, RouterError, clip
from factory_router.policy.policies import RouteRequest
from factory_router.policy.tenants import allowed_jurisdictions


async def models(state: RouterState, request: Request) -> None:
    rid = request_id(request)
    headers = placement_headers(rid, None, None, None)
    try:
        tenant = state.tenants.authenticate(request.headers.get("authorization"))
        allowed = allowed_jurisdictions(
            tenant, request.headers.get("x-factory-residency"), state.known_jurisdictions()
        )
    except RouterError as err:
        send_error(request, err, headers)
        return
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "inference-factory"}
        for m in state.fleet.models_for(allowed)
    ]
    send_json(request, {"object": "list", "data": data}, headers=headers)


async def healthz(state: RouterState, request: Request) -> None:
    send_json(request, {"status": "ok"})


def load_status(state: RouterState) -> dict[str, Any]:
    age = state.load.age()
    fresh = state.load.fresh()
    url, error = state.prometheus_url, state.prometheus_error
    return {
        "source": "prometheus+passive" if fresh else "passive-only",
        "prometheus_url": None if url is None else redact(url),
        "age_seconds": None if age is None else round(age, 3),
        "stale": not fresh,
        "last_error": None if error is None else redact(error),
        "measured_rtt_ms": {r: round(ms, 3) for r, ms in state.load.rtt.regions().items()},
    }


def readiness(state: RouterState) -> tuple[str, list[str]]:
    """("ok" | "degraded" | "unready", the problems): unready only when the router cannot
    route at all; degraded load data is reported, not fatal."""
    fatal: list[str] = []
    if state.draining:
        fatal.append("draining")
    if not state.fleet.backends:
        fatal.append("no backends discovered")
    warnings = [f"discovery: {redact(state.fleet_error)}"] if state.fleet_error else []
    if state.prometheus_url is not None and not state.load.fresh():
        warnings.append("load data stale: routing on passive signals")
    if state.quota.backend == "local (redis unreachable)":
        warnings.append("quota: redis unreachable, per-replica limits (limit / replicas)")
    status = "unready" if fatal else ("degraded" if warnings else "ok")
    return status, fatal + warnings


async def readyz(state: RouterState, request: Request) -> None:
    """Tenant-facing: 200 while the router can route, else 503; the status word only."""
    status, _ = readiness(state)
    send_json(request, {"status": status}, status=503 if status == "unready" else 200)


async def readyz_details(state: RouterState, request: Request) -> None:
    """Admin port: the same status code, with the problems and the load data."""
    status, problems = readiness(state)
    doc = {
        "status": status,
        "problems": problems,
        "load_data": load_status(state),
        **state.quota.status(redact),
        "backends": len(state.fleet.backends),
        "inflight": state.inflight,
        "policy": str(state.policy),
        "region": state.region,
    }
    send_json(request, doc, status=503 if status == "unready" else 200)


async def metrics(state: RouterState, request: Request) -> None:
    body = generate_latest(state.metrics.registry)
    request.respond(200, {"content-type": CONTENT_TYPE_LATEST}, body)


async def explain(state: RouterState, request: Request) -> None:
    """GET /admin/explain?tenant=T&model=M[&residency=EU,UK][&client_region=R]."""
    rid = request_id(request)
    headers = placement_headers(rid, None, None, None)
    try:
        if not state.tenants.is_admin(request.headers.get("authorization")):
            raise Forbidden("The explain endpoint needs the admin key.")
        query = request.query
        name = query.get("tenant", "")
        model = query.get("model", "")
        tenant = state.tenants.tenants.get(name)
        if tenant is None or not model:
            raise BadRequest("Query parameters 'tenant' (a known tenant) and 'model' are needed.")
        allowed = allowed_jurisdictions(tenant, query.get("residency"), state.known_jurisdictions())
        client_region = query.get("client_region") or state.region
        req = RouteRequest(model, allowed, client_region, None, rid)
        route = state.plan(req, explain=True)
    except RouterError as err:
        send_error(request, err, headers)
        return
    chosen = route.ordered[0].backend.id if route.ordered else None
    send_json(
        request,
        {
            "tenant": tenant.name,
            "model": model,
            "allowed_jurisdictions": sorted(allowed),
            "client_region": client_region,
            "policy": str(state.policy),
            "load_data": load_status(state),
            "outcome": route.outcome,
            "chosen": chosen,
            "candidates": route.explanation,
        },
        headers=headers,
    )


async def not_found(state: RouterState, request: Request) -> None:
    """Unknown paths answer in OpenAI's error shape too."""
    err = NotFound(f"Unknown path {clip(request.method)} {clip(request.path)}.")
    send_error(request, err, placement_headers(request_id(request), None, None, None))
