"""Structured logs: JSON lines.

- `AccessLog`: one JSON line per routed request (the residency audit trail, and the
  request's usage record): tenant, model, region, jurisdiction, pool, reason, status,
  latency, prompt and completion tokens and their source (`metering`). It writes to a
  buffered binary stream flushed at least every `flush_interval` seconds and at shutdown,
  instead of going through `logging` (a LogRecord, a caller lookup and a flush per request cost
  about a tenth of the router's CPU per request; see bench/router_overhead).
- Everything else goes through `logging` with `JsonFormatter`.

Only routing facts are logged: never prompts, completions, request bodies or keys. What
a client chose (`model`, `path` of an access line) is clipped to `ECHO_MAX_CHARS` here,
whoever writes the line, and every line of `logging`
goes through `redact()`: no URL's user:password (e.g. in `--prometheus-url`, or in an
error a library raised about it) reaches a log, nor, through `redact()`, an endpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from typing import Any, BinaryIO

from factory_router.policy.errors import ECHO_MAX_CHARS, clip

_ACCESS_BUFFER = 64 * 1024
_CLIENT_CHOSEN = ("model", "path")  # access-line fields whose value a client picked
# scheme://userinfo@ (RFC 3986): from "//" to the last "@" of the authority, as urllib
# splits it (a password with a raw "@" in it is still hidden whole).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s\"'\\]*@")


def redact(text: str) -> str:
    """`text` with the userinfo (user:password) of every URL in it replaced by `***`."""
    if "@" not in text:
        return text
    return _USERINFO.sub(r"\1***@", text)


class JsonFormatter(logging.Formatter):
    """Formats any record as one JSON object; `extra={"fields": {...}}` is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: redact(v) if isinstance(v, str) else v for k, v in fields.items()})
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLog:
    """Writes access lines; `stream` defaults to a buffered writer on standard error."""

    def __init__(self, stream: BinaryIO | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self._stream: BinaryIO = stream or open(  # noqa: SIM115 (lives as long as the router)
            sys.stderr.fileno(), "wb", buffering=_ACCESS_BUFFER, closefd=False
        )
        self._encoder = json.JSONEncoder(default=str, separators=(",", ":"))

    def write(self, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = {"ts": round(time.time(), 3), "logger": "factory_router.access", **fields}
        for key in _CLIENT_CHOSEN:
            value = line.get(key)
            if isinstance(value, str) and len(value) > ECHO_MAX_CHARS:
                line[key] = clip(value)
        self._stream.write(self._encoder.encode(line).encode() + b"\n")

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed, broken pipe: nothing to do
            self._stream.flush()
