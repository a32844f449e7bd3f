"""The router's error model: every failure a client can see, with its HTTP status.

Tree (all carry an OpenAI-shaped body via `RouterError.body()`):

    RouterError                      (500, api_error)      base; never raised bare
    ├── BadRequest                   (400, invalid_request_error)
    │   ├── InvalidResidency         (400, code=invalid_residency)   bad x-factory-residency
    │   └── InvalidTarget            (400, code=invalid_target)      bad x-factory-target (admin)
    ├── RequestTimeout               (408, code=request_timeout)     request not received in time
    ├── PayloadTooLarge              (413, code=payload_too_large)
    ├── HeadTooLarge                 (431, code=head_too_large)      request line + headers
    ├── Unauthenticated              (401, code=invalid_api_key)
    ├── Forbidden                    (403, permission_error)
    │   ├── ResidencyDenied          (403, code=residency_denied)    narrowed to nothing
    │   └── TargetNotAllowed         (403, code=target_not_allowed)  x-factory-target from a
    │                                tenant without `admin: true`
    ├── NotFound                     (404, code=not_found)           unknown path
    ├── TooManyRequests              (429, code=rate_limit_exceeded) tenant's concurrency limit
    │   └── QuotaExceeded            (429, type=requests|tokens)     + Retry-After, x-ratelimit-*:
    │                                a quota of the tenants file (factory_router.quota.buckets)
    ├── ModelNotFound                (404, code=model_not_found)     nothing allowed serves it
    ├── NoCompliantBackend           (503, code=no_compliant_backend)
    │   └── ScalingFromZero          (503, code=scaling_from_zero)   + Retry-After: the model's
    │                                compliant pools are starting; hold queue full or waited out
    ├── CapacityShed                 (503, code=capacity_shed)       + Retry-After: every
    │                                compliant engine is at capacity and the flow queue shed the
    │                                request (queue full, lowest class first; or its class's
    │                                longest wait passed; factory_router.flow)
    ├── UpstreamFailed               (502, code=upstream_error)      every attempt failed
    └── UpstreamTimeout              (504, code=upstream_timeout)    stalled before 1st byte

    PolicyError (not an HTTP error): a tenant or fleet configuration that cannot be used;
    raised at start-up or on reload, where the previous good policy is kept.

Whatever a client sent and a message repeats (a model name, a header value, a path) goes
through `clip()` first, and a message is cut at `MAX_MESSAGE_CHARS` whatever it holds: a
client cannot make the router write megabytes into an answer or a log line.
"""

from __future__ import annotations

from typing import Any, ClassVar

ECHO_MAX_CHARS = 128  # a client's value repeated in a message or a log line
MAX_MESSAGE_CHARS = 512  # a whole error message (values clipped or not)


def clip(value: str, limit: int = ECHO_MAX_CHARS) -> str:
    """`value` cut to `limit` characters, marked when cut (`...` and the full length)."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...({len(value)} chars)"


class PolicyError(ValueError):
    """A configuration (tenants, fleet) that cannot be used: refuse, never allow-all."""


class RouterError(Exception):
    """An error returned to the client as an OpenAI error body."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = None
    retry_after: int | None = None  # seconds: sent as `Retry-After` when set

    def __init__(self, message: str, *, param: str | None = None) -> None:
        message = clip(message, MAX_MESSAGE_CHARS)
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


class InvalidTarget(BadRequest):
    code = "invalid_target"


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


class TargetNotAllowed(Forbidden):
    code = "target_not_allowed"


class NotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(RouterError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class TooManyRequests(RouterError):
    """A tenant at its limit of concurrent requests (checked before any engine is asked)."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class NoCompliantBackend(RouterError):
    status = 503
    type = "service_unavailable"
    code = "no_compliant_backend"


class ScalingFromZero(NoCompliantBackend):
    """The model's compliant pools are at zero replicas or starting, and this request was not
    served in time: the hold queue was full, or the hold timed out. Retry after a while."""

    code = "scaling_from_zero"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CapacityShed(RouterError):
    """Every compliant engine was at its batch capacity, and the request waited in the flow
    queue (`factory_router.flow`) until it was shed: the queue was full and it was the
    request of the lowest class to go, or it waited its class's longest wait. Not the
    tenant's own limit (that is a 429): the fleet is saturated; retry after a while."""

    status = 503
    type = "service_unavailable"
    code = "capacity_shed"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamFailed(RouterError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class UpstreamTimeout(RouterError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
