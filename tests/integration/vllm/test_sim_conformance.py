"""The simulator conforms to the real engine: what a client and a scraper see.

The same short workload goes to `vllm serve` (the pinned vLLM on the tiny model) and to
`factory-sim` configured as that engine (same served name, same max_model_len): chat and
completions, streaming with and without `stream_options.include_usage`, an unknown model, a
prompt over the context limit, `max_tokens` 0 and negative, and a completion that would
overflow the limit. Compared: status codes, content types, the keys of every object (the
simulator may omit fields vLLM sends, never send a field vLLM does not), the streaming chunk
sequence, error type/param/code (and message, where it is the same by design), and every
`vllm:` metric family the simulator exposes (name, type, label names, bucket boundaries).
Remaining differences, and why they are kept: sim/README.md, "Differences from real vLLM".
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.vllm.conftest import MAX_MODEL_LEN, SERVED_NAME

pytestmark = pytest.mark.vllm

TIMEOUT = httpx.Timeout(60.0, connect=5.0)
MESSAGES = [{"role": "user", "content": "Hello there, how are you?"}]
# ignore_eos (a vLLM extension the simulator honours): both generate exactly max_tokens.
CHAT = {"model": SERVED_NAME, "messages": MESSAGES, "max_tokens": 4, "ignore_eos": True}
COMPLETION = {"model": SERVED_NAME, "prompt": "Once upon a time", "max_tokens": 4}
COMPLETION |= {"ignore_eos": True}
# Over the limit in tokens for both tokenizers, yet under the character bound vLLM checks
# first (max_model_len x the tokenizer's longest token, 37 characters here), which the
# simulator does not know: see sim/README.md.
LONG_PROMPT = "word " * (4 * MAX_MODEL_LEN)


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", "").split(";")[0].strip()


def _events(response: httpx.Response) -> list[Any]:
    """The SSE data payloads, parsed; `[DONE]` stays a string."""
    out: list[Any] = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            data = block.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _kind(event: Any) -> str:
    if event == "[DONE]":
        return "done"
    if not event["choices"]:
        return "usage" if "usage" in event else "empty"
    choice = event["choices"][0]
    if "role" in choice.get("delta", {}):
        return "role"
    return "finish" if choice["finish_reason"] is not None else "content"


def _sequence(events: list[Any]) -> list[str]:
    """Chunk kinds in order, runs of content chunks collapsed into one."""
    kinds: list[str] = []
    for kind in map(_kind, events):
        if not (kind == "content" and kinds and kinds[-1] == "content"):
            kinds.append(kind)
    return kinds


def _keys(events: list[Any]) -> dict[str, set[str]]:
    """The keys seen at each level of each kind of chunk."""
    seen: dict[str, set[str]] = {}
    for event in events:
        if event == "[DONE]":
            continue
        kind = _kind(event)
        seen.setdefault(kind, set()).update(event)
        for choice in event["choices"]:
            seen.setdefault(f"{kind}.choice", set()).update(choice)
            seen.setdefault(f"{kind}.delta", set()).update(choice.get("delta", {}))
        seen.setdefault(f"{kind}.usage", set()).update(event.get("usage") or {})
    return seen


def _observe(base: str) -> dict[str, Any]:
    """Send the workload to one engine; return what a client sees."""
    seen: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        models = client.get("/v1/models")
        seen["models"] = (models.status_code, set(models.json()), set(models.json()["data"][0]))
        seen["health"] = client.get("/health").status_code
        for name, path, body in (
            ("chat", "/v1/chat/completions", CHAT),
            ("completion", "/v1/completions", COMPLETION),
        ):
            answer = client.post(path, json=body)
            data = answer.json()
            choice = data["choices"][0]
            seen[name] = {
                "status": answer.status_code,
                "media_type": _media_type(answer),
                "object": data["object"],
                "finish_reason": choice["finish_reason"],
                "completion_tokens": data["usage"]["completion_tokens"],
                "keys": set(data),
                "choice_keys": set(choice),
                "message_keys": set(choice.get("message", {})),
                "usage_keys": set(data["usage"]),
            }
            for usage in (False, True):
                streamed = body | {"stream": True}
                if usage:
                    streamed |= {"stream_options": {"include_usage": True}}
                answer = client.post(path, json=streamed)
                events = _events(answer)
                seen[f"{name}-stream-usage-{usage}"] = {
                    "status": answer.status_code,
                    "content_type": answer.headers.get("content-type"),
                    "sequence": _sequence(events),
                    "keys": _keys(events),
                    "objects": {e["object"] for e in events if e != "[DONE]"},
                }
        overflow = client.post(
            "/v1/completions",
            json=COMPLETION | {"prompt": [100] * (MAX_MODEL_LEN - 3), "max_tokens": 50},
        )
        seen["overflow"] = (overflow.status_code, overflow.json().get("usage"))
        for name, body in {
            "unknown-model": CHAT | {"model": "no-such-model"},
            "too-long": CHAT | {"messages": [{"role": "user", "content": LONG_PROMPT}]},
            "max-tokens-0": CHAT | {"max_tokens": 0},
            "max-tokens-negative": CHAT | {"max_tokens": -1},
        }.items():
            answer = client.post("/v1/chat/completions", json=body)
            seen[name] = (answer.status_code, _media_type(answer), answer.json())
        seen["metrics"] = client.get("/metrics").text
    return seen


@pytest.fixture(scope="module")
def observed(real_engine: str, sim_engine: str) -> dict[str, dict[str, Any]]:
    return {"real": _observe(real_engine), "sim": _observe(sim_engine)}


def test_models_and_health(observed: dict[str, dict[str, Any]]) -> None:
    real, sim = observed["real"], observed["sim"]
    assert real["health"] == sim["health"] == 200
    assert real["models"][0] == sim["models"][0] == 200
    assert sim["models"][1] <= real["models"][1]
    assert sim["models"][2] <= real["models"][2]


@pytest.mark.parametrize("name", ["chat", "completion"])
def test_answers_have_vllms_shape(observed: dict[str, dict[str, Any]], name: str) -> None:
    real, sim = observed["real"][name], observed["sim"][name]
    for field in ("status", "media_type", "object", "finish_reason", "completion_tokens"):
        assert sim[field] == real[field], field
    assert real["finish_reason"] == "length" and real["completion_tokens"] == 4
    for field in ("keys", "choice_keys", "message_keys", "usage_keys"):
        assert sim[field] <= real[field], (field, sim[field] - real[field])


@pytest.mark.parametrize("usage", [False, True])
@pytest.mark.parametrize("name", ["chat", "completion"])
def test_streams_have_vllms_chunk_sequence(
    observed: dict[str, dict[str, Any]], name: str, usage: bool
) -> None:
    real = observed["real"][f"{name}-stream-usage-{usage}"]
    sim = observed["sim"][f"{name}-stream-usage-{usage}"]
    assert real["status"] == sim["status"] == 200
    assert sim["content_type"] == real["content_type"]
    expected = ["content", "finish", *(["usage"] if usage else []), "done"]
    if name == "chat":
        expected = ["role", *expected]
    assert real["sequence"] == expected
    assert sim["sequence"] == real["sequence"]
    assert sim["objects"] == real["objects"]
    for level, keys in sim["keys"].items():
        assert keys <= real["keys"][level], (level, keys - real["keys"][level])


def test_a_completion_that_would_overflow_is_cut_to_fit(
    observed: dict[str, dict[str, Any]],
) -> None:
    real, sim = observed["real"]["overflow"], observed["sim"]["overflow"]
    assert real[0] == sim[0] == 200
    assert real[1]["completion_tokens"] == sim[1]["completion_tokens"] == 3


@pytest.mark.parametrize(
    "name", ["unknown-model", "too-long", "max-tokens-0", "max-tokens-negative"]
)
def test_errors_have_vllms_shape(observed: dict[str, dict[str, Any]], name: str) -> None:
    real_status, real_type, real_body = observed["real"][name]
    sim_status, sim_type, sim_body = observed["sim"][name]
    assert sim_status == real_status and sim_type == real_type
    assert set(sim_body) == set(real_body) == {"error"}
    real_error, sim_error = real_body["error"], sim_body["error"]
    assert set(sim_error) == set(real_error)
    for field in ("type", "param", "code"):
        assert sim_error[field] == real_error[field], field
    if name == "unknown-model":
        # vLLM 0.32 adds "Valid aliases: ..." after the sentence the simulator sends.
        assert real_error["message"].startswith(sim_error["message"])
    else:
        assert sim_error["message"] == real_error["message"]


def _families(text: str) -> dict[str, tuple[str, frozenset[str], tuple[float, ...]]]:
    out = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("vllm:") or family.name.endswith("_created"):
            continue
        labels = frozenset(k for s in family.samples for k in s.labels if k != "le")
        bounds = {float(s.labels["le"]) for s in family.samples if "le" in s.labels}
        out[family.name] = (family.type, labels, tuple(sorted(bounds)))
    return out


def test_metrics_have_vllms_names_types_labels_and_buckets(
    observed: dict[str, dict[str, Any]],
) -> None:
    real = _families(observed["real"]["metrics"])
    sim = _families(observed["sim"]["metrics"])
    assert len(sim) >= 15, sorted(sim)
    assert sorted(set(sim) - set(real)) == []
    different = {name: (sim[name], real[name]) for name in sim if sim[name] != real[name]}
    assert different == {}
