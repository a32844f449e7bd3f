"""The `usage` of a non-streaming JSON answer, read from the answer's tail.

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
compare this with a full `json.loads` of the same answers.
"""

from __future__ import annotations

import json

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
        if found is not None:
            return found
    return None


def _top_level_usage(text: str, at: int, key_len: int) -> Usage | None:
    j = at - 1
    while j >= 0 and text[j] in " \t\r\n":
        j -= 1
    if j < 0 or text[j] not in "{,":
        return None
    i = at + key_len
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    if i >= len(text) or text[i] != ":":
        return None
    i += 1
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    try:
        value, stop = _DECODER.raw_decode(text, i)
    except ValueError:
        return None
    rest = text[stop:].strip(" \t\r\n")
    if rest != "}":
        # Further members, then the end: `,"k":v,...}` must be exactly one object's rest.
        if not rest.startswith(",") or not rest[1:].lstrip(" \t\r\n").startswith('"'):
            return None
        try:
            json.loads("{" + rest[1:])
        except ValueError:
            return None
    return usage_from_object(value)
