"""A zero-latency OpenAI-shaped upstream for overhead benchmarks (its own process).

    python bench/router_overhead/upstream.py PORT

JSON: a fixed ~600-byte chat completion. `"stream": true`: 16 SSE chunks and [DONE],
written back to back, so that any time measured is transport and proxy overhead.
"""

from __future__ import annotations

import json
import sys

from aiohttp import web

REPLY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "w " * 200}}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 200, "total_tokens": 240},
    }
).encode()
CHUNK = b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"t"}}]}\n\n'


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if b'"stream": true' in body or b'"stream":true' in body:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(16):
            await resp.write(CHUNK)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    return web.Response(body=REPLY, content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})


def serve(port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    # Peers (vllm-router) poll a worker's health and may list its models before routing.
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
