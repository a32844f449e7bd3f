"""HTTP helpers shared by the endpoints: error responses, headers, body reading."""

from __future__ import annotations

import json
import secrets
from typing import Any

from aiohttp import web

from factory_router.policy.errors import BadRequest, PayloadTooLarge, RouterError

# Forwarded to engines (an allowlist: the tenant's Authorization never leaves the router).
FORWARD_REQUEST_HEADERS = ("content-type", "accept", "traceparent", "tracestate")
# Relayed back to clients from engines.
RELAY_RESPONSE_HEADERS = ("content-type", "content-encoding", "cache-control")


def request_id(request: web.Request) -> str:
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


def error_response(err: RouterError, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=err.status,
        body=json.dumps(err.body()).encode(),
        content_type="application/json",
        headers=headers,
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, at most `limit` bytes (413 beyond, without reading it all)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("Request body is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise BadRequest("Request body must be a JSON object.")
    return doc
