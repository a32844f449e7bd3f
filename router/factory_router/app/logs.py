"""Structured logs: one JSON line per routed request (the residency audit trail).

Only routing facts are logged: never prompts, completions, request bodies or keys.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

access_log = logging.getLogger("factory_router.access")


class JsonFormatter(logging.Formatter):
    """Formats any record as one JSON object; `extra={"fields": {...}}` is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_request(**fields: Any) -> None:
    if access_log.isEnabledFor(logging.INFO):
        fields.setdefault("at", time.time())
        access_log.info("request", extra={"fields": fields})
