"""Asking the engine for a stream's usage chunk when the client did not.

vLLM (and the simulator) send a final usage chunk, `{"choices": [], "usage": {...}}` just
before `data: [DONE]`, only when the request has `stream_options` with `include_usage`
true; inside `stream_options` that field defaults to true, `stream_options: null` means no
options, and `stream_options` on a request that does not stream is a 400. So:

what the router does, for a request whose `stream` is JSON true:

- no `stream_options`: `"stream_options":{"include_usage":true}` is added; strip;
- `stream_options: null`: it becomes `{"include_usage": true}`; strip;
- `include_usage` false or null: it becomes true, and `continuous_usage_stats` false when
  present (it would put usage in every chunk, which the client did not ask for); strip;
- `include_usage` true, or absent from an object: unchanged (the client asked);
- anything else (`stream` not JSON true, `stream_options` not an object, `include_usage`
  neither a bool nor null): unchanged, left to the engine; nothing is stripped.

"strip" = the answer's usage chunk is the router's, not the client's: it is metered and
not relayed. The body is changed as little as possible: a missing `stream_options` is
appended before the closing brace (the bytes are otherwise the client's; there is no other
`stream_options` member, or `json.loads` would have shown it); a present one is replaced by
serializing the parsed object again (what the engine's parser reads of duplicate keys is
what `json.loads` read: the last one, in both).
"""

from __future__ import annotations

import json
from typing import Any

_MEMBER = b'"stream_options":{"include_usage":true}'
_JSON_WS = b" \t\r\n"


def ask_for_usage(doc: dict[str, Any], body: bytes) -> tuple[bytes, bool]:
    """The body to send upstream, and whether the answer's usage chunk must be stripped
    (the client did not ask for it). `doc` is `json.loads(body)`."""
    if doc.get("stream") is not True:
        return body, False
    if "stream_options" not in doc:
        appended = _append_member(body) if doc else None  # `{}`: no comma (never: no model)
        return appended or _serialize(doc, {"include_usage": True}), True
    options = doc["stream_options"]
    if options is None:
        return _serialize(doc, {"include_usage": True}), True
    if not isinstance(options, dict):
        return body, False  # the engine refuses it: its answer, unchanged
    asked = options.get("include_usage", True)
    if asked is True:
        return body, False
    if asked is False or asked is None:
        wanted = {**options, "include_usage": True}
        if "continuous_usage_stats" in wanted:
            wanted["continuous_usage_stats"] = False
        return _serialize(doc, wanted), True
    return body, False  # a value only the engine's coercion can read: left to it


def _append_member(body: bytes) -> bytes | None:
    """`body`, a non-empty JSON object, with `stream_options` as its last member; None
    when the bytes are not plain UTF-8 (json.loads also reads UTF-16/32 and a BOM)."""
    if json.detect_encoding(body) != "utf-8":
        return None
    end = len(body.rstrip(_JSON_WS))
    if body[end - 1 : end] != b"}":
        return None
    return body[: end - 1] + b"," + _MEMBER + b"}" + body[end:]


def _serialize(doc: dict[str, Any], options: dict[str, Any]) -> bytes:
    # ensure_ascii: a lone surrogate (`"\ud800"`, which json.loads accepts) stays escaped.
    return json.dumps({**doc, "stream_options": options}, separators=(",", ":")).encode()
