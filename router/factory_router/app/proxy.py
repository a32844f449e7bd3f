"""The OpenAI proxy: authenticate, filter by residency, rank, forward with failover, relay.

Failover happens only before the first byte reaches the client, only to the next
candidate of the same plan (every one of which passed the residency filter), and only
while the per-request attempt limit and the router-wide retry budget allow. Once bytes
flow, they are relayed chunk by chunk as they arrive (never buffered); a client that
goes away cancels the handler (`http_server`), which closes the upstream connection.

Metering (`factory_router.metering`): a completion stream whose client did not ask for
usage is sent upstream with `stream_options.include_usage`, and the usage chunk of its
answer is stripped; each request's tokens (the engine's `usage`, else the estimate of a
stream cut short) go to the token counters and its access line, in `handle`'s `finally`
(a client that leaves cancels the handler: what was relayed until then is recorded).
A request an engine may have worked on whose usage the router could not read (a 2xx answer
without a readable `usage`, an encoded answer, a client gone before the answer, a
first-byte timeout) is recorded `"usage": "unknown"` and settles its quota at the whole
reservation (fail closed). A stream whose usage chunk the router asked for must come as an
unencoded `text/event-stream`: anything else is refused before its first byte (502), or
the chunk would reach a client that did not ask for it.

Canary rollouts (`policy.canary`): `plan` splits each canary pool's candidates by weight;
an admin tenant's `x-factory-target` restricts them to one pool (and revision), unsplit and
never held (the header is not forwarded: engines get an allowlist). Each attempt on an
engine counts in its revision's series (`app.revisions`: attempts by outcome, TTFT, ITL,
completion tokens and seconds of streams), except a targeted request's.

Priority and fairness (`factory_router.flow`): when every candidate of the plan is at its
batch capacity (or others already wait), the request waits its turn in the flow queue, then
is planned again; shed: 503 `capacity_shed` with `Retry-After`. Each attempt's end tells the
queue that a slot may be free.
"""

from __future__ import annotations

import asyncio
import logging
import time

from factory_router.app.hold import plan_or_hold
from factory_router.app.http import (
    FORWARD_REQUEST_HEADERS,
    RELAY_RESPONSE_HEADERS,
    parse_json_object,
    placement_headers,
    read_body,
    request_id,
    send_error,
    too_deep,
)
from factory_router.app.http_message import ClientGone, Request
from factory_router.app.revisions import RevisionSeries, StreamClock
from factory_router.app.state import RouterState
from factory_router.metering.answer import JsonUsageScanner, usage_from_json
from factory_router.metering.request import ask_for_usage
from factory_router.metering.sse import StreamMeter
from factory_router.metering.usage import Usage
from factory_router.policy.affinity import prefix_key
from factory_router.policy.canary import TARGET_HEADER, requested_target
from factory_router.policy.errors import (
    BadRequest,
    InvalidResidency,
    ModelNotFound,
    NoCompliantBackend,
    ResidencyDenied,
    RouterError,
    UpstreamFailed,
    UpstreamTimeout,
)
from factory_router.policy.fleet import Backend
from factory_router.policy.policies import PolicyName, Ranked, RouteRequest
from factory_router.policy.route import RoutePlan
from factory_router.policy.tenants import Tenant, allowed_jurisdictions
from factory_router.quota.buckets import QuotaExceeded, bound_body
from factory_router.quota.service import Ticket, used_tokens
from factory_router.upstream.client import (
    AttemptFailed,
    ConnectionBroken,
    Opened,
    ProtocolViolation,
)

log = logging.getLogger("factory_router.proxy")
_WHOLE_BODY_MAX = 256 * 1024  # sized non-SSE answers up to this are relayed in one write
_NO_BODY_STATUS = frozenset({204, 304})
_COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})  # they stream

_DENIAL_REASON: dict[type[RouterError], str] = {
    InvalidResidency: "invalid_header",
    ResidencyDenied: "narrowed_to_nothing",
    ModelNotFound: "model_not_in_jurisdictions",
    NoCompliantBackend: "no_compliant_backend",
}


class _Outcome:
    """What the access log and the metrics record about one request."""

    __slots__ = (
        "attempts", "backend", "clock", "engine_busy", "jurisdiction", "meter", "pool", "quota",
        "reason", "region", "status", "timed_out", "usage",
    )  # fmt: skip

    def __init__(self) -> None:
        self.status = 0
        self.region: str | None = None
        self.jurisdiction: str | None = None
        self.pool: str | None = None
        self.backend: str | None = None
        self.reason = ""
        self.attempts = 0
        self.usage: Usage | None = None  # a non-streaming answer's
        self.meter: StreamMeter | None = None  # a stream's, read when the request ends
        self.quota: Ticket | None = None  # its tokens reserved; settled when it ends
        # An engine may be working on it: an attempt is under way, or its answer is a 2xx
        # (else it refused or never got it). Without a usage: settled at the reservation.
        self.engine_busy = False
        self.timed_out = False  # an attempt timed out (its engine may have worked on it)
        self.clock: StreamClock | None = None  # a streamed 2xx answer's, for its revision

    def unmetered(self) -> bool:
        """An engine may have worked on the request and no usage was read."""
        if self.meter is not None:
            return self.meter.unreadable and self.meter.engine_usage is None
        return self.usage is None and (self.engine_busy or self.timed_out)


async def handle(state: RouterState, request: Request) -> None:
    started = time.perf_counter()
    rid = request_id(request)
    out = _Outcome()
    tenant_name: str | None = None
    model: str | None = None
    counted: Tenant | None = None  # holds one of its tenant's concurrent requests
    state.request_started()
    try:
        try:
            tenant = _tenant(state, request)
            tenant_name = tenant.name
            state.tenant_limits.acquire(tenant)  # 429 at the limit: no engine is asked
            counted = tenant
            allowed = allowed_jurisdictions(
                tenant, request.headers.get("x-factory-residency"), state.known_jurisdictions()
            )
            target = requested_target(tenant, request.headers.get(TARGET_HEADER))  # admins'
            body = read_body(request, state.config.limits.max_body_bytes)
            doc = parse_json_object(body)
            model_field = doc.get("model")
            if not isinstance(model_field, str) or not model_field:
                raise BadRequest("'model' is required and must be a string.", param="model")
            model = model_field
            # Quotas (429 before any engine is asked); None for a tenant without any. A
            # reservation's bound (no max_tokens in the body) is written into the forwarded
            # body: the engine may generate no more than was reserved.
            out.quota = await state.quota.admit(tenant, doc, len(body), path=request.path)
            if out.quota is not None and out.quota.estimate.bound is not None:
                body = bound_body(doc, out.quota.estimate.bound)
            client_region = request.headers.get("x-factory-client-region") or state.region
            key = None
            strip_usage = False
            try:
                if state.policy is PolicyName.SCORE:
                    key = prefix_key(doc, state.config.scoring.affinity_prefix_chars)
                if request.path in _COMPLETION_PATHS:
                    body, strip_usage = ask_for_usage(doc, body)
            except RecursionError:  # json.dumps of a body json.loads could just read
                raise too_deep() from None
            req = RouteRequest(model, allowed, client_region, key, rid, target)
            if target is not None:  # the pool asked for, as it is: never held
                route = state.plan(req)
            else:
                route = await plan_or_hold(state, req, request.headers)  # scale from 0: hold.py
            flow = state.flow  # every compliant engine at capacity: wait in turn (flow/)
            if flow is not None and flow.must_wait(route.ordered):
                await flow.wait(tenant.name, tenant.priority, model, allowed)
                route = state.plan(req)  # the load changed while it waited
            await _forward(
                state, request, route=route, req=req, body=body, out=out, strip_usage=strip_usage
            )
        except RouterError as err:
            out.status = err.status
            out.reason = err.code or err.type
            denial = _DENIAL_REASON.get(type(err))
            if denial:
                state.metrics.residency_denials.labels(denial).inc()
            headers = placement_headers(rid, out.region, out.jurisdiction, out.pool)
            if isinstance(err, QuotaExceeded):
                headers.update(err.headers)
            send_error(request, err, headers)
    except (asyncio.CancelledError, ClientGone):
        out.status, out.reason = 499, "client_disconnected"
        raise
    finally:
        if counted is not None:
            state.tenant_limits.release(counted)
        state.request_finished()
        elapsed = time.perf_counter() - started
        known_model = model if model and out.pool else "unknown"
        region = out.region or "none"
        state.metrics.observe_request(region, known_model, out.status, elapsed)
        usage = out.meter.usage if out.meter is not None else out.usage
        unknown = out.unmetered()
        if unknown:
            usage = None  # an unreadable stream's estimate is no figure either
        if out.quota is not None:
            state.quota.settle(out.quota, used_tokens(out.quota, usage, unknown=unknown))
        if out.clock is not None:
            out.clock.finish(usage)
        if usage is not None:
            # tenant: a name from the tenants file (bounded); only requests that reached an
            # engine have a usage, and they were authenticated.
            state.metrics.observe_usage(
                tenant_name or "unknown", known_model, region, out.pool or "none", usage
            )
        state.access_log.write(
            {
                "request_id": rid,
                "tenant": tenant_name,
                "model": model,
                "path": request.path,
                "region": out.region,
                "jurisdiction": out.jurisdiction,
                "pool": out.pool,
                "backend": out.backend,
                "reason": out.reason,
                "status": out.status,
                "attempts": out.attempts,
                "latency_ms": round(elapsed * 1000, 2),
                "prompt_tokens": usage.prompt_tokens if usage else None,
                "completion_tokens": usage.completion_tokens if usage else None,
                "usage": usage.source if usage else ("unknown" if unknown else None),
            }
        )


def _tenant(state: RouterState, request: Request) -> Tenant:
    """The request's tenant: as the head check found it in the tenants table in force,
    else (no head check, or the table was reloaded since) looked up now."""
    seen = request.authenticated
    if isinstance(seen, tuple) and seen[0] is state.tenants:
        tenant: Tenant = seen[1]
        return tenant
    return state.tenants.authenticate(request.headers.get("authorization"))


def _upstream_headers(state: RouterState, request: Request, rid: str) -> dict[str, str]:
    headers = {"x-request-id": rid, "x-factory-router-region": state.region}
    for name in FORWARD_REQUEST_HEADERS:
        value = request.headers.get(name)
        if value is not None:
            headers[name] = value
    return headers


def _endpoint_headers(
    state: RouterState, headers: dict[str, str], backend: Backend, client_region: str
) -> dict[str, str]:
    """What a region reached through its `spec.endpoint` (its own router) gets on top: the
    region's jurisdiction as the request's residency (this router chose that region because
    its jurisdiction is allowed; the router there can only narrow it further, so the data
    stays there, failover included); the client's region, for its choice of replica; and
    this router's endpoint key, when one is configured. Engines never get these."""
    peer = {
        **headers,
        "x-factory-residency": state.fleet.jurisdiction_of(backend) or "",
        "x-factory-client-region": client_region,
    }
    if state.endpoint_key:
        peer["authorization"] = f"Bearer {state.endpoint_key}"
    return peer


async def _forward(
    state: RouterState,
    request: Request,
    *,
    route: RoutePlan,
    body: bytes,
    req: RouteRequest,
    out: _Outcome,
    strip_usage: bool,
) -> None:
    rid = req.request_key
    to_engine = _upstream_headers(state, request, rid)
    now = state.now()
    state.budget.record_request(now)
    last: AttemptFailed | None = None
    for ranked in route.ordered[: state.config.limits.max_attempts]:
        if out.attempts:
            if not state.budget.try_withdraw(state.now()):
                state.metrics.retry_budget_exhausted.inc()
                break
            state.metrics.retries.inc()
        out.attempts += 1
        backend = ranked.backend
        # An admin's targeted request (golden prompts) is no client's: not in the series the
        # rollout gates compare (it would count towards minRequests, dilute error ratios).
        series = None if req.target is not None else state.revisions.series(backend)
        state.load.passive.start(backend.id)
        try:
            sent = to_engine
            if backend.via_endpoint:
                client_region = req.client_region or state.region
                sent = _endpoint_headers(state, to_engine, backend, client_region)
            out.engine_busy = True  # from here the engine may have the request
            opened = await state.upstream.open(backend, "POST", request.path, body, sent)
        except AttemptFailed as failure:
            out.engine_busy = False  # it refused, or never got it; a timeout may have
            out.timed_out = out.timed_out or failure.kind == "timeout"
            _attempt_ended(state, backend.id)
            _record_failure(state, ranked, failure.kind)
            if series is not None and failure.kind != "pool":  # pool: the router's own limit
                series.attempt(ok=False)
            last = failure
            continue
        except BaseException:
            _attempt_ended(state, backend.id)
            raise
        completed = False
        engine_failed = False  # a 5xx relayed, or the body broke off (a client leaving: ok)
        try:
            state.ejector.record_success(backend.id)
            state.load.observe_first_byte(
                backend,
                opened.ttfb_s * 1000,
                streamed=opened.streamed,
                router_wait_ms=opened.pool_wait_s * 1000,
            )
            state.metrics.observe_ttfb(backend.region or "none", opened.ttfb_s)
            if series is not None and opened.streamed and 200 <= opened.status < 300:
                series.ttft.observe(opened.ttfb_s - opened.pool_wait_s)
            out.region = backend.region
            out.jurisdiction = state.fleet.jurisdiction_of(backend)
            out.pool = backend.pool
            out.backend = backend.id
            out.reason = route.reason if out.attempts == 1 else f"failover #{out.attempts - 1}"
            try:
                await _relay(
                    state, request, opened, rid, out, series=series, strip_usage=strip_usage
                )
            except UpstreamFailed:
                engine_failed = True
                raise
            completed = out.status < 500
            engine_failed = not completed
            return
        finally:
            opened.close()
            _attempt_ended(state, backend.id)
            if series is not None:
                series.attempt(ok=not engine_failed)
            if completed:
                state.load.observe_completion(
                    backend,
                    duration_ms=(time.perf_counter() - opened.sent_at) * 1000,
                    ttfb_ms=opened.ttfb_s * 1000,
                    streamed=opened.streamed,
                )
    if last is not None and last.kind == "timeout":
        raise UpstreamTimeout(
            f"The model backend did not start answering within "
            f"{state.config.timeouts.first_byte:g}s (after {out.attempts} attempt(s))."
        )
    if len(route.ordered) > out.attempts:
        raise UpstreamFailed(
            f"The request failed on {out.attempts} compliant backend(s) and the retry "
            f"limit was reached; last error: {last.kind if last else 'none'}."
        )
    raise NoCompliantBackend(
        f"Every compliant backend for this model failed ({out.attempts} tried); "
        f"last error: {last.kind if last else 'none'}."
    )


def _attempt_ended(state: RouterState, backend_id: str) -> None:
    """An attempt's batch slot is free: counted, and the flow queue told (a request waiting
    for room may go)."""
    state.load.passive.finish(backend_id)
    if state.flow is not None:
        state.flow.kick()


def _record_failure(state: RouterState, ranked: Ranked, kind: str) -> None:
    backend = ranked.backend
    region = backend.region or "none"
    state.metrics.upstream_errors.labels(region, kind).inc()
    if kind == "pool":
        return  # the router's own connection limit: the backend did nothing wrong
    if state.ejector.record_failure(backend.id, state.now()):
        state.metrics.ejections.labels(region).inc()
        log.warning(
            "backend ejected",
            extra={
                "fields": {
                    "backend": backend.id,
                    "pool": backend.pool,
                    "kind": kind,
                    "until": state.ejector.ejected_until(backend.id),
                }
            },
        )


async def _relay(
    state: RouterState,
    request: Request,
    opened: Opened,
    rid: str,
    out: _Outcome,
    *,
    series: RevisionSeries | None,
    strip_usage: bool,
) -> None:
    up = opened.response
    headers = placement_headers(rid, out.region, out.jurisdiction, out.pool)
    if out.quota is not None:
        headers.update(out.quota.headers)
    for name in RELAY_RESPONSE_HEADERS:
        value = up.headers.get(name)
        if value is not None:
            headers[name] = value
    ok = 200 <= up.status < 300
    # An encoded body (the router sends no Accept-Encoding: the engine's own doing) cannot
    # be metered: its usage is unknown. Neither can a 2xx that is neither JSON nor SSE.
    readable = up.headers.get("content-encoding", "identity").strip().lower() == "identity"
    if ok and strip_usage and not (readable and up.content_type == "text/event-stream"):
        # The router asked for the usage chunk and cannot strip it from this answer: it
        # would reach a client that did not ask for it. Refused before its first byte.
        state.metrics.upstream_errors.labels(out.region or "none", "protocol").inc()
        raise UpstreamFailed(
            "The model backend answered a stream with a body the router cannot read "
            f"(content type {up.content_type or 'none'!r}, content encoding "
            f"{up.headers.get('content-encoding', 'none')!r})."
        )
    out.status = up.status
    out.engine_busy = ok  # a refusal (4xx, 5xx relayed) used no tokens
    size = up.content_length
    if up.status in _NO_BODY_STATUS:
        # An engine's body on these would be framing nobody agrees on: none is relayed.
        request.respond(up.status, headers, b"")
        return
    json_usage = ok and readable and up.content_type == "application/json"
    if size is not None and size <= _WHOLE_BODY_MAX and up.content_type != "text/event-stream":
        # A sized, small, non-SSE answer (a non-streaming completion): its bytes are all
        # here or nearly, and one write of headers + body saves syscalls.
        parts = [opened.first_chunk]
        have = len(opened.first_chunk)
        try:
            while have < size:
                chunk = await up.read()
                if not chunk:
                    raise ConnectionBroken("body shorter than its Content-Length")
                parts.append(chunk)
                have += len(chunk)
        except (ConnectionBroken, ProtocolViolation, TimeoutError):
            state.metrics.upstream_errors.labels(out.region or "none", "stream_broken").inc()
            raise UpstreamFailed("The model backend broke off its answer.") from None
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        if json_usage:
            out.usage = usage_from_json(body)  # its tail, else all of it (prompt_logprobs)
        request.respond(up.status, headers, body)
        return
    meter: StreamMeter | None = None
    scanner: JsonUsageScanner | None = None  # a JSON answer's usage, read as it passes
    clock: StreamClock | None = None
    first = opened.first_chunk
    if json_usage:
        scanner = JsonUsageScanner()
    elif ok and readable and up.content_type == "text/event-stream":
        meter = out.meter = StreamMeter(strip_usage)
        first = meter.feed(first)
        if series is not None:
            clock = out.clock = StreamClock(series, opened.sent_at + opened.ttfb_s, meter.events)
        if strip_usage:
            size = None  # the router frames what it relays (an event may be dropped)
    # The head and the first bytes in one write; then each piece as it arrives.
    await request.start(up.status, headers, content_length=size, first=first)
    chunk = opened.first_chunk
    while chunk:
        if scanner is not None:
            scanner.feed(chunk)
        try:
            chunk = await up.read()
        except (ConnectionBroken, ProtocolViolation, TimeoutError) as exc:
            # The engine broke mid-stream: too late to fail over. Close the client's
            # connection so that it sees a truncated response, not a clean end.
            kind = "idle_timeout" if isinstance(exc, TimeoutError) else "stream_broken"
            state.metrics.upstream_errors.labels(out.region or "none", kind).inc()
            out.status, out.reason = 502, f"{out.reason}; {kind} after first byte"
            out.clock = None  # not an answer: neither its tokens nor its seconds
            request.abort()
            return
        if meter is None:
            await request.write(chunk)  # ClientGone once the client left (b"": nothing)
        else:
            relayed = meter.feed(chunk) if chunk else meter.finish()
            if clock is not None and chunk:
                clock.chunk(meter.events)
            await request.write(relayed)
    if scanner is not None:
        out.usage = scanner.usage
    await request.end()
