"""Metering's pure parts: the request rewrite, the SSE meter against the `openai` client's
own SSE decoder, the JSON answer's usage against `json.loads`, the token counters."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder
from pydantic import ValidationError

from factory_router.app.metrics import RouterMetrics
from factory_router.metering.answer import (
    TAIL_BYTES,
    JsonUsageScanner,
    usage_from_json,
    usage_from_json_tail,
)
from factory_router.metering.request import ask_for_usage
from factory_router.metering.sse import StreamMeter
from factory_router.metering.usage import Usage, usage_from_object

CHAT = {"model": "m", "messages": [{"role": "user", "content": 'hé "usage": {}'}]}


def _ask(doc: dict[str, Any], raw: bytes | None = None) -> tuple[dict[str, Any], bool, bytes]:
    body = raw if raw is not None else json.dumps(doc).encode()
    sent, strip = ask_for_usage(json.loads(body), body)
    return json.loads(sent), strip, sent


# -- the request ------------------------------------------------------------------------


def test_a_stream_without_stream_options_asks_for_usage_and_keeps_the_clients_bytes() -> None:
    body = b'{"model": "m", "stream": true, "prompt": "x"}  \n'
    sent, strip = ask_for_usage(json.loads(body), body)
    assert strip
    assert sent == b'{"model": "m", "stream": true, "prompt": "x","stream_options":' \
        b'{"include_usage":true}}  \n'  # fmt: skip
    assert json.loads(sent) == {**json.loads(body), "stream_options": {"include_usage": True}}


@pytest.mark.parametrize(
    ("options", "sent_options", "strip"),
    [
        (None, {"include_usage": True}, True),
        ({"include_usage": False}, {"include_usage": True}, True),
        ({"include_usage": None}, {"include_usage": True}, True),
        (
            {"include_usage": False, "continuous_usage_stats": True, "x": 1},
            {"include_usage": True, "continuous_usage_stats": False, "x": 1},
            True,
        ),
        ({"include_usage": True}, {"include_usage": True}, False),
        ({}, {}, False),  # vLLM: include_usage defaults to true inside stream_options
        ({"continuous_usage_stats": True}, {"continuous_usage_stats": True}, False),
        ({"include_usage": "yes"}, {"include_usage": "yes"}, False),  # the engine's to read
        ([1], [1], False),  # the engine refuses it
    ],
)
def test_stream_options_of_the_client(options: Any, sent_options: Any, strip: bool) -> None:
    doc = {**CHAT, "stream": True, "stream_options": options}
    sent, stripped, _ = _ask(doc)
    assert stripped is strip
    assert sent == {**doc, "stream_options": sent_options}


@pytest.mark.parametrize("stream", [False, None, 0, 0.0, "false", "no", "off", "0", 2, "x", []])
def test_a_request_that_does_not_stream_is_sent_unchanged(stream: Any) -> None:
    # False as the engine reads it, or refused by it (its 400): the client's bytes.
    body = json.dumps({**CHAT, "stream": stream}).encode()
    assert ask_for_usage(json.loads(body), body) == (body, False)
    body = json.dumps(CHAT).encode()
    assert ask_for_usage(json.loads(body), body) == (body, False)


def _engine_reads(model: Any, body: bytes) -> tuple[bool, bool, bool] | None:
    """What the simulator's request model (vLLM's: pydantic, lax) reads of a body: whether
    it streams, sends a usage chunk, and usage in every chunk; None when it refuses it."""
    try:
        req = model.model_validate(json.loads(body))
    except ValidationError:
        return None
    options = req.stream_options
    stream = bool(req.stream)
    usage = stream and options is not None and bool(options.include_usage)
    return stream, usage, stream and options is not None and bool(options.continuous_usage_stats)


_LAX_SHAPES = [
    '"stream":true', '"stream":1', '"stream":"true"', '"stream":"yes"', '"stream":"on"',
    '"stream":1.0', '"stream":"T"', '"stream":true,"stream_options":null',
    '"stream":1,"stream_options":{}', '"stream":true,"stream_options":{"include_usage":false}',
    '"stream":true,"stream_options":{"include_usage":null}',
    '"stream":true,"stream_options":{"include_usage":0}',
    '"stream":"yes","stream_options":{"include_usage":"false"}',
    '"stream":true,"stream_options":{"include_usage":"no"}',
    '"stream":true,"stream_options":{"include_usage":1}',
    '"stream":true,"stream_options":{"include_usage":0.0,"continuous_usage_stats":"yes"}',
    '"stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true}',
    '"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":1}',
    '"stream":true,"stream_options":{"include_usage":"maybe"}', '"stream":2',
    '"stream":true,"stream_options":{"include_usage":false},"stream_options":null',
    '"\\u0073tream":1,"stream_\\u006fptions":{"include_usage":"off"}',
    '"stream":false,"stream":"y"', '"stream":"1","stream_options":[]',
    '"stream":"no","stream_options":{"include_usage":true}', '"stream":null',
]  # fmt: skip


@pytest.mark.parametrize("shape", _LAX_SHAPES)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_stream_and_usage_are_read_as_the_engine_reads_them(shape: str, encoding: str) -> None:
    """Every shape the review tried (`"stream": 1`, `"true"`, `include_usage: 0`, ...):
    the router strips exactly when the engine would have sent no usage chunk, and then the
    body it sends makes the engine send one, in JSON booleans; else the client's bytes."""
    model = pytest.importorskip("factory_sim.server.protocol").ChatCompletionRequest
    body = '{"model":"m","messages":[{"role":"user","content":"h\u00e9"}],' + shape + "}"
    raw = body.encode(encoding)
    before = _engine_reads(model, raw)
    sent, strip = ask_for_usage(json.loads(raw), raw)
    after = _engine_reads(model, sent)
    assert strip is (before is not None and before[0] and not before[1])
    if strip:
        assert after == (True, True, False)
        doc = json.loads(sent)
        assert doc["stream"] is True
        assert doc["stream_options"]["include_usage"] is True
        assert "é" in sent.decode("utf-8")  # UTF-8, not \\u escapes
        assert {k: v for k, v in doc.items() if k not in ("stream", "stream_options")} == {
            k: v for k, v in json.loads(raw).items() if k not in ("stream", "stream_options")
        }
    else:
        assert sent == raw
        assert after == before


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
def test_a_body_json_reads_in_another_encoding_is_sent_as_utf8(encoding: str) -> None:
    doc = {**CHAT, "stream": True}
    raw = json.dumps(doc).encode(encoding)
    sent, strip, sent_bytes = _ask(doc, raw)
    assert strip and sent == {**doc, "stream_options": {"include_usage": True}}
    assert sent_bytes.decode("utf-8")


def test_duplicate_keys_are_sent_as_json_loads_read_them() -> None:
    raw = b'{"model":"m","prompt":"x","stream":true,"stream_options":{"include_usage":true},' \
        b'"stream_options":{"include_usage":false}}'  # fmt: skip
    sent, strip, sent_bytes = _ask({}, raw)
    assert strip and sent["stream_options"] == {"include_usage": True}
    assert sent_bytes.count(b"stream_options") == 1


# -- the SSE stream -----------------------------------------------------------------------


def _usage_chunk(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def _content(text: str) -> dict[str, Any]:
    return {"id": "c", "choices": [{"index": 0, "delta": {"content": text}}]}


def _sse(*payloads: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (p if isinstance(p, str) else json.dumps(p, separators=(",", ":"))).encode()
        + b"\n\n"
        for p in payloads
    )  # fmt: skip


def _relay(meter: StreamMeter, pieces: list[bytes]) -> bytes:
    return b"".join(meter.feed(p) for p in pieces) + meter.finish()


def _decoded(stream: bytes) -> list[tuple[str | None, str]]:
    return [(e.event, e.data) for e in SSEDecoder().iter_bytes(iter([stream]))]


def _is_usage_chunk(data: str) -> bool:
    doc = _loads(data)
    return isinstance(doc, dict) and doc.get("choices") == [] and isinstance(doc.get("usage"), dict)


VLLM_STREAM = _sse(
    {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    _content("Hello"),
    _content(" world"),
    {"id": "c", "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}]},
    _usage_chunk(7, 3),
    "[DONE]",
)


@pytest.mark.parametrize("strip", [True, False])
def test_the_usage_chunk_is_read_and_stripped_only_when_the_router_asked(strip: bool) -> None:
    for size in (1, 2, 7, len(VLLM_STREAM)):
        pieces = [VLLM_STREAM[i : i + size] for i in range(0, len(VLLM_STREAM), size)]
        meter = StreamMeter(strip_usage=strip)
        out = _relay(meter, pieces)
        assert meter.usage == Usage(7, 3, "engine")
        assert meter.done
        if strip:
            assert out == VLLM_STREAM.replace(_sse(_usage_chunk(7, 3)), b"")
            assert meter.stripped == 1
        else:
            assert out == VLLM_STREAM


def test_a_stream_cut_short_is_estimated_one_token_per_content_event() -> None:
    cut = VLLM_STREAM[: VLLM_STREAM.index(_sse(_usage_chunk(7, 3)))]
    meter = StreamMeter(strip_usage=True)
    assert _relay(meter, [cut[:50], cut[50:]]) == cut
    assert meter.usage == Usage(None, 3, "estimated")  # Hello, world, the stop token
    assert not meter.done


def test_a_partial_event_is_held_until_its_end_arrives() -> None:
    meter = StreamMeter(strip_usage=False)
    assert meter.feed(b'data: {}\n\ndata: {"a"') == b"data: {}\n\n"
    assert meter.feed(b":1}\r") == b""  # a CR may be half of a CRLF
    assert meter.feed(b"\n\r\n") == b'data: {"a":1}\r\n\r\n'
    # A usage chunk ended by LF CRLF, its CR and LF apart: all of its bytes go, no more.
    meter = StreamMeter(strip_usage=True)
    usage = _sse(_usage_chunk(1, 1))[:-1]
    assert meter.feed(usage) + meter.feed(b"\r") + meter.feed(b"\ndata: [DONE]\n\n") == (
        b"data: [DONE]\n\n"
    )


def test_decoys_are_not_usage_and_escaped_keys_are() -> None:
    decoy = _content('{"choices":[],"usage":{"prompt_tokens":1}}')  # text, not structure
    escaped = '{"choices":[],"us\\u0061ge":{"prompt_tokens":5,"completion_tokens":2}}'
    comment = b': {"choices":[],"usage":{"prompt_tokens":9}}\n\n'
    stream = _sse(decoy) + comment + _sse(escaped, "[DONE]")
    meter = StreamMeter(strip_usage=True)
    out = _relay(meter, [stream])
    assert out == _sse(decoy) + comment + _sse("[DONE]")
    assert meter.usage == Usage(5, 2, "engine")


def test_running_usage_in_every_chunk_is_relayed_and_the_last_one_counts() -> None:
    chunks = [{**_content("a"), "usage": {"prompt_tokens": 4, "completion_tokens": i}}
              for i in (1, 2)]  # fmt: skip
    stream = _sse(*chunks, _usage_chunk(4, 2), "[DONE]")
    meter = StreamMeter(strip_usage=False)
    assert _relay(meter, [stream]) == stream
    assert meter.usage == Usage(4, 2, "engine")


_text = st.text(alphabet=st.sampled_from('ab "\\:{}[],\nusage\u00e9'), max_size=12)
_line_end = st.sampled_from([b"\n", b"\r", b"\r\n"])


@st.composite
def _events(draw: st.DrawFn) -> list[bytes]:
    """An SSE stream's events, each one's bytes with its own line ends."""
    out: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["content", "usage", "running", "comment", "named", "multi"]))
        end = draw(_line_end)
        if kind == "content":
            lines = [b"data: " + json.dumps(_content(draw(_text))).encode()]
        elif kind == "usage":
            lines = [b"data:" + json.dumps(_usage_chunk(draw(st.integers(0, 9)), 2)).encode()]
        elif kind == "running":
            doc = {**_content("x"), "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
            lines = [b"data: " + json.dumps(doc).encode()]
        elif kind == "comment":
            lines = [b": " + json.dumps(_usage_chunk(1, 1)).encode()]
        elif kind == "named":
            lines = [b"event: usage", b"data: " + json.dumps(_usage_chunk(3, 3)).encode()]
        else:  # one JSON document over two data lines
            text = json.dumps(_usage_chunk(2, 2))
            cut = draw(st.integers(1, len(text) - 1))
            lines = [b"data: " + text[:cut].encode(), b"data: " + text[cut:].encode()]
        out.append(b"".join(line + end for line in lines) + draw(_line_end))
    out.append(b"data: [DONE]" + draw(_line_end) + draw(_line_end))
    return out


@settings(max_examples=300, deadline=None)
@given(events=_events(), cuts=st.lists(st.integers(0, 2000), max_size=8), strip=st.booleans())
def test_the_meter_strips_exactly_what_the_openai_decoder_reads_as_usage_chunks(
    events: list[bytes], cuts: list[int], strip: bool
) -> None:
    stream = b"".join(events)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    meter = StreamMeter(strip_usage=strip)
    out = _relay(meter, pieces)
    seen = _decoded(stream)
    if not strip or not any(_is_usage_chunk(data) for _, data in seen):
        assert out == stream
    else:
        # Whole events are dropped, nothing else: the client's decoder reads what it would
        # have read, minus every usage chunk.
        assert _decoded(out) == [e for e in seen if not _is_usage_chunk(e[1])]
    docs = [_loads(data) for _, data in seen]
    usages = [d["usage"] for d in docs if isinstance(d, dict) and isinstance(d.get("usage"), dict)]
    assert meter.engine_usage == (usage_from_object(usages[-1]) if usages else None)


@settings(max_examples=200, deadline=None)
@given(events=_events(), cuts=st.lists(st.integers(0, 2000), max_size=8), strip=st.booleans())
def test_with_little_memory_the_meter_only_strips_less(
    events: list[bytes], cuts: list[int], strip: bool
) -> None:
    stream = b"".join(events)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    meter = StreamMeter(strip_usage=strip, max_event_bytes=40)
    out = b""
    for a, b in itertools.pairwise(bounds):
        out += meter.feed(stream[a:b])
        assert len(meter._held) <= 40 + (b - a)
    out += meter.finish()
    seen = _decoded(stream)
    if not strip:
        assert out == stream
        return
    # What the client reads: every event, in order, but for some usage chunks (those
    # longer than the meter holds are relayed unread).
    kept = _decoded(out)
    matched = 0
    for event in seen:
        if matched < len(kept) and kept[matched] == event:
            matched += 1
        else:
            assert _is_usage_chunk(event[1])
    assert matched == len(kept)


def test_an_event_too_long_to_hold_is_relayed_as_it_comes() -> None:
    long_event = b"data: " + json.dumps(_content("x" * 300)).encode() + b"\r\n\r\n"
    meter = StreamMeter(strip_usage=True, max_event_bytes=64)
    out = b""
    for i in range(0, len(long_event), 10):
        out += meter.feed(long_event[i : i + 10])
        assert len(meter._held) <= 64 + 10
    tail = _sse(_usage_chunk(3, 1), "[DONE]")
    out += meter.feed(tail) + meter.finish()
    assert out == long_event + _sse("[DONE]")
    assert meter.usage == Usage(3, 1, "engine")


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n"])
def test_a_held_event_is_searched_once_however_small_its_pieces(end: bytes) -> None:
    """An event just under the memory bound, trickled 256 bytes at a time: the framing
    resumes where it stopped (review: 1.9 s of CPU per MiB when every piece rescanned all
    that was held). Counted in bytes searched, not timed."""
    event = b"data: " + b"x" * ((1 << 20) - 64) + end
    meter = StreamMeter(strip_usage=True)
    pieces = [event[i : i + 256] for i in range(0, len(event), 256)]
    out = b"".join(meter.feed(p) for p in pieces) + meter.finish()
    assert out == event and meter.events == 1
    # Each piece is searched once, plus at most the 3 bytes a line end pair spans before it.
    assert meter.examined <= len(event) + 3 * len(pieces)
    # A CR arriving late in a long event switches the framing; still one pass.
    meter = StreamMeter(strip_usage=False)
    late = b"data: " + b"y" * 100_000 + b"\r" + b"z" * 100_000 + b"\r\n\r\n"
    pieces = [late[i : i + 100] for i in range(0, len(late), 100)]
    assert b"".join(meter.feed(p) for p in pieces) + meter.finish() == late
    assert meter.examined <= len(late) + 3 * len(pieces)


def test_only_the_role_chunk_is_left_out_of_the_estimate() -> None:
    """vLLM's first chunk (role, empty content) carries no token; a token whose text or
    logprobs say "role" does (review: 600 such tokens went uncounted)."""
    role = {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    logprob = {"id": "c", "choices": [{"index": 0, "delta": {"content": "x"},
               "logprobs": {"content": [{"token": '"role"', "logprob": -1.0}]}}]}  # fmt: skip
    stream = _sse(role, _content("role"), _content('"role"'), logprob, _content("x"), "[DONE]")
    meter = StreamMeter(strip_usage=False)
    assert _relay(meter, [stream]) == stream
    assert meter.usage == Usage(None, 4, "estimated")
    two = {"id": "c", "choices": [{"index": i, "delta": {"role": "assistant"}} for i in (0, 1)]}
    meter = StreamMeter(strip_usage=False)
    _relay(meter, [_sse(two, _content("a"), "[DONE]")])
    assert meter.usage == Usage(None, 1, "estimated")


def test_a_usage_chunk_nested_too_deep_to_parse_is_unreadable_not_an_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    chunk = b'data: {"choices":[],"usage":{"prompt_tokens":1,"x":' + deep + b"}}\n\n"
    for strip in (True, False):
        meter = StreamMeter(strip_usage=strip)
        out = _relay(meter, [_sse(_content("a")), chunk, _sse("[DONE]")])
        # Perhaps the chunk the router asked for: dropped then; else relayed as it came.
        assert out == _sse(_content("a")) + (b"" if strip else chunk) + _sse("[DONE]")
        assert meter.unreadable and meter.engine_usage is None
        assert meter.usage == Usage(None, 1, "estimated")


def _loads(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


# -- the JSON answer ----------------------------------------------------------------------


def _answer(usage: dict[str, Any] | None, *, after: dict[str, Any] | None = None) -> bytes:
    doc: dict[str, Any] = {
        "id": "x",
        "choices": [{"index": 0, "message": {"content": 'a "usage": {"prompt_tokens": 1}'},
                     "logprobs": {"top_logprobs": [{'"usage': -0.1}]}}],
    }  # fmt: skip
    if usage is not None:
        doc["usage"] = usage
    doc.update(after or {})
    return json.dumps(doc).encode()


def test_the_answers_top_level_usage_is_read_from_its_tail() -> None:
    counts = {"prompt_tokens": 12, "total_tokens": 17, "completion_tokens": 5}
    assert usage_from_json_tail(_answer(counts)) == Usage(12, 5, "engine")
    after = {"prompt_logprobs": None, "kv_transfer_params": None}
    assert usage_from_json_tail(_answer(counts, after=after)) == Usage(12, 5, "engine")
    embeddings = {"prompt_tokens": 3, "total_tokens": 3, "completion_tokens": 0}
    big = json.dumps({"data": [{"embedding": [0.1] * 50_000}], "usage": embeddings}).encode()
    assert len(big) > TAIL_BYTES
    assert usage_from_json_tail(big[-TAIL_BYTES:]) == Usage(3, 0, "engine")
    assert usage_from_json_tail(_answer(None)) is None
    nested = _answer(None, after={"x": {"usage": counts}})
    assert usage_from_json_tail(nested) is None
    assert usage_from_json_tail(_answer({"prompt_tokens": -1})) is None
    assert usage_from_json_tail(_answer({"prompt_tokens": True})) is None
    assert usage_from_json_tail(b'{"usage":{"prompt_tokens":1},}') is None  # not JSON
    # Duplicate keys: the last one, as json.loads reads them (not an earlier, valid one).
    duplicate = b'{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":null}'
    assert usage_from_json_tail(duplicate) is None and usage_from_json(duplicate) is None


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), _text)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["usage", '"usage', "a", "choices"]), inner, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(
    doc=st.dictionaries(st.sampled_from(["usage", "a", "b", '"usage']), _json, max_size=4),
    usage=st.one_of(st.none(), st.fixed_dictionaries(
        {"prompt_tokens": st.integers(0, 99), "completion_tokens": st.integers(0, 99)})),
    indent=st.sampled_from([None, 1]),
)  # fmt: skip
def test_the_tail_reader_never_disagrees_with_json_loads(
    doc: dict[str, Any], usage: dict[str, Any] | None, indent: int | None
) -> None:
    if usage is not None:
        doc["usage"] = usage
    body = json.dumps(doc, indent=indent).encode()
    found = usage_from_json_tail(body)
    parsed = json.loads(body).get("usage")
    truth = usage_from_object(parsed)
    assert found is None or found == truth
    if usage is not None and list(doc)[-1] == "usage":
        assert found == truth  # vLLM's layout: usage last


def _vllm_answer_with_prompt_logprobs(prompt_tokens: int) -> bytes:
    """vLLM's ChatCompletionResponse layout: `usage`, then `prompt_logprobs`."""
    doc = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + 9,
                  "completion_tokens": 9},
        "prompt_logprobs": [None] + [
            {str(1000 + i): {"logprob": -1.2345678, "rank": 1, "decoded_token": "tok"}}
            for i in range(prompt_tokens - 1)
        ],
    }  # fmt: skip
    return json.dumps(doc).encode()


@pytest.mark.parametrize("prompt_tokens", [20, 2000, 20_000])
def test_usage_followed_by_prompt_logprobs_is_read_from_the_whole_answer(
    prompt_tokens: int,
) -> None:
    """Review: with `prompt_logprobs`, `usage` sat more than 16 KiB before the end and was
    read as None (the quota settled at 0). In memory: the whole answer parsed; relayed in
    pieces: the one-pass scanner."""
    body = _vllm_answer_with_prompt_logprobs(prompt_tokens)
    want = Usage(prompt_tokens, 9, "engine")
    if prompt_tokens > 20:
        assert len(body) > TAIL_BYTES and usage_from_json_tail(body[-TAIL_BYTES:]) is None
    assert usage_from_json(body) == want
    for size in (7, 4096, 65536):
        scanner = JsonUsageScanner()
        for i in range(0, len(body), size):
            scanner.feed(body[i : i + size])
        assert scanner.usage == want


def test_an_answer_nested_too_deep_has_no_usage_and_raises_nothing() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (b'{"id":"x","usage":' + deep + b"}", b'{"usage":{"x":' + deep + b"}}"):
        assert usage_from_json_tail(body[-TAIL_BYTES:]) is None
        assert usage_from_json(body) is None
        scanner = JsonUsageScanner()
        scanner.feed(body)
        assert scanner.usage is None


@settings(max_examples=400, deadline=None)
@given(
    doc=st.dictionaries(st.sampled_from(["usage", "a", "b", '"usage', "us\\age"]), _json,
                        max_size=4),
    usage=st.one_of(st.none(), st.fixed_dictionaries(
        {"prompt_tokens": st.integers(0, 99), "completion_tokens": st.integers(0, 99)})),
    indent=st.sampled_from([None, 1]),
    escaped=st.booleans(),
    cuts=st.lists(st.integers(0, 4000), max_size=6),
    trailer=st.sampled_from([b"", b" \n", b"x", b"{}"]),
)  # fmt: skip
def test_the_scanner_reads_what_json_loads_reads(
    doc: dict[str, Any],
    usage: dict[str, Any] | None,
    indent: int | None,
    escaped: bool,
    cuts: list[int],
    trailer: bytes,
) -> None:
    if usage is not None:
        doc["usage"] = usage
    body = json.dumps(doc, indent=indent).encode()
    if escaped:
        body = body.replace(b'"usage"', b'"us\\u0061ge"')
    body += trailer
    bounds = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    scanner = JsonUsageScanner()
    for a, b in itertools.pairwise(bounds):
        scanner.feed(body[a:b])
    parsed = _loads(body.decode())
    truth = usage_from_object(parsed.get("usage")) if isinstance(parsed, dict) else None
    assert scanner.usage == truth
    assert usage_from_json(body) == truth


# -- the counters ---------------------------------------------------------------------------


def test_token_counters_by_tenant_model_region_pool_and_source() -> None:
    metrics = RouterMetrics(load_age=lambda: 0.0, load_stale=lambda: 0.0)
    metrics.observe_usage("acme", "m", "eu-west-1", "p", Usage(10, 4, "engine"))
    metrics.observe_usage("acme", "m", "eu-west-1", "p", Usage(5, 1, "engine"))
    metrics.observe_usage("acme", "m", "eu-west-1", "p", Usage(None, 3, "estimated"))
    labels = {"tenant": "acme", "model": "m", "region": "eu-west-1", "pool": "p"}
    value = metrics.registry.get_sample_value
    assert value("factory_router_prompt_tokens_total", labels) == 15
    assert value("factory_router_completion_tokens_total", {**labels, "source": "engine"}) == 5
    assert value("factory_router_completion_tokens_total", {**labels, "source": "estimated"}) == 3
