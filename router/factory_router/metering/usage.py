"""What one request used: `Usage`, and the validation of an engine's `usage` object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# "engine": the engine's own figures (a non-streaming answer's `usage`, a stream's usage
# chunk). "estimated": a stream that ended without a usage chunk (cut short by the client
# or the engine, or an engine that never sends one): completion tokens = content events
# seen (vLLM sends one token per event unless it batches them: `--stream-interval` > 1 or
# speculative decoding; then it is an undercount), prompt tokens unknown (None).
UsageSource = Literal["engine", "estimated"]


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int | None
    completion_tokens: int
    source: UsageSource


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def usage_from_object(obj: Any) -> Usage | None:
    """An engine's `usage` object as `Usage`; None unless its counts are non-negative
    integers (`completion_tokens` may be absent or null: embeddings)."""
    if not isinstance(obj, dict):
        return None
    prompt = _count(obj.get("prompt_tokens"))
    raw_completion = obj.get("completion_tokens")
    completion = 0 if raw_completion is None else _count(raw_completion)
    if prompt is None or completion is None:
        return None
    return Usage(prompt, completion, "engine")
