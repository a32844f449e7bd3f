"""The official openai client (sync and async, streaming or not) works against the simulator."""

from __future__ import annotations

import asyncio

import openai

from factory_sim.server import EngineHandle


def _clients(handle: EngineHandle) -> tuple[openai.OpenAI, openai.AsyncOpenAI]:
    base = f"{handle.url}/v1"
    return (
        openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=30),
        openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0, timeout=30),
    )


async def test_async_chat_stream_with_usage(engine: EngineHandle) -> None:
    _, client = _clients(engine)
    async with client:
        stream = await client.chat.completions.create(
            model="llama-8b",
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 8
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "length" and set(finals[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


async def test_async_chat_and_completion_non_stream(engine: EngineHandle) -> None:
    _, client = _clients(engine)
    async with client:
        chat = await client.chat.completions.create(
            model="alias",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello"},
            ],
            max_tokens=6,
        )
        comp = await client.completions.create(
            model="llama-8b", prompt="Once", max_tokens=4, extra_body={"ignore_eos": True}
        )
    assert chat.model == "alias" and chat.choices[0].message.content
    assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= 6
    assert chat.choices[0].finish_reason in {"stop", "length"}
    assert comp.choices[0].finish_reason == "length" and comp.usage is not None
    assert comp.usage.completion_tokens == 4


async def test_sync_client_streaming_completion_and_embeddings(engine: EngineHandle) -> None:
    client, _ = _clients(engine)

    def run() -> tuple[list[str], list[float], list[float], list[str]]:
        with client:
            stream = client.completions.create(
                model="llama-8b",
                prompt="The fleet",
                max_tokens=5,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            pieces = [c.choices[0].text for c in stream if c.choices]
            first = client.embeddings.create(model="llama-8b", input="same text")
            again = client.embeddings.create(
                model="llama-8b", input=["same text"], encoding_format="float"
            )
            models = [m.id for m in client.models.list()]
        return pieces, first.data[0].embedding, again.data[0].embedding, models

    pieces, emb_b64, emb_float, models = await asyncio.to_thread(run)
    assert len(pieces) == 5
    assert len(emb_b64) == 4096
    assert max(abs(a - b) for a, b in zip(emb_b64, emb_float, strict=True)) < 1e-6
    assert models == ["llama-8b", "alias"]


async def test_unknown_model_is_openai_not_found(engine: EngineHandle) -> None:
    _, client = _clients(engine)
    async with client:
        try:
            await client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
        except openai.NotFoundError as exc:
            assert "does not exist" in str(exc)
        else:
            raise AssertionError("expected a 404")
