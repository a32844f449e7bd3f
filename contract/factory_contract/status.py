"""What the router reads of FleetRegions and InferenceFactories: pydantic views of the
objects the operator's CRDs define (spec and status), wire names in camelCase.

They are a reader's models, not the CRD's: unknown fields are ignored (the operator's
models, in ``factory_operator.api``, forbid them and define the schema), every field the
router can do without has a default, and a value the router cannot use reads as absent
rather than failing the whole object (a malformed jurisdiction is no jurisdiction: the
region is unknown and nothing in it is routable, fail closed). The contract test feeds them
the operator's real output (tests/unit/contract).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
)
from pydantic.alias_generators import to_camel

from .grammar import normalise_jurisdiction
from .names import API_VERSION, FACTORY_KIND, REGION_KIND

POOL_STATES = ("Running", "Progressing", "Degraded", "Blocked", "ManagedElsewhere")


def _or_none(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        return None


def _count(value: Any) -> int | None:
    # The API server stores numbers as numbers; a string or a bool is not a count.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _amount(value: Any) -> float | None:
    # A figure the router prices with: a finite number >= 0; anything else (a string, a
    # bool, NaN, a negative) reads as absent, never as a failed object.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


Count = Annotated[int | None, BeforeValidator(_count)]
Amount = Annotated[float | None, BeforeValidator(_amount)]
LenientStr = Annotated[str | None, WrapValidator(_or_none)]


class View(BaseModel):
    """Base of the views: camelCase wire names, unknown fields ignored, immutable."""

    model_config = ConfigDict(
        extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class Meta(View):
    """The part of ``metadata`` the router reads."""

    name: str = ""
    namespace: str = ""
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("namespace", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return value or ""


class RegionSpecView(View):
    """``FleetRegion.spec``: the jurisdiction, the region's entry point, its prices."""

    jurisdiction: LenientStr = None
    endpoint: LenientStr = None
    pricing: dict[str, float] = Field(default_factory=dict)

    @field_validator("jurisdiction", mode="after")
    @classmethod
    def _code(cls, value: str | None) -> str | None:
        try:
            return normalise_jurisdiction(value) if value else None
        except ValueError:
            return None

    @field_validator("pricing", mode="before")
    @classmethod
    def _prices(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return {}
        # A price the CRD would refuse (negative, NaN, inf) is no price, as a cost figure.
        prices = {str(k): _amount(v) for k, v in value.items()}
        return {k: v for k, v in prices.items() if v is not None}


class RegionView(View):
    """A FleetRegion (cluster-scoped): ``metadata.name`` is the region."""

    api_version: str = API_VERSION
    kind: str = REGION_KIND
    metadata: Meta = Field(default_factory=Meta)
    spec: RegionSpecView = Field(default_factory=RegionSpecView)

    @property
    def name(self) -> str:
        """The region's name."""
        return self.metadata.name


class EngineArgsView(View):
    """``engine.args``: the batch capacity, when set."""

    max_num_seqs: Count = None


class EngineView(View):
    """``engine`` of the factory or of one pool."""

    args: EngineArgsView = Field(default_factory=EngineArgsView)


class AcceleratorView(View):
    """``pools[].accelerator``: what a replica costs is priced by type, times count."""

    type: LenientStr = None
    count: Count = None


class ReplicasView(View):
    """``pools[].replicas``: only the ceiling matters to the router (can it wake?)."""

    max: Count = None


class PoolSpecView(View):
    """One ``spec.pools[]`` entry."""

    name: str = ""
    accelerator: AcceleratorView = Field(default_factory=AcceleratorView)
    engine: EngineView | None = None
    replicas: ReplicasView = Field(default_factory=ReplicasView)


class ModelView(View):
    """``spec.model``: the OpenAI model name the factory serves."""

    name: LenientStr = None


class AutoscalingView(View):
    """``spec.autoscaling``: present and not ``off`` means an autoscaler wakes pools."""

    policy: LenientStr = None


class FactorySpecView(View):
    """``InferenceFactory.spec`` as the router reads it."""

    model: ModelView = Field(default_factory=ModelView)
    engine: EngineView = Field(default_factory=EngineView)
    pools: list[PoolSpecView] = Field(default_factory=list)
    autoscaling: AutoscalingView | None = None


class CanaryView(View):
    """``status.pools[].canary``: the revision under test and the share of requests it gets
    (0-100). Malformed (no revision, a weight that is not a whole number in range) reads as
    no canary: the router then splits nothing."""

    revision: str = Field(min_length=1)
    weight: Annotated[int, BeforeValidator(_count), Field(ge=0, le=100)]


class PoolStatusView(View):
    """One ``status.pools[]`` entry: a pool the operator deployed (or blocked)."""

    name: str = ""
    region: LenientStr = None
    jurisdiction: LenientStr = None
    state: LenientStr = None
    canary: Annotated[CanaryView | None, WrapValidator(_or_none)] = None
    desired_replicas: Count = None
    # USD per million tokens, written by the operator's economics timer (at most once a
    # minute); absent while the pool serves no token, or without a price or a Prometheus.
    cost_per_million_tokens: Amount = None


class FactoryStatusView(View):
    """``InferenceFactory.status`` as the router reads it."""

    pools: list[PoolStatusView] = Field(default_factory=list)


class FactoryView(View):
    """An InferenceFactory as the router reads it."""

    api_version: str = API_VERSION
    kind: str = FACTORY_KIND
    metadata: Meta = Field(default_factory=Meta)
    spec: FactorySpecView = Field(default_factory=FactorySpecView)
    status: FactoryStatusView = Field(default_factory=FactoryStatusView)

    def pool_spec(self, name: str) -> PoolSpecView | None:
        """The spec of pool ``name`` (None: not in spec)."""
        return next((p for p in self.spec.pools if p.name == name), None)

    def max_num_seqs(self, pool: str) -> int | None:
        """The pool's ``engine.args.maxNumSeqs``, else the factory's; None when neither sets
        it or the pool is not in spec."""
        spec = self.pool_spec(pool)
        if spec is None:
            return None
        value = spec.engine.args.max_num_seqs if spec.engine is not None else None
        if value is None:
            value = self.spec.engine.args.max_num_seqs
        return value if value is not None and value >= 1 else None

    def wakeable(self, pool: str) -> bool:
        """An autoscaler brings the pool up on demand: ``spec.autoscaling`` (policy not
        ``off``) and the pool's ``replicas.max`` at least 1."""
        autoscaling = self.spec.autoscaling
        if autoscaling is None or autoscaling.policy == "off":
            return False
        spec = self.pool_spec(pool)
        top = spec.replicas.max if spec is not None else None
        return top is not None and top >= 1
