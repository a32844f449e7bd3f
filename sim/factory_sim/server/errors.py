"""vLLM-shaped error responses.

vLLM's OpenAI server (>= 0.10, still in 0.12+) answers errors as
``{"error": {"message", "type", "param", "code"}}`` with ``code`` the HTTP status
(``ErrorInfo``/``ErrorResponse`` in vllm/entrypoints/openai/protocol.py). Types used:
``BadRequestError`` (400: malformed JSON, failed validation, context too long),
``NotFoundError`` (404: unknown model, "The model `x` does not exist."), and for injected
faults ``InternalServerError`` (500) / ``ServiceUnavailableError`` (503).
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web
from pydantic import ValidationError

_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    err_type = _TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return web.json_response(body, status=status)


def bad_request(message: str, param: str | None = None) -> web.Response:
    return error_response(400, message, param)


def from_validation_error(exc: ValidationError) -> web.Response:
    details = exc.errors()
    if not details:
        return bad_request(str(exc))
    first = details[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return bad_request(message, param)


def model_not_found(model: str) -> web.Response:
    return error_response(404, f"The model `{model}` does not exist.", "model")
