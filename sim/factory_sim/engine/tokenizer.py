"""A deterministic stand-in tokenizer and text generator.

Token counts: one token per 4 characters, rounded up (the usual rule of thumb for English
with a BPE vocabulary like Llama 3's; real counts differ by +-30%). Each 4-character chunk
maps to a stable id (CRC-32), so equal text prefixes give equal token prefixes and the
prefix cache sees them as vLLM would. Chat messages are rendered with a Llama-3-like
template first, so a shared system prompt is a shared token prefix.

Generated text is a seeded pick from a small vocabulary: one word piece per token.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

CHARS_PER_TOKEN = 4

_WORDS = (
    "the",
    "model",
    "fleet",
    "region",
    "token",
    "cache",
    "batch",
    "engine",
    "router",
    "latency",
    "simulated",
    "answer",
    "data",
    "kernel",
    "prefix",
    "queue",
    "request",
    "stream",
    "value",
    "of",
    "and",
    "to",
    "in",
    "is",
    "a",
    "for",
    "with",
    "on",
    "it",
    "as",
)


def count_tokens(text: str) -> int:
    """Approximate token count of ``text`` (at least 1 for non-empty text)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def encode(text: str) -> list[int]:
    """Stable pseudo token ids, one per 4-character chunk."""
    return [
        zlib.crc32(text[i : i + CHARS_PER_TOKEN].encode())
        for i in range(0, len(text), CHARS_PER_TOKEN)
    ]


def render_chat(messages: Iterable[Mapping[str, Any]]) -> str:
    """Render chat messages with a Llama-3-style template, then the assistant header."""
    parts = ["<|begin_of_text|>"]
    for message in messages:
        role = str(message.get("role", "user"))
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n")
        parts.append(_content_text(message.get("content")))
        parts.append("<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return str(content)


def generate_piece(rng: random.Random, index: int) -> str:
    """One token's worth of generated text."""
    word = rng.choice(_WORDS)
    return word if index == 0 else " " + word
