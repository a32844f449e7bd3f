"""The router's error model: every failure a client can see, with its HTTP status.

Tree (all carry an OpenAI-shaped body via `RouterError.body()`):

    RouterError                      (500, api_error)      base; never raised bare
    ├── BadRequest                   (400, invalid_request_error)
    │   └── InvalidResidency         (400, code=invalid_residency)   bad x-factory-residency
    ├── RequestTimeout               (408, code=request_timeout)     request not received in time
    ├── PayloadTooLarge              (413, code=payload_too_large)
    ├── HeadTooLarge                 (431, code=head_too_large)      request line + headers
    ├── Unauthenticated              (401, code=invalid_api_key)
    ├── Forbidden                    (403, permission_error)
    │   └── ResidencyDenied          (403, code=residency_denied)    narrowed to nothing
    ├── NotFound                     (404, code=not_found)           unknown path
    ├── ModelNotFound                (404, code=model_not_found)     nothing allowed serves it
    ├── NoCompliantBackend           (503, code=no_compliant_backend)
    ├── UpstreamFailed               (502, code=upstream_error)      every attempt failed
    └── UpstreamTimeout              (504, code=upstream_timeout)    stalled before 1st byte

    PolicyError (not an HTTP error): a tenant or fleet configuration that cannot be used;
    raised at start-up or on reload, where the previous good policy is kept.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PolicyError(ValueError):
    """A configuration (tenants, fleet) that cannot be used: refuse, never allow-all."""


class RouterError(Exception):
    """An error returned to the client as an OpenAI error body."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        """OpenAI's error body shape: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(RouterError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidResidency(BadRequest):
    code = "invalid_residency"


class RequestTimeout(RouterError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class HeadTooLarge(RouterError):
    status = 431
    type = "invalid_request_error"
    code = "head_too_large"


class PayloadTooLarge(RouterError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class Unauthenticated(RouterError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(RouterError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class ResidencyDenied(Forbidden):
    code = "residency_denied"


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NoCompliantBackend(RouterError):
    status = 503
    type = "service_unavailable"
    code = "no_compliant_backend"


class UpstreamFailed(RouterError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamTimeout(RouterError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
