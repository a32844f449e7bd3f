"""Asking the engine for a stream's usage chunk when the client did not.

vLLM (and the simulator) send a final usage chunk, `{"choices": [], "usage": {...}}` just
before `data: [DONE]`, only when the request streams and has `stream_options` with
`include_usage` true; inside `stream_options` that field defaults to true,
`stream_options: null` means no options, and `stream_options` on a request that does not
stream is a 400.

The engine reads `stream`, `include_usage` and `continuous_usage_stats` with pydantic's
lax bool parsing (its request models are `bool | None` fields): `1`, `1.0`, `"true"`,
`"yes"`, `"on"`, `"t"`, `"y"`, `"1"` (any case) are true, `0`, `0.0`, `"false"`, `"no"`,
`"off"`, `"f"`, `"n"`, `"0"` false, null is None, anything else a 400. The router reads
them with the same parser (`_LAX_BOOL`, a pydantic `TypeAdapter` in lax mode), so that it
cannot disagree with the engine on whether the answer streams or carries usage; and
whenever it changes the body it writes them as JSON booleans (`"stream": 1` is sent as
`"stream": true`).

What the router does, for a request whose `stream` reads true:

- no `stream_options`: `"stream_options":{"include_usage":true}` is added; strip;
- `stream_options: null`: it becomes `{"include_usage": true}`; strip;
- `include_usage` reads false or null: it becomes true, and `continuous_usage_stats` false
  when present (it would put usage in every chunk, which the client did not ask for); strip;
- `include_usage` reads true, or is absent from an object: unchanged (the client asked;
  the engine reads the client's bytes as the router did);
- anything the engine refuses (`stream_options` not an object, a value that is no lax
  bool): unchanged, left to the engine's 400; nothing is stripped.

A `stream` that reads false or null: unchanged (the answer is one JSON object).

"strip" = the answer's usage chunk is the router's, not the client's: it is metered and
not relayed. The body is changed as little as possible: a missing `stream_options` on a
body whose `stream` is JSON true is appended before the closing brace (the bytes are
otherwise the client's; there is no other `stream_options` member, or `json.loads` would
have shown it); otherwise the parsed object is serialized again, as UTF-8 (what the
engine's parser reads of duplicate keys is what `json.loads` read: the last one, in both).
`json.dumps` may raise RecursionError on a body nested about as deep as `json.loads`
allows: the caller refuses the request (400).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

_MEMBER = b'"stream_options":{"include_usage":true}'
_JSON_WS = b" \t\r\n"
_LAX_BOOL: TypeAdapter[bool | None] = TypeAdapter(bool | None)  # vLLM's `Optional[bool]`
_FLAGS = ("include_usage", "continuous_usage_stats")


class _Refused(Exception):
    """A value the engine's parser refuses (its 400)."""


def lax_bool(value: Any) -> bool | None:
    """`value` as pydantic reads a `bool | None` field in lax mode; `_Refused` when it
    refuses it."""
    if value is None or isinstance(value, bool):
        return value
    try:
        return _LAX_BOOL.validate_python(value, strict=False)
    except ValidationError:
        raise _Refused from None


def ask_for_usage(doc: dict[str, Any], body: bytes) -> tuple[bytes, bool]:
    """The body to send upstream, and whether the answer's usage chunk must be stripped
    (the client did not ask for it). `doc` is `json.loads(body)`."""
    try:
        return _ask(doc, body)
    except _Refused:
        return body, False  # the engine refuses the request: its answer, unchanged


def _ask(doc: dict[str, Any], body: bytes) -> tuple[bytes, bool]:
    if not lax_bool(doc.get("stream")):
        return body, False
    if "stream_options" not in doc:
        if doc.get("stream") is True:
            appended = _append_member(body)  # `doc` is not empty: it has `stream`
            if appended is not None:
                return appended, True
        return _serialize(doc, {"include_usage": True}), True
    options = doc["stream_options"]
    if options is None:
        return _serialize(doc, {"include_usage": True}), True
    if not isinstance(options, dict):
        return body, False  # the engine refuses it: its answer, unchanged
    read = {name: lax_bool(options[name]) for name in _FLAGS if name in options}
    if read.get("include_usage", True):
        return body, False  # the client asked: its bytes, which the engine reads as we did
    wanted = {**options, "include_usage": True}
    if "continuous_usage_stats" in wanted:
        wanted["continuous_usage_stats"] = False
    return _serialize(doc, wanted), True


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
    # `stream` as the JSON true the router read; stream_options where it was (or last).
    sent = {**doc, "stream": True, "stream_options": options}
    try:
        # UTF-8 as sent (JSON is UTF-8; escaping non-ASCII would grow it up to 3x).
        return json.dumps(sent, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate (`"\ud800"`, which json.loads accepts) has no UTF-8: escaped.
        return json.dumps(sent, separators=(",", ":")).encode()
