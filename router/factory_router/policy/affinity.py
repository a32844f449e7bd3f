"""Prefix affinity: the same prompt prefix prefers the same replica of a pool.

vLLM's prefix cache makes a replica that has already seen a prompt's prefix skip most of
its prefill. Rendezvous (highest-random-weight) hashing picks that replica so that adding
or removing one replica only moves the prefixes it owned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any


def prefix_key(body: Mapping[str, Any], max_chars: int) -> str | None:
    """A digest of the first `max_chars` of the prompt (None when there is none).

    Only a digest leaves this function: prompts are never stored or logged.
    """
    text: str
    if isinstance(body.get("messages"), list):
        parts: list[str] = []
        size = 0
        for msg in body["messages"]:
            content = msg.get("content") if isinstance(msg, dict) else None
            piece = content if isinstance(content, str) else json.dumps(content, default=str)
            parts.append(piece)
            size += len(piece)
            if size >= max_chars:
                break
        text = "\x1e".join(parts)
    elif "prompt" in body:
        prompt = body["prompt"]
        text = prompt if isinstance(prompt, str) else json.dumps(prompt, default=str)
    elif "input" in body:
        inp = body["input"]
        text = inp if isinstance(inp, str) else json.dumps(inp, default=str)
    else:
        return None
    if not text:
        return None
    return hashlib.blake2b(text[:max_chars].encode(), digest_size=16).hexdigest()


def preferred(key: str, backend_ids: Iterable[str]) -> str | None:
    """The replica that owns `key` by rendezvous hashing (None for an empty pool)."""
    best: tuple[bytes, str] | None = None
    for bid in backend_ids:
        weight = hashlib.blake2b(f"{key}|{bid}".encode(), digest_size=8).digest()
        if best is None or weight > best[0]:
            best = (weight, bid)
    return best[1] if best else None
