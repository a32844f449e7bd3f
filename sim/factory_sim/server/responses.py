"""Response and stream-chunk bodies, shaped as vLLM's OpenAI server emits them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: {json}\\n\\n`` (or ``data: [DONE]\\n\\n``)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class ChatChunks:
    """chat.completion.chunk objects for one streamed request."""

    def __init__(self, model: str) -> None:
        self.id = new_id("chatcmpl")
        self.created = int(time.time())
        self.model = model

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def role(self) -> dict[str, Any]:
        return self._chunk(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )

    def token(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": {"content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        if finish_reason is not None:
            choice["stop_reason"] = None
        return self._chunk([choice])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        body = self._chunk([])
        # vLLM's usage chunk carries the three counts only (no prompt_tokens_details).
        counts = usage(prompt_tokens, completion_tokens)
        body["usage"] = {k: v for k, v in counts.items() if k != "prompt_tokens_details"}
        return body


class CompletionChunks:
    """text_completion objects for one streamed request."""

    def __init__(self, model: str) -> None:
        self.id = new_id("cmpl")
        self.created = int(time.time())
        self.model = model

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def role(self) -> None:
        return None

    def token(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return self._chunk(
            [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                    "stop_reason": None,
                }
            ]
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        body = self._chunk([])
        # vLLM's usage chunk carries the three counts only (no prompt_tokens_details).
        counts = usage(prompt_tokens, completion_tokens)
        body["usage"] = {k: v for k, v in counts.items() if k != "prompt_tokens_details"}
        return body


def chat_completion(
    model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": text,
                    # vLLM 0.32's message fields (no empty tool_calls any more;
                    # reasoning_content became reasoning).
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "reasoning": None,
                },
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
        "prompt_logprobs": None,
    }


def text_completion(
    model: str, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": None,
                "prompt_logprobs": None,
            }
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def models_list(names: list[str], max_model_len: int, created: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": names[0],
                "parent": None,
                "max_model_len": max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{name}",
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
            for name in names
        ],
    }
