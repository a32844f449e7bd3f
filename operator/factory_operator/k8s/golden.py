"""Golden prompts through the router: ``GoldenPromptRunner`` sends one prompt to one revision
of one pool (the admin targeting header, the gates' admin key) and returns its answer, for
``judge_step`` (k8s/gates.py) to check with ``plan/gates.py``.

Nothing here decides. The router unreachable, slow, refusing the key or answering an error
or an oversized body is an ``Answer`` whose ``problem`` is an inconclusive result (failed
only for a refused key) whose message says why and what to set; it never passes.

The admin key is a ``SecretStr`` read from the settings at the moment of the request: it is
never logged, never put in a result, and scrubbed from anything the router answers.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import httpx
from pydantic import SecretStr

from factory_contract.names import TARGET_HEADER
from factory_operator.api.rollout import GateResult, GoldenPrompt
from factory_operator.plan.gates import GOLDEN_PROMPT, excerpt, gate_result

log = logging.getLogger(__name__)

# A golden prompt is one non-streamed completion: the read timeout is its whole generation
# (max_tokens <= 4096) on a canary under load. Connect and pool waits stay short.
ROUTER_TIMEOUT = httpx.Timeout(60.0, connect=5.0, pool=10.0)
# Golden prompts of one judgement share these connections (pools x prompts x 2 requests
# queue for them rather than open dozens at once).
ROUTER_LIMITS = httpx.Limits(max_connections=8, max_keepalive_connections=8)
# An answer body over this is not read further (max_tokens <= 4096 keeps a real one far below).
MAX_ANSWER_BYTES = 1 << 20
# Characters of the router's error message kept in a result.
MAX_ROUTER_ERROR = 200
USER_AGENT = "factory-operator-gates"
ADMIN_KEY_ENV = "FACTORY_OPERATOR_ROUTER_ADMIN_KEY"


@dataclass(frozen=True)
class Target:
    """One revision of one pool, as the router's admin targeting header names it."""

    namespace: str
    factory: str
    pool: str
    revision: str

    @property
    def header(self) -> str:
        return f"{self.namespace}/{self.factory}/{self.pool}@{self.revision}"


@dataclass(frozen=True)
class Answer:
    """A golden prompt's answer, or the result that says why there is none."""

    text: str | None = None
    problem: GateResult | None = None


class GoldenPromptRunner:
    """Sends golden prompts through the router, one revision of one pool at a time.

    An async context manager: one ``httpx.AsyncClient`` (``ROUTER_TIMEOUT``,
    ``ROUTER_LIMITS``) for the judgement, closed with it.
    """

    def __init__(
        self,
        router_url: str,
        admin_key: SecretStr,
        *,
        timeout: httpx.Timeout = ROUTER_TIMEOUT,
        limits: httpx.Limits = ROUTER_LIMITS,
        transport: httpx.AsyncBaseTransport | None = None,  # test seam
    ) -> None:
        self.router_url = router_url.rstrip("/")
        self._key = admin_key
        self._client = httpx.AsyncClient(
            timeout=timeout,
            limits=limits,
            transport=transport,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,  # a redirect would carry the key elsewhere
        )

    async def __aenter__(self) -> GoldenPromptRunner:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    def _scrub(self, text: str) -> str:
        key = self._key.get_secret_value()
        return text.replace(key, "***") if key else text

    async def ask(self, target: Target, model: str, prompt: GoldenPrompt) -> Answer:
        """The revision's answer to the prompt (temperature 0), or an inconclusive or failed
        result saying why not."""
        messages = (
            [m.model_dump() for m in prompt.messages]
            if prompt.messages
            else [{"role": "user", "content": prompt.prompt or ""}]
        )
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": prompt.max_tokens,
            "temperature": 0,
            "stream": False,
        }
        headers = {
            "Authorization": f"Bearer {self._key.get_secret_value()}",
            TARGET_HEADER: target.header,
        }
        where = f"golden prompt {prompt.name!r} to {target.header}"
        try:
            async with self._client.stream(
                "POST", f"{self.router_url}/v1/chat/completions", json=body, headers=headers
            ) as response:
                raw = await _read_bounded(response)
        except httpx.TimeoutException as exc:
            return self._problem(
                target, None, f"{where}: the router timed out ({type(exc).__name__})"
            )
        except httpx.HTTPError as exc:
            return self._problem(
                target, None, f"{where}: the router could not be reached ({type(exc).__name__})"
            )
        if raw is None:
            return self._problem(target, None, f"{where}: answer over {MAX_ANSWER_BYTES} bytes")
        status = response.status_code
        if status in (401, 403):
            return self._problem(
                target,
                False,
                f"{where}: the router refused the admin key (HTTP {status}: "
                f"{_router_error(raw)}): set {ADMIN_KEY_ENV} to the key of a tenant with "
                "admin: true in the router's tenants config",
            )
        if status != 200:
            return self._problem(
                target, None, f"{where}: the router answered HTTP {status}: {_router_error(raw)}"
            )
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            return self._problem(
                target, None, f"{where}: the answer has no choices[0].message.content"
            )
        return Answer(text=content)

    def _problem(self, target: Target, passed: bool | None, message: str) -> Answer:
        message = self._scrub(message)
        log.warning("golden prompt not judged: %s", message)
        return Answer(problem=gate_result(GOLDEN_PROMPT, target.pool, passed, message))


async def _read_bounded(response: httpx.Response) -> bytes | None:
    """The body, or None past MAX_ANSWER_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _router_error(raw: bytes) -> str:
    """The router's OpenAI-style error message (or the body's start), bounded."""
    try:
        error = json.loads(raw)["error"]
        text = f"{error.get('code') or error.get('type') or 'error'}: {error.get('message', '')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        text = raw[:MAX_ROUTER_ERROR].decode("utf-8", "replace")
    return excerpt(text, MAX_ROUTER_ERROR)
