"""HTTP helpers shared by the endpoints: error responses, headers, body reading."""

from __future__ import annotations

import json
import secrets
from typing import Any

from factory_router.app.http_message import Request
from factory_router.policy.errors import BadRequest, PayloadTooLarge, RouterError

# Forwarded to engines (an allowlist: the tenant's Authorization never leaves the router).
FORWARD_REQUEST_HEADERS = ("content-type", "accept", "traceparent", "tracestate")
# Relayed back to clients from engines.
RELAY_RESPONSE_HEADERS = ("content-type", "content-encoding", "cache-control")


def request_id(request: Request) -> str:
    rid = request.headers.get("x-request-id", "").strip()
    if rid and len(rid) <= 128 and rid.isprintable():
        return rid
    return secrets.token_hex(16)  # uuid4().hex's shape, without building a UUID


def placement_headers(
    rid: str, region: str | None, jurisdiction: str | None, pool: str | None
) -> dict[str, str]:
    return {
        "x-request-id": rid,
        "x-factory-region": region or "none",
        "x-factory-jurisdiction": jurisdiction or "none",
        "x-factory-pool": pool or "none",
    }


def send_json(
    request: Request, doc: Any, status: int = 200, headers: dict[str, str] | None = None
) -> None:
    request.respond(
        status, {**(headers or {}), "content-type": "application/json"}, json.dumps(doc).encode()
    )


def send_error(request: Request, err: RouterError, headers: dict[str, str]) -> None:
    if err.retry_after is not None:
        headers = {**headers, "retry-after": str(err.retry_after)}
    send_json(request, err.body(), err.status, headers)


def read_body(request: Request, limit: int) -> bytes:
    """The raw body; 413 when it was larger than `limit` (the server did not keep it)."""
    if request.body_too_large:
        declared = request.content_length
        size = f"of {declared} bytes " if declared is not None else ""
        raise PayloadTooLarge(f"Request body {size}exceeds {limit} bytes.")
    return request.body


def too_deep() -> BadRequest:
    """The 400 of a body nested deeper than the JSON parser (or serializer) goes: Python's
    recursion limit, about 990 levels (no OpenAI request nests beyond a few tens)."""
    return BadRequest("Request body nests too deeply to be read as JSON.")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 when it is not JSON, not an object, or nests too
    deeply (`json.loads` raises RecursionError then: once a 500)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("Request body is not valid JSON.") from None
    except RecursionError:
        raise too_deep() from None
    if not isinstance(doc, dict):
        raise BadRequest("Request body must be a JSON object.")
    return doc
