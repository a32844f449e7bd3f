"""An SSE answer relayed event by event: its usage chunk read, and stripped when the router
asked for it.

`StreamMeter.feed(chunk)` returns the bytes to relay now: the complete events of what has
arrived, in the engine's bytes; the rest of an event that has not ended yet is held until
its end arrives (a client's SSE parser cannot act on part of an event either, so holding it
delays nothing a client sees). Events end at a blank line as the SSE standard (WHATWG)
frames them and as the `openai` client's decoder reads them: two line ends in a row, a line
end being CRLF, LF or CR; a CR at the end of what has arrived is held until the next byte
says whether it is half of a CRLF. What is held is searched once: the next piece's search
resumes where the last one stopped, less the 3 bytes a line end pair can start before it
(`examined` counts the bytes searched; an event trickled in small pieces costs one pass).

Only events that can hold a `usage` key are parsed: their bytes contain `usage`, or a `\\u`
escape (a key spelled with escapes); in every other event no JSON parser could find one, so
skipping them is as strict as parsing them all. vLLM sends one such event per stream (the
usage chunk, last before `data: [DONE]`), unless the client asked for
`continuous_usage_stats` (usage in every chunk).

- usage: the last `usage` object seen (the usage chunk's, or the latest running figure);
- stripped (when `strip_usage`): every event whose data is a JSON object with
  `"choices": []` and a `usage` object; nothing else is ever changed or dropped;
- estimate: data events other than `[DONE]`, the usage chunk and the role chunk (vLLM's
  first chunk of each choice: a delta with its `role` and nothing else, no token; events
  whose bytes hold `"role"` are parsed to tell it from a token that says "role"): one
  token each, as vLLM sends them;
- unreadable: an event that may hold `usage` nested too deep for the JSON parser
  (RecursionError): not read, not counted, and dropped when `strip_usage` (it may be the
  usage chunk the router asked for; no client's parser could read it either); the caller
  settles such a stream as unknown.

Memory is bounded: an event longer than `max_event_bytes` (1 MiB; vLLM's usage chunk is
about 150 bytes, a token's event a few hundred) is relayed as it comes, unread, and never
stripped; only its last 3 bytes are held, which may begin its end (a complete line end and
half of a CRLF at most).
"""

from __future__ import annotations

import json
import re

from factory_router.metering.usage import Usage, usage_from_object

_LINE_END = rb"(?:\r\n|\n|\r(?!\n))"
_EVENT_END = re.compile(_LINE_END + _LINE_END)
_LINES = re.compile(rb"\r\n|\n|\r")
MAX_EVENT_BYTES = 1 << 20
_END_PREFIX = 3  # a line end (CRLF at most) and a CR


class StreamMeter:
    __slots__ = (
        "_cr", "_held", "_max_event", "_oversized", "_resume", "done", "engine_usage", "events",
        "examined", "strip_usage", "stripped", "unreadable",
    )  # fmt: skip

    def __init__(self, strip_usage: bool, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.strip_usage = strip_usage
        self._max_event = max_event_bytes
        self._oversized = False  # the held bytes end an event whose start was relayed
        self.engine_usage: Usage | None = None
        self.events = 0  # content events (the estimate)
        self.stripped = 0
        self.done = False  # `data: [DONE]` seen
        self.unreadable = False  # an event with a `usage` key too deeply nested to parse
        self.examined = 0  # bytes the framing searched (linear in the stream: tested)
        self._held = bytearray()  # the start of an event not ended yet
        self._resume = 0  # in `_held`: searched up to here (less a line end's span)
        self._cr = False  # `_held` holds a CR (else events end only at LF LF)

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of `chunk` (after those held) to relay now."""
        if self._held:
            self._held += chunk
            data: bytes | bytearray = self._held
            cr = self._cr or b"\r" in chunk
        else:
            data, cr = chunk, b"\r" in chunk
        # A CR at the very end may be the first half of a CRLF: decided by the next byte.
        scan_end = len(data) - 1 if data.endswith(b"\r") else len(data)
        out = self._scan(data, scan_end, cr)
        held = self._held
        if len(held) > self._max_event:
            # Too long for a usage chunk: relayed unread, all but what may begin its end.
            self._oversized = True
            self._held = bytearray(held[-_END_PREFIX:])
            self._resume = 0
            self._cr = b"\r" in self._held
            return out + bytes(held[:-_END_PREFIX])
        return out

    def finish(self) -> bytes:
        """At the end of the answer: what is still held (an unended last event, relayed as
        the engine sent it unless it is a usage chunk to strip; a client drops it anyway)."""
        data = self._held
        out = self._scan(data, len(data), self._cr)
        rest = bytes(self._held)
        self._held = bytearray()
        if rest and not self._oversized and self._is_stripped_usage(rest, 0, len(rest)):
            return out
        return out + rest

    @property
    def usage(self) -> Usage:
        """The engine's figures when it sent any, else the estimate."""
        if self.engine_usage is not None:
            return self.engine_usage
        return Usage(None, self.events, "estimated")

    def _scan(self, data: bytes | bytearray, scan_end: int, cr: bool) -> bytes:
        """Relays the events of `data` that have ended, keeps the rest in `_held`. The
        search resumes where the previous one stopped (less the 3 bytes a line end pair
        can start before it): a held event is searched once, however it is cut."""
        pos = 0  # the start of the next event
        at = self._resume if data is self._held else 0  # where the search starts
        kept: list[bytes] | None = None  # built only once an event is dropped
        cursor = 0
        while True:
            if not cr:  # LF only (vLLM's streams): a blank line is LF LF
                start = data.find(b"\n\n", at, scan_end)
                stop = start + 2
            else:
                found = _EVENT_END.search(data, at, scan_end)
                start, stop = found.span() if found is not None else (-1, -1)
            self.examined += (scan_end if start < 0 else stop) - at
            if start < 0:
                break
            if self._oversized:  # the end of an event relayed unread
                self._oversized = False
                self.events += 1
            elif self._is_stripped_usage(data, pos, start):
                if kept is None:
                    kept = []
                kept.append(bytes(data[cursor:pos]))
                cursor = stop
            pos = at = stop
        self._resume = max(0, scan_end - _END_PREFIX - pos)
        if pos == 0:
            if data is not self._held:
                self._held = bytearray(data)
            self._cr = cr
            return b""
        rest = data[pos:]
        self._held = bytearray(rest)
        self._cr = cr and b"\r" in rest  # the rest is at most the last chunk and 3 bytes
        if kept is None:
            return data[:pos] if isinstance(data, bytes) else bytes(data[:pos])
        kept.append(bytes(data[cursor:pos]))
        return b"".join(kept)

    def _is_stripped_usage(self, data: bytes | bytearray, start: int, end: int) -> bool:
        """Counts the event `data[start:end]`; True when it is a usage chunk to strip.
        (Searched in place: most events are looked at without a copy.)"""
        if data.find(b"usage", start, end) >= 0 or data.find(b"\\u", start, end) >= 0:
            doc = self._parse(data, start, end)
            if doc is _TOO_DEEP:
                # Perhaps the usage chunk the router asked for: never relayed to a client
                # that did not ask (no parser of the client's could read it either).
                return self.strip_usage
            if isinstance(doc, dict) and isinstance(doc.get("usage"), dict):
                found = usage_from_object(doc["usage"])
                if found is not None:
                    self.engine_usage = found
                if doc.get("choices") == []:
                    if self.strip_usage:
                        self.stripped += 1
                        return True
                    return False
        if data.startswith(b"data:", start, end):
            if data.startswith((b"data: [DONE]", b"data:[DONE]"), start, end):
                self.done = True
            elif data.find(b'"role"', start, end) < 0 or not _is_role_chunk(
                self._parse(data, start, end)
            ):
                self.events += 1
        return False

    def _parse(self, data: bytes | bytearray, start: int, end: int) -> object:
        try:
            return _json_data(bytes(data[start:end]))
        except RecursionError:  # an engine's value nested too deep to parse
            self.unreadable = True
            return _TOO_DEEP


_TOO_DEEP = object()  # an event nested deeper than the JSON parser goes


def _is_role_chunk(doc: object) -> bool:
    """vLLM's first chunk of each choice: a delta with its `role` and nothing else (an
    empty `content`), which carries no token. A token whose text or logprobs mention
    `"role"` is not one."""
    if not isinstance(doc, dict):
        return False
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict) or not isinstance(delta.get("role"), str):
            return False
        if any(value for key, value in delta.items() if key != "role"):
            return False
        if choice.get("logprobs"):
            return False
    return True


def _json_data(event: bytes) -> object:
    """The event's data (its `data` fields joined by LF, as the `openai` client joins them)
    parsed as JSON; None when it is not JSON (or not UTF-8, which that client refuses)."""
    parts: list[bytes] = []
    for line in _LINES.split(event):
        if line.startswith(b":"):
            continue  # a comment
        name, _, value = line.partition(b":")
        if name == b"data":
            parts.append(value[1:] if value.startswith(b" ") else value)
    if not parts:
        return None
    try:
        return json.loads(b"\n".join(parts).decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        return None
