"""The `usage` of a non-streaming JSON answer: from its tail, else the whole answer.

- `usage_from_json(body)`: an answer held in memory (the proxy holds sized answers up to
  256 KiB): its tail first, else `json.loads` of all of it;
- `JsonUsageScanner`: an answer relayed in pieces (larger, or chunked), read in one pass
  as it passes (below);
- `usage_from_json_tail(tail)`: the cheap path, explained here.


vLLM writes `usage` as a member of the top-level object near its end (after `choices` or
`data`; only `prompt_logprobs` and similar small members may follow). Parsing a whole answer
of a few hundred KiB (embeddings) costs milliseconds on the hot path, so only the tail is
read, and a `"usage"` found there is accepted only when it is provably the top-level
member:

- the byte before its opening quote (after whitespace) is `{` or `,`: in valid JSON a quote
  after those starts a string, and a string followed by `:` is a key (inside a string a
  quote is escaped, so `"usage"` followed by `:` cannot occur there);
- what follows its value is members and one closing `}` that ends the answer: the object
  that holds the key is then the outermost one.

Any other case gives None (no usage known), never a nested or a wrong figure; the tests
compare this with a full `json.loads` of the same answers. A tail is not enough when
`usage` is followed by more than `TAIL_BYTES`: vLLM writes `prompt_logprobs` after it
(tens of bytes per prompt token), hence the fallbacks above. None from all of them means
the usage is unknown, and the caller settles the quota at the whole reservation.
"""

from __future__ import annotations

import json
import re

from factory_router.metering.usage import Usage, usage_from_object

TAIL_BYTES = 16 * 1024  # the part of an answer kept for this: usage and what follows it
_KEY = '"usage"'
_DECODER = json.JSONDecoder()
_MAX_TRIES = 8  # "usage" keys looked at, from the end


def usage_from_json_tail(tail: bytes) -> Usage | None:
    """The top-level `usage` of the JSON object whose last bytes are `tail`, else None."""
    # A tail may start inside a character: replaced, as are invalid bytes elsewhere
    # (neither can be part of a key or a count).
    text = tail.decode("utf-8", errors="replace")
    end = len(text)
    for _ in range(_MAX_TRIES):
        at = text.rfind(_KEY, 0, end)
        if at < 0:
            return None
        end = at
        found = _top_level_usage(text, at, len(_KEY))
        if found is not _NOT_HERE:
            # The last top-level `usage` (json.loads keeps the last of duplicate keys):
            # its figures, or None when they are not counts.
            return usage_from_object(found)
    return None


_NOT_HERE = object()  # not provably the top-level member


def _top_level_usage(text: str, at: int, key_len: int) -> object:
    """The value of the `usage` key at `at` when it is provably the outermost object's
    member, else `_NOT_HERE`."""
    j = at - 1
    while j >= 0 and text[j] in " \t\r\n":
        j -= 1
    if j < 0 or text[j] not in "{,":
        return _NOT_HERE
    i = at + key_len
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    if i >= len(text) or text[i] != ":":
        return _NOT_HERE
    i += 1
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    try:
        value, stop = _DECODER.raw_decode(text, i)
    except (ValueError, RecursionError):  # an engine value nested too deep: unread
        return _NOT_HERE
    rest = text[stop:].strip(" \t\r\n")
    if rest != "}":
        # Further members, then the end: `,"k":v,...}` must be exactly one object's rest.
        if not rest.startswith(",") or not rest[1:].lstrip(" \t\r\n").startswith('"'):
            return _NOT_HERE
        try:
            json.loads("{" + rest[1:])
        except (ValueError, RecursionError):
            return _NOT_HERE
    return value


def usage_from_json(body: bytes) -> Usage | None:
    """The top-level `usage` of a whole JSON answer held in memory: its tail first (cheap),
    else the whole answer parsed (`usage` followed by more than `TAIL_BYTES`: vLLM writes
    `prompt_logprobs` after it). None when it has none or cannot be read."""
    found = usage_from_json_tail(body[-TAIL_BYTES:])
    if found is not None:
        return found
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return usage_from_object(doc.get("usage")) if isinstance(doc, dict) else None


_OUTSIDE = re.compile(rb'["{}\[\]]')  # what changes the structure outside a string
_INSIDE = re.compile(rb'["\\]')  # what ends a string or escapes its next byte
# Complete strings and anything but a bracket or a quote (possessive: no backtracking).
_SKIP = re.compile(rb'(?:"(?:[^"\\]++|\\.)*+"|[^"{}\[\]]++)*+', re.S)
_WS = b" \t\r\n"
MAX_USAGE_BYTES = 64 * 1024  # a `usage` value longer than this is not read (vLLM's: ~100)
_MAX_DEPTH = 4096  # deeper: not read (an answer's usage is at depth 2)
_CLOSES = {ord("{"): ord("}"), ord("["): ord("]")}
_MAX_KEY_BYTES = 256  # a key longer than this is not `usage`, even spelled with escapes


class JsonUsageScanner:
    """The top-level `usage` of a JSON answer relayed in pieces, read as it passes: one
    pass, memory bounded by `MAX_USAGE_BYTES`, for answers too large to hold.

    It follows strings (escapes included, across pieces) and the nesting of `{}` and `[]`,
    finds each key of the outermost object (a string at depth 1 after `{` or `,`), and
    keeps the value of the last one that reads `usage` when it is an object (json.loads
    keeps the last of duplicate keys too). The answer must be one object with nothing but
    whitespace after it; anything else (or a piece of it that is not JSON the scan can
    tell) gives None. Costs one regex search per key of the outermost object and per
    brace and bracket below it (strings and scalars there are skipped by one regex): a JSON
    of floats (embeddings) is a few searches, vLLM's `prompt_logprobs` 4 per token."""

    __slots__ = (
        "_bad", "_depth", "_ended", "_escape", "_in_key", "_in_string", "_key", "_open",
        "_prev", "_usage_raw", "_value", "_wanted",
    )  # fmt: skip

    def __init__(self) -> None:
        self._depth = 0
        self._open = bytearray()  # the brackets open, innermost last
        self._in_string = False
        self._escape = False  # a backslash ended the previous piece, inside a string
        self._in_key = False  # the string being read is a key of the outermost object
        self._key = bytearray()
        self._prev = b""  # at depth 1: the last byte outside strings that is not blank
        self._wanted = False  # the last key read was `usage`: its value may follow
        self._value: bytearray | None = None  # the `usage` object being read
        self._usage_raw: bytes | None = None  # the last complete top-level `usage` object
        self._ended = False  # the outermost object closed
        self._bad = False

    def feed(self, chunk: bytes) -> None:
        if self._bad:
            return
        i, n = 0, len(chunk)
        while i < n:
            if self._in_string:
                i = self._string(chunk, i)
                continue
            if self._depth >= 2 and self._value is None:
                # Inside a member of no interest: whole strings and scalars skipped in C,
                # one step per bracket (a string cut by the piece's end: read as usual).
                i = _SKIP.match(chunk, i).end()  # type: ignore[union-attr]  # always matches
                if i >= n:
                    return
                self._structure(chunk[i : i + 1])
                if self._bad:
                    return
                i += 1
                continue
            found = _OUTSIDE.search(chunk, i)
            stop = n if found is None else found.start()
            if self._ended:
                if chunk[i:stop].strip(_WS):
                    self._bad = True  # something after the answer's object
                    return
            elif self._depth == 1:
                gap = chunk[i:stop].rstrip(_WS)
                if gap:
                    self._prev = gap[-1:]
            if self._value is not None:
                self._value += chunk[i : stop + (found is not None)]
                if len(self._value) > MAX_USAGE_BYTES:
                    self._value = None
                    self._wanted = False
            if found is None:
                return
            self._structure(chunk[stop : stop + 1])
            if self._bad:
                return
            i = stop + 1

    def _string(self, chunk: bytes, i: int) -> int:
        """Reads string bytes from `i`; returns where to go on."""
        n = len(chunk)
        start = i
        if self._escape:
            self._escape = False
            i += 1
        while i < n:
            found = _INSIDE.search(chunk, i)
            if found is None:
                i = n
                break
            at = found.start()
            if chunk[at : at + 1] == b"\\":
                if at + 1 >= n:
                    self._escape = True
                    i = n
                    break
                i = at + 2
                continue
            i = at + 1
            self._in_string = False
            break
        piece = chunk[start:i]
        if self._value is not None:
            self._value += piece
        if self._in_key:
            self._key += piece
            if len(self._key) > _MAX_KEY_BYTES:
                self._in_key = False
                self._key.clear()
            elif not self._in_string:
                self._in_key = False
                self._wanted = _is_usage_key(bytes(self._key[:-1]))
                if self._wanted:
                    self._usage_raw = None  # the last `usage` key counts, as in json.loads
                self._key.clear()
        return i

    def _structure(self, char: bytes) -> None:
        if self._ended:
            self._bad = True
            return
        depth = self._depth
        if char == b'"':
            self._in_string = True
            if depth == 1:
                if self._prev in (b"{", b","):
                    self._in_key = True  # a key of the outermost object
                    self._wanted = False
                else:
                    self._wanted = False  # a string value
                self._prev = b'"'
            return
        if char in (b"{", b"["):
            if (depth == 0 and char != b"{") or depth >= _MAX_DEPTH:
                self._bad = True  # not an object, or nested beyond what is worth reading
                return
            self._open += char
            if depth == 1:
                if self._wanted and char == b"{":
                    self._value = bytearray(b"{")
                self._wanted = False
            self._depth = depth + 1
            if self._depth == 1:
                self._prev = b"{"
            return
        if depth == 0 or _CLOSES[self._open[-1]] != char[0]:
            self._bad = True  # a close without its open
            return
        del self._open[-1]
        self._depth = depth - 1
        if self._depth == 1:
            self._prev = char
            if self._value is not None and char == b"}":
                self._usage_raw = bytes(self._value)
                self._value = None
        elif self._depth == 0:
            if char != b"}":
                self._bad = True
            self._ended = True
            self._wanted = False

    @property
    def usage(self) -> Usage | None:
        """The answer's top-level `usage` once it has all been fed; else None."""
        if self._bad or not self._ended or self._usage_raw is None:
            return None
        try:
            return usage_from_object(json.loads(self._usage_raw))
        except (ValueError, RecursionError):
            return None


def _is_usage_key(raw: bytes) -> bool:
    if raw == b"usage":
        return True
    if b"\\" not in raw:
        return False
    try:
        return bool(json.loads(b'"' + raw + b'"') == "usage")
    except ValueError:
        return False
