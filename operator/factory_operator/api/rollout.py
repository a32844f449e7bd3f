"""``spec.rollout`` and ``status.rollout``: canary rollouts of a factory's revisions.

A *revision* of a factory is a hash of what its engines run (every pool's image, model uri
and revision, engine args and environment: ``plan.engine.revision_hash`` per pool, then
``plan.rollout.factory_revision`` over the pools). A change of revision goes region by
region (``waves``), each pool of a wave running the new revision as a canary next to the
stable one, through ``steps`` of increasing traffic weight, each step judged by the gates
(golden prompts, live SLOs canary against stable) before the next. Pass: promoted. Fail:
rolled back (traffic back to stable at once, canary removed) and the revision is not tried
again until the spec changes. docs/rollouts.md shows it as an operator sees it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from .common import (
    DNS1123_LABEL,
    MAX_NAME,
    MAX_STRING,
    RFC3339,
    ApiModel,
    LabelValue,
    cel,
    cel_rules,
)

MAX_STEPS = 8
MAX_WAVES = 16
MAX_WAVE_REGIONS = 16
MAX_GOLDEN_PROMPTS = 16
MAX_PROMPT = 8192
MAX_GATE_RESULTS = 32
REVISION = r"^[a-z0-9]{1,32}$"

DEFAULT_STEPS: tuple[tuple[int, int], ...] = ((10, 60), (50, 60))  # (weight %, pauseSeconds)

# Bounded items (the API server's CEL cost estimate needs a maxLength on every string and a
# maxItems on every list, items included). Typed here rather than through
# json_schema_extra={"items": ...}, which would replace the items' schema and drop its type.
RegionName = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_NAME, pattern=DNS1123_LABEL)
]
Wave = Annotated[
    list[RegionName],
    Field(
        min_length=1,
        max_length=MAX_WAVE_REGIONS,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    ),
]
Needle = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class RolloutStep(ApiModel):
    """One canary step: its traffic weight, its size, how long it runs before it is judged."""

    weight: int = Field(
        description="Percent of each canary pool's traffic sent to the new revision, 1-99 (the "
        "router splits by it; a tenant's residency is never affected). After the last step "
        "the wave is promoted: 100 is not a step.",
        ge=1,
        le=99,
    )
    replicas: int | None = Field(
        default=None,
        description="Canary replicas per pool at this step. Default: the stable "
        "replicas x weight / 100, rounded up, at least 1.",
        ge=1,
        le=64,
    )
    pause_seconds: int = Field(
        default=60,
        description="How long the step runs, once its canary replicas are ready, before its "
        "gates are judged; also the window of the SLO comparison. Default: 60.",
        ge=10,
        le=86400,
    )


class AnswerChecks(ApiModel):
    """Checks on one golden prompt's answer; every check given must pass."""

    equals: str | None = Field(
        default=None, description="The answer, exactly.", max_length=MAX_PROMPT
    )
    regex: str | None = Field(
        default=None,
        description="A regular expression (Python syntax) the answer must match somewhere.",
        max_length=1024,
    )
    json_schema: dict[str, Any] | None = Field(
        default=None,
        description="A JSON Schema (draft 2020-12) the answer, parsed as JSON, must satisfy.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    max_length: int | None = Field(
        default=None, description="Most characters the answer may have.", ge=0, le=1_000_000
    )
    must_not_contain: list[Needle] = Field(
        default_factory=list,
        description="Strings the answer must not contain (case-sensitive).",
        max_length=32,
    )
    similar_to_stable: float | None = Field(
        default=None,
        description="Least similarity (0-1, difflib's ratio on the characters) between the "
        "canary's answer and the stable revision's answer to the same prompt.",
        ge=0,
        le=1,
    )


class ChatMessage(ApiModel):
    """One message of a golden prompt's conversation."""

    role: Literal["system", "user", "assistant"] = Field(description="Who says it.")
    content: str = Field(description="What is said.", max_length=MAX_PROMPT)


GOLDEN_PROMPT_XOR = "a golden prompt takes either prompt or messages, not both"


class GoldenPrompt(ApiModel):
    """A prompt every canary must keep answering well."""

    # Also the schema of the ConfigMap's prompts (goldenPromptsFrom), which no CEL rule sees:
    # the model checks what the CRD's rule checks. (A comment: the docstring is the CRD's
    # description, shown by kubectl explain.)

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel("has(self.prompt) != has(self.messages)", GOLDEN_PROMPT_XOR)
        )
    )

    name: str = Field(
        description="Name, unique among the goldenPrompts; in events and gate results.",
        min_length=1,
        max_length=MAX_NAME,
    )
    prompt: str | None = Field(
        default=None,
        description="One user message (or messages, not both).",
        min_length=1,
        max_length=MAX_PROMPT,
    )
    messages: list[ChatMessage] | None = Field(
        default=None,
        description="A conversation for chat completions (or prompt, not both).",
        min_length=1,
        max_length=16,
    )
    max_tokens: int = Field(
        default=64, description="max_tokens of the request. Default: 64.", ge=1, le=4096
    )
    checks: AnswerChecks = Field(description="What the answer must satisfy.")

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> Self:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(GOLDEN_PROMPT_XOR)
        return self


class ConfigMapPrompts(ApiModel):
    """Golden prompts kept in a ConfigMap of the factory's namespace."""

    name: str = Field(description="ConfigMap name.", max_length=253)
    key: str = Field(
        default="golden-prompts.yaml",
        description="Data key holding a YAML list of golden prompts (the goldenPrompts schema). "
        "Default: golden-prompts.yaml.",
        max_length=253,
    )


class SloGates(ApiModel):
    """Live SLOs, canary against stable over one window: what clients saw, from the router."""

    enabled: bool = Field(
        default=True,
        description="Judge the SLOs (needs the operator's --prometheus-url); false: only "
        "the golden prompts judge. Default: true.",
    )
    max_error_ratio_increase: float = Field(
        default=0.01,
        description="Most the canary's error ratio (failed upstream attempts / attempts) may "
        "exceed the stable's. Default: 0.01.",
        ge=0,
        le=1,
    )
    max_ttft_p95_ratio: float = Field(
        default=1.5,
        description="Most the canary's time-to-first-token p95 may be, as a multiple of the "
        "stable's. Default: 1.5.",
        ge=1,
        le=100,
    )
    max_itl_p95_ratio: float = Field(
        default=1.5,
        description="Most the canary's inter-token latency p95 may be, as a multiple of the "
        "stable's. Default: 1.5.",
        ge=1,
        le=100,
    )
    min_throughput_ratio: float = Field(
        default=0.7,
        description="Least the canary's generation throughput (tokens per second of "
        "streaming, per request: what a replica does with each request it is given) may be, "
        "as a fraction of the stable's. Default: 0.7.",
        ge=0,
        le=1,
    )
    min_requests: int = Field(
        default=20,
        description="Fewest canary requests in the window for the SLOs to be judged; fewer: "
        "the step waits (inconclusive), and rolls back at progressDeadlineSeconds. Default: 20.",
        ge=1,
        le=1_000_000,
    )


class RolloutGates(ApiModel):
    """What each step is judged on."""

    golden_prompts: list[GoldenPrompt] = Field(
        default_factory=list,
        description="Prompts sent to every canary pool (and, for similarToStable, to its "
        "stable revision) through the router with its admin key.",
        max_length=MAX_GOLDEN_PROMPTS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    golden_prompts_from: ConfigMapPrompts | None = Field(
        default=None, description="More golden prompts, from a ConfigMap."
    )
    slo: SloGates = Field(default_factory=SloGates, description="Live SLOs, canary against stable.")


# Rules of spec.rollout.waves against spec.pools: CEL rules of the spec (api/factory.py).
WAVES_COVER_POOLS_MESSAGE = (
    "rollout.waves must have every pool's region in exactly one wave: add a missing region "
    "to a wave, keep a repeated region in one wave only"
)
WAVES_NAME_POOL_REGIONS_MESSAGE = (
    "rollout.waves names a region no pool runs in: remove it from the waves, or add a pool "
    "in that region"
)
STEP_WEIGHTS_DIFFERENT = "rollout.steps: each step needs a different weight"
STEP_WEIGHTS_INCREASE = "rollout.steps: list the steps by increasing weight"


class Rollout(ApiModel):
    """How a new revision rolls out."""

    # isSorted() is the Kubernetes CEL list library's (not standard CEL): the unit tests give
    # cel-python the same function; tests/integration/operator/test_validation.py runs the rule
    # on a real API server. isSorted() allows equal neighbours: the rule before refuses them.
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.steps) || "
                "self.steps.all(s, self.steps.exists_one(t, t.weight == s.weight))",
                STEP_WEIGHTS_DIFFERENT,
                ".steps",
            ),
            cel(
                "!has(self.steps) || self.steps.map(s, s.weight).isSorted()",
                STEP_WEIGHTS_INCREASE,
                ".steps",
            ),
        )
    )

    strategy: Literal["Canary", "Rolling"] = Field(
        default="Canary",
        description="Canary: region by region, step by step, gated; Rolling: every pool's "
        "Deployment rolls at once (the behaviour without spec.rollout). Default: Canary.",
    )
    waves: list[Wave] | None = Field(
        default=None,
        description="Regions in rollout order, wave by wave: each wave a list of regions, "
        "every region of the factory's pools in exactly one wave, e.g. [[eu-west-1], "
        "[eu-central-1, us-east-1]]. Default: the first pool's region alone (the canary "
        "region), then the other regions in spec order, waveSize at a time.",
        min_length=1,
        max_length=MAX_WAVES,
    )
    wave_size: int = Field(
        default=2,
        description="Regions per wave after the first, when waves is not given. Default: 2.",
        ge=1,
        le=16,
    )
    steps: list[RolloutStep] | None = Field(
        default=None,
        description="Canary steps, weights increasing. Default: weight 10 for 60 s, then "
        "weight 50 for 60 s; after the last step the wave is promoted.",
        min_length=1,
        max_length=MAX_STEPS,
    )
    progress_deadline_seconds: int = Field(
        default=600,
        description="Longest a step may wait for its canary to be ready or its gates to be "
        "conclusive; beyond it the revision is rolled back. Default: 600.",
        ge=60,
        le=86400,
    )
    paused: bool = Field(
        default=False,
        description="Hold the rollout where it is (traffic split kept, no step judged); "
        "false (the default) resumes it, restarting the current step's clock.",
    )
    promote: str | None = Field(
        default=None,
        description="Set to the revision of status.rollout.revision to promote it "
        "everywhere at once, skipping the remaining steps and gates (a revision that no "
        "longer matches is ignored).",
        pattern=REVISION,
        max_length=32,
    )
    gates: RolloutGates = Field(
        default_factory=RolloutGates,
        description="What each step is judged on. Default: the SLOs, no golden prompt.",
    )

    @model_validator(mode="after")
    def _steps_increase(self) -> Self:
        weights = [step.weight for step in self.steps or ()]
        if len(set(weights)) != len(weights):
            raise ValueError(STEP_WEIGHTS_DIFFERENT)
        if weights != sorted(weights):
            raise ValueError(STEP_WEIGHTS_INCREASE)
        return self

    def step_list(self) -> list[RolloutStep]:
        """The steps, defaults applied."""
        if self.steps:
            return list(self.steps)
        return [RolloutStep(weight=w, pause_seconds=p) for w, p in DEFAULT_STEPS]


RolloutPhase = Literal["Stable", "Progressing", "Paused", "Promoting", "RolledBack"]


class GateResult(ApiModel):
    """One check of one pool's canary at one step."""

    check: str = Field(
        description="ErrorRatio, TtftP95, ItlP95, Throughput, GoldenPrompt, CanaryReady or "
        "Deadline.",
        max_length=64,
    )
    pool: str = Field(description="The pool whose canary was judged.", max_length=MAX_NAME)
    passed: bool | None = Field(
        default=None, description="True, false, or absent while it cannot be judged."
    )
    value: float | None = Field(default=None, description="The canary's figure.")
    baseline: float | None = Field(default=None, description="The stable revision's figure.")
    threshold: float | None = Field(default=None, description="The limit applied.")
    message: str = Field(default="", description="The check, in words.", max_length=1024)


class RolloutStatus(ApiModel):
    """Where the factory's rollout is."""

    revision: str | None = Field(
        default=None, description="The revision the spec asks for.", max_length=32
    )
    stable_revision: str | None = Field(
        default=None, description="The last revision fully rolled out.", max_length=32
    )
    failed_revision: str | None = Field(
        default=None,
        description="A revision rolled back; not tried again until the spec changes.",
        max_length=32,
    )
    phase: RolloutPhase = Field(
        default="Stable",
        description="Stable, Progressing, Paused, Promoting (the stable Deployments roll to "
        "the new revision) or RolledBack.",
    )
    wave: int = Field(
        default=0, description="Index (from 0) of the wave in progress in the waves.", ge=0
    )
    step: int = Field(
        default=0, description="Index (from 0) of the step in progress in the steps.", ge=0
    )
    regions: list[LabelValue] = Field(
        default_factory=list,
        description="The regions of the wave in progress.",
        max_length=MAX_WAVE_REGIONS,
    )
    step_entered_at: str | None = Field(
        default=None,
        description="When the rollout entered the step in progress (its progress deadline "
        "counts from here).",
        json_schema_extra={"format": RFC3339},
        max_length=64,
    )
    step_started_at: str | None = Field(
        default=None,
        description="When the step's canaries were all ready (its gates are judged "
        "pauseSeconds later); absent while they start.",
        json_schema_extra={"format": RFC3339},
        max_length=64,
    )
    started_at: str | None = Field(
        default=None,
        description="When the rollout of this revision started.",
        json_schema_extra={"format": RFC3339},
        max_length=64,
    )
    message: str = Field(default="", description="What is happening, in words.", max_length=4096)
    gates: list[GateResult] = Field(
        default_factory=list,
        description="The last judgement of the step's gates.",
        max_length=MAX_GATE_RESULTS,
    )
    summary: str = Field(
        default="",
        description="What kubectl's Rollout column shows: the phase alone when no rollout "
        "runs, else where it is, e.g. 'wave 1/2 step 2/2 weight 50'.",
        max_length=MAX_STRING,
    )


class PoolCanaryStatus(ApiModel):
    """A pool's canary: what the router splits the pool's traffic by."""

    revision: str = Field(description="The canary pods' revision label.", max_length=32)
    weight: int = Field(
        description="Percent of the pool's traffic for the canary (0: none, e.g. while it "
        "starts or is removed).",
        ge=0,
        le=100,
    )
    desired_replicas: int = Field(description="Canary replicas asked for.", ge=0)
    ready_replicas: int = Field(default=0, description="Ready canary pods.", ge=0)
