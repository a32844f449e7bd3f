"""Tenants, API keys and the `x-factory-residency` header: who may send data where.

Tenants file (YAML), keys stored only as SHA-256 hex digests of the API key:

    admin_keys_sha256: [<64 hex>]          # at least one; the admin key is not a tenant
    tenants:
      - name: acme-eu
        jurisdictions: [EU]                # non-empty; no wildcard (factory_contract.grammar)
        api_keys_sha256: [<64 hex>, ...]   # several during a rotation
        max_concurrent_requests: 64        # optional; else the router's default
        requests_per_minute: 600           # optional quotas (factory_router.quota): absent =
        tokens_per_minute: 200000          # no such limit; all absent = no quota at all (no
        tokens_per_day: 50000000           # Redis call for this tenant)
        priority: interactive              # optional: interactive | standard (default) | batch
        admin: false                       # optional: true lets it send x-factory-target

Fail closed everywhere: an empty, missing or unparseable file is a `PolicyError` (the
router refuses to start, or keeps the previous good table on reload); an unknown key is
401; a residency header that is malformed, uses `*` or names an unknown jurisdiction is
400; one that narrows the tenant's set to nothing is 403. The header only narrows.

`max_concurrent_requests` bounds the requests one tenant has in the router at a time, so
that one tenant cannot take every engine slot; beyond it the answer is 429 before any
engine is asked (`TenantLimits`). With a quota Redis (`--quota-redis-url`) the tenants
file's value also bounds the tenant's requests across every replica sharing it (leases in
Redis; each replica ceil(limit / replicas) while Redis is unreachable).

`requests_per_minute`, `tokens_per_minute` and `tokens_per_day` are quotas of the tenant
across every router replica (shared through Redis; `factory_router.quota`): beyond one,
429 `rate_limit_exceeded` with `Retry-After`, before any engine is asked. A request
reserves its worst case of tokens (prompt estimated from the body, plus `max_tokens`) and
its answer's usage settles it. They follow the file: a reload applies to the next request.

`priority` is the tenant's class when the compliant engines are saturated
(`factory_router.flow`): requests wait in a bounded queue, the highest class is served
first, tenants of one class in turn, and the lowest class is shed first. A reload applies
to the next request.

`admin: true` lets the tenant send `x-factory-target` (`policy.canary`): the operator's
golden prompts to one pool and revision of a rollout. Its residency still applies.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
)

from factory_contract.grammar import normalise_jurisdiction
from factory_router.policy.errors import (
    InvalidResidency,
    PolicyError,
    ResidencyDenied,
    TooManyRequests,
    Unauthenticated,
    clip,
)

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class PriorityClass(StrEnum):
    """A tenant's class under saturation (`factory_router.flow`), highest first."""

    INTERACTIVE = "interactive"
    STANDARD = "standard"
    BATCH = "batch"

    @property
    def rank(self) -> int:
        """0 for the highest class: served first, shed last."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {PriorityClass.INTERACTIVE: 0, PriorityClass.STANDARD: 1, PriorityClass.BATCH: 2}


def hash_key(api_key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class _TenantDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    jurisdictions: list[str] = Field(min_length=1)
    api_keys_sha256: list[str] = Field(min_length=1)
    max_concurrent_requests: int | None = Field(None, ge=1)
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    tokens_per_day: int | None = Field(None, ge=1)
    priority: PriorityClass = PriorityClass.STANDARD
    admin: StrictBool = False  # a true/false only: "no" must not read as anything

    @field_validator("jurisdictions")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        return [normalise_jurisdiction(c) for c in v]

    @field_validator("api_keys_sha256")
    @classmethod
    def _hashes(cls, v: list[str]) -> list[str]:
        out = [h.strip().lower() for h in v]
        for h in out:
            if not _SHA256_HEX.match(h):
                raise ValueError("api_keys_sha256 entries must be 64 hex digits (SHA-256)")
        return out


class _TenantsDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    admin_keys_sha256: list[str] = Field(min_length=1)
    tenants: list[_TenantDoc] = Field(min_length=1)

    @field_validator("admin_keys_sha256")
    @classmethod
    def _hashes(cls, v: list[str]) -> list[str]:
        return _TenantDoc._hashes(v)


@dataclass(frozen=True)
class Tenant:
    """A tenant and the jurisdictions its data may be processed in."""

    name: str
    jurisdictions: frozenset[str]
    max_concurrent_requests: int | None = None  # None: the router's default
    # Quotas across the router replicas (factory_router.quota); None: no such limit.
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    tokens_per_day: int | None = None
    priority: PriorityClass = PriorityClass.STANDARD  # its class under saturation (flow)
    admin: bool = False  # may send x-factory-target (policy.canary)


@dataclass(frozen=True)
class TenantTable:
    """Immutable lookup table; a reload builds a new one and swaps it atomically."""

    by_hash: Mapping[str, Tenant]
    admin_hashes: frozenset[str]

    @property
    def jurisdictions(self) -> frozenset[str]:
        """Every jurisdiction some tenant is allowed (part of the 'known' set)."""
        return frozenset(j for t in self.by_hash.values() for j in t.jurisdictions)

    @property
    def tenants(self) -> dict[str, Tenant]:
        return {t.name: t for t in self.by_hash.values()}

    def authenticate(self, authorization: str | None) -> Tenant:
        """Tenant for an `Authorization: Bearer <key>` header value, else 401."""
        key = bearer_token(authorization)
        tenant = self.by_hash.get(hash_key(key)) if key else None
        if tenant is None:
            raise Unauthenticated("Invalid or missing API key.")
        return tenant

    def is_admin(self, authorization: str | None) -> bool:
        key = bearer_token(authorization)
        if not key:
            return False
        digest = hash_key(key)
        return any(hmac.compare_digest(digest, h) for h in self.admin_hashes)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def parse_tenants(doc: Any) -> TenantTable:
    """Validate a parsed tenants document; PolicyError on anything doubtful."""
    if not doc:
        raise PolicyError("tenant policy is empty: refusing to serve (no allow-all)")
    try:
        parsed = _TenantsDoc.model_validate(doc)
    except ValidationError as exc:
        raise PolicyError(f"invalid tenant policy: {exc}") from exc
    by_hash: dict[str, Tenant] = {}
    names: set[str] = set()
    for t in parsed.tenants:
        if t.name in names:
            raise PolicyError(f"duplicate tenant name {t.name!r}")
        names.add(t.name)
        tenant = Tenant(
            t.name,
            frozenset(t.jurisdictions),
            t.max_concurrent_requests,
            requests_per_minute=t.requests_per_minute,
            tokens_per_minute=t.tokens_per_minute,
            tokens_per_day=t.tokens_per_day,
            priority=t.priority,
            admin=t.admin,
        )
        for h in t.api_keys_sha256:
            if h in by_hash:
                raise PolicyError(f"API key hash {h[:8]}... is assigned to two tenants")
            by_hash[h] = tenant
    admin = frozenset(parsed.admin_keys_sha256)
    if admin & by_hash.keys():
        raise PolicyError("an admin key hash is also a tenant key hash")
    return TenantTable(by_hash=by_hash, admin_hashes=admin)


def load_tenants_text(text: str) -> TenantTable:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"tenant policy is not valid YAML: {exc}") from exc
    return parse_tenants(doc)


def parse_residency(header: str | None, known: Iterable[str]) -> frozenset[str] | None:
    """Parse `x-factory-residency`: None when absent or blank (no narrowing requested).

    Comma-separated codes, case-insensitive, spaces ignored. `*`, an empty element, a
    malformed code or a code outside `known` is a 400.
    """
    if header is None:
        return None
    compact = "".join(header.split())
    if not compact:
        return None
    known_set = frozenset(known)
    codes: set[str] = set()
    for part in compact.split(","):
        if part == "*":
            raise InvalidResidency("x-factory-residency: '*' is not allowed", param="residency")
        try:
            code = normalise_jurisdiction(part)
        except ValueError:
            raise InvalidResidency(
                f"x-factory-residency: malformed element {clip(part)!r}", param="residency"
            ) from None
        if code not in known_set:
            raise InvalidResidency(
                f"x-factory-residency: unknown jurisdiction {code!r}", param="residency"
            )
        codes.add(code)
    return frozenset(codes)


def allowed_jurisdictions(
    tenant: Tenant, header: str | None, known: Iterable[str]
) -> frozenset[str]:
    """The tenant's set, narrowed by the header; never wider; empty is a 403."""
    requested = parse_residency(header, known)
    allowed = tenant.jurisdictions if requested is None else tenant.jurisdictions & requested
    if not allowed:
        raise ResidencyDenied(
            "x-factory-residency leaves no jurisdiction this tenant may use", param="residency"
        )
    return allowed


class TenantLimits:
    """Requests each tenant has in flight, against its `max_concurrent_requests` (or
    `default`; 0 = no limit). Counted by tenant name, so a reload that changes a limit
    applies at once to the requests that follow."""

    def __init__(self, default: int) -> None:
        self.default = default
        self._inflight: dict[str, int] = {}

    def limit_of(self, tenant: Tenant) -> int:
        return tenant.max_concurrent_requests or self.default

    def inflight(self, name: str) -> int:
        return self._inflight.get(name, 0)

    def acquire(self, tenant: Tenant) -> None:
        """Count one more request of `tenant`; TooManyRequests (nothing counted) at its limit."""
        limit = self.limit_of(tenant)
        held = self._inflight.get(tenant.name, 0)
        if limit and held >= limit:
            raise TooManyRequests(
                f"Tenant {tenant.name!r} has {held} requests in flight, its limit; "
                "retry when one has finished."
            )
        self._inflight[tenant.name] = held + 1

    def release(self, tenant: Tenant) -> None:
        held = self._inflight.get(tenant.name, 0) - 1
        if held > 0:
            self._inflight[tenant.name] = held
        else:
            self._inflight.pop(tenant.name, None)


_BEARER_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")


def load_endpoint_key(path: Path) -> str:
    """The key this router presents to regions reached through their `spec.endpoint`
    (another factory-router there, which knows its SHA-256 as a tenant's). One token on
    one line; an empty, short or malformed file is a `PolicyError`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read endpoint key file {path}: {exc}") from exc
    key = text.strip()
    if not _BEARER_TOKEN.match(key):
        raise PolicyError(
            f"endpoint key file {path}: expected one token of 16-512 characters "
            "(letters, digits, . _ ~ + / = -)"
        )
    return key
