"""Static fleet file (YAML): regions, optional RTT matrix, backends.

    regions:
      - {name: eu-west-1, jurisdiction: EU}
      - {name: us-east-1, jurisdiction: US}
    rtt_ms:                         # optional, symmetric; ms between region pairs
      eu-west-1: {us-east-1: 80}
    backends:
      - model: llama-3.1-8b         # the OpenAI `model` name
        pool: eu-h100               # pool name (prefix affinity works within a pool)
        region: eu-west-1           # must name a region above, else never a candidate
        url: http://127.0.0.1:8001
        factory: llama              # optional (with namespace: x-factory-target reaches it)
        namespace: inference        # optional
        revision: 3f2a9c0d1e        # optional: the per-revision series' label, the target's
        pod: llama-eu-h100-0        # optional: matches Prometheus `pod` label
        cost: 1.0                   # optional: relative cost per token
        max_num_seqs: 64            # optional: the engine's batch capacity (--max-num-seqs)
      - model: llama-3.1-8b
        pool: us-h100
        region: us-east-1
        url: https://router.us-east-1.example   # a region reached through its own router
        endpoint: true              # optional: gets the endpoint key (--endpoint-key-file)

A backend without a region, or with a region not listed (or listed without jurisdiction)
is loaded, reported in the explain output, and never routed to (fail closed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from factory_contract.grammar import normalise_jurisdiction
from factory_router.policy.errors import PolicyError
from factory_router.policy.fleet import Backend, Fleet, Region, RttMatrix, build_fleet


class _RegionDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    jurisdiction: str | None = None

    @field_validator("jurisdiction")
    @classmethod
    def _code(cls, v: str | None) -> str | None:
        return normalise_jurisdiction(v) if v else None


class _BackendDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    pool: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    region: str | None = None
    factory: str | None = None
    namespace: str | None = None
    pod: str | None = None
    revision: str | None = Field(None, min_length=1)
    cost: float = 0.0
    max_num_seqs: int | None = Field(None, ge=1)
    id: str | None = None
    endpoint: bool = False  # a region's entry point (its router), not an engine


class _FleetDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    regions: list[_RegionDoc] = Field(default_factory=list)
    rtt_ms: dict[str, dict[str, float]] = Field(default_factory=dict)
    backends: list[_BackendDoc] = Field(default_factory=list)


def fleet_from_doc(doc: Any) -> Fleet:
    """Pure: a parsed YAML document to a Fleet; PolicyError when it is invalid."""
    try:
        parsed = _FleetDoc.model_validate(doc or {})
    except ValidationError as exc:
        raise PolicyError(f"invalid backends file: {exc}") from exc
    names = [r.name for r in parsed.regions]
    if len(set(names)) != len(names):
        raise PolicyError("backends file: duplicate region names")
    backends: list[Backend] = []
    seen: set[str] = set()
    for b in parsed.backends:
        url = b.url.rstrip("/")
        bid = b.id or f"{b.pool}/{b.pod or url.split('://', 1)[1]}"
        if bid in seen:
            raise PolicyError(f"backends file: duplicate backend {bid!r}")
        seen.add(bid)
        backends.append(
            Backend(
                id=bid,
                model=b.model,
                pool=b.pool,
                region=b.region or None,
                url=url,
                factory=b.factory,
                namespace=b.namespace,
                pod=b.pod,
                cost=b.cost,
                max_num_seqs=b.max_num_seqs,
                via_endpoint=b.endpoint,
                revision=b.revision,
            )
        )
    return build_fleet(
        (Region(r.name, r.jurisdiction) for r in parsed.regions),
        backends,
        RttMatrix.from_nested(parsed.rtt_ms),
    )


def load_fleet_file(path: Path) -> Fleet:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(f"cannot read backends file {path}: {exc}") from exc
    return fleet_from_doc(doc)
