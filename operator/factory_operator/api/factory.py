"""InferenceFactory (namespaced): one model served by a set of regional pools."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from .accelerators import (
    ACCELERATOR_RESOURCES,
    NEURON_TYPE_PATTERN,
    NVIDIA_TYPES,
    TRN1_DEVICE_COUNTS,
    AcceleratorKind,
)
from .autoscaling import Autoscaling, PoolAutoscalingStatus
from .common import (
    DNS1035_LABEL,
    DNS1123_LABEL,
    JURISDICTION,
    MAX_CONDITIONS,
    MAX_LABELS,
    MAX_NAME,
    MAX_STRING,
    MAX_URI,
    RFC3339,
    ApiModel,
    Condition,
    LabelValue,
    ObjectMeta,
    cel,
    cel_rules,
)
from .engine import EngineSpec
from .rollout import (
    WAVES_COVER_POOLS_MESSAGE,
    WAVES_NAME_POOL_REGIONS_MESSAGE,
    PoolCanaryStatus,
    Rollout,
    RolloutStatus,
)

MODEL_URI = r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?)$"
MAX_POOLS = 16
_NVIDIA_LIST = ", ".join(f"'{t}'" for t in NVIDIA_TYPES)
JurisdictionCode = Annotated[str, StringConstraints(pattern=JURISDICTION, max_length=8)]


class SecretRef(ApiModel):
    """A Secret in the factory's namespace."""

    name: str = Field(description="Secret name.", max_length=253, pattern=r"^[a-z0-9][-a-z0-9.]*$")


class ModelSource(ApiModel):
    """The model to serve and where its weights come from."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!self.uri.startsWith('pvc://') || !has(self.credentialsSecretRef)",
                "a pvc:// model is mounted, it takes no credentialsSecretRef",
                ".credentialsSecretRef",
            ),
        )
    )

    name: str = Field(
        description="The OpenAI `model` name clients ask for (global across the fleet).",
        min_length=1,
        max_length=MAX_STRING,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
    )
    uri: str = Field(
        description="Weights: hf://org/name (Hugging Face repo), "
        "s3://bucket/path (streamed by vLLM's Run:ai loader), pvc://claim/path "
        "(mounted read-only).",
        max_length=MAX_URI,
        pattern=MODEL_URI,
    )
    revision: str | None = Field(
        default=None,
        description="Model revision (git ref for hf://).",
        max_length=128,
        pattern=r"^[A-Za-z0-9._/-]+$",
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with HF_TOKEN (hf://) or AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY and optionally AWS_REGION/AWS_ENDPOINT_URL (s3://). For s3:// "
        "prefer spec.serviceAccountName (no static keys); keys here are the fallback.",
    )


class CacheVolume(ApiModel):
    """Where the engine keeps downloaded weights (the Hugging Face cache) and compiled Neuron
    graphs, so that restarts and scale-ups neither download nor compile again. One of the two."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "has(self.persistentVolumeClaim) != has(self.hostPath)",
                "cache takes exactly one of persistentVolumeClaim and hostPath",
            )
        )
    )

    persistent_volume_claim: str | None = Field(
        default=None,
        description="A claim in the factory's namespace, mounted read-write by every replica: "
        "ReadWriteMany (EFS, Filestore, FSx) when replicas run on several nodes.",
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    host_path: str | None = Field(
        default=None,
        description="A directory on the node (e.g. the instance-store NVMe of GPU instances), "
        "created if missing; shared by the replicas of that node.",
        max_length=MAX_STRING,
        pattern=r"^/[^\s]*$",
    )


class Accelerator(ApiModel):
    """The accelerators each replica of a pool gets."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                f"self.kind != 'nvidia' || self.type in [{_NVIDIA_LIST}]",
                f"an nvidia accelerator type must be one of {', '.join(NVIDIA_TYPES)}",
                ".type",
            ),
            cel(
                f"self.kind != 'neuron' || self.type.matches('{NEURON_TYPE_PATTERN}')",
                "a neuron accelerator type must be inf2, trn1, trn1n, trn2, trn3...",
                ".type",
            ),
            cel(
                f"!(self.type in ['trn1', 'trn1n']) || self.count in {list(TRN1_DEVICE_COUNTS)}",
                "a trn1/trn1n replica takes 1, 4, 8 or 16 Neuron devices: the Neuron "
                "scheduler extension allocates only those sets on the Trn1 2D torus (use inf2 "
                "for other counts)",
                ".count",
            ),
        )
    )

    kind: AcceleratorKind = Field(
        description="nvidia (nvidia.com/gpu) or neuron (aws.amazon.com/neurondevice where the "
        "Neuron device plugin offers it, else aws.amazon.com/neuron)."
    )
    type: str = Field(
        description="Accelerator type: H100, L4, ... for nvidia; inf2, trn1, trn2 ... for neuron.",
        min_length=2,
        max_length=32,
    )
    count: int = Field(
        description="Accelerators per replica: GPUs, or Neuron devices.", ge=1, le=64
    )


class Replicas(ApiModel):
    """Replica bounds: the autoscaler (spec.autoscaling) keeps a pool between them; a pool
    with min == max is never autoscaled."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel("self.min <= self.max", "replicas.min must be <= replicas.max", ".min")
        )
    )

    min: int = Field(
        description="Fewest replicas. 0 lets an idle pool go to zero (autoscaling) or parks "
        "it (policy off: the pool runs min).",
        ge=0,
        le=1000,
    )
    max: int = Field(description="Most replicas the autoscaler may run.", ge=1, le=1000)


class Toleration(ApiModel):
    """A pod toleration (Kubernetes core/v1 Toleration)."""

    key: str | None = Field(default=None, description="Taint key.", max_length=MAX_STRING)
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Operator.")
    value: str | None = Field(default=None, description="Taint value.", max_length=MAX_NAME)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect; empty matches all."
    )
    toleration_seconds: int | None = Field(default=None, description="NoExecute grace.", ge=0)


Quantity = Annotated[
    str,
    StringConstraints(
        max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
    ),
]
_ACCEL_KEYS = str([*ACCELERATOR_RESOURCES, "aws.amazon.com/neuroncore"])


class PoolResources(ApiModel):
    """CPU/memory/ephemeral-storage for the engine container, over the operator's defaults
    per accelerator type (key by key). Accelerators come from `accelerator` and may not be
    set here."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                f"(!has(self.requests) || !self.requests.exists(k, k in {_ACCEL_KEYS})) && "
                f"(!has(self.limits) || !self.limits.exists(k, k in {_ACCEL_KEYS}))",
                "accelerator resources come from pool.accelerator, not pool.resources",
            )
        )
    )

    requests: dict[str, Quantity] | None = Field(
        default=None, description="Requests.", json_schema_extra={"maxProperties": 8}
    )
    limits: dict[str, Quantity] | None = Field(
        default=None, description="Limits.", json_schema_extra={"maxProperties": 8}
    )


class Pool(ApiModel):
    """A set of identical replicas in one region on one accelerator type."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.engine) || !has(self.engine.args) || "
                "!has(self.engine.args.tensorParallelSize) || self.accelerator.kind != 'nvidia' || "
                "self.engine.args.tensorParallelSize == self.accelerator.count",
                "on nvidia, engine.args.tensorParallelSize must equal accelerator.count (GPUs)",
                ".engine.args.tensorParallelSize",
            ),
            cel(
                "!has(self.engine) || !has(self.engine.args) || "
                "!has(self.engine.args.tensorParallelSize) || "
                "!(self.accelerator.type in ['inf2', 'trn1', 'trn1n']) || "
                "self.engine.args.tensorParallelSize == 2 * self.accelerator.count",
                "on inf2/trn1, engine.args.tensorParallelSize must be 2 x accelerator.count "
                "(NeuronCores)",
                ".engine.args.tensorParallelSize",
            ),
            cel(
                "self.accelerator.kind != 'neuron' || !has(self.engine) || "
                "!has(self.engine.args) || !has(self.engine.args.gpuMemoryUtilization)",
                "gpuMemoryUtilization does not apply to neuron pools",
                ".engine.args.gpuMemoryUtilization",
            ),
        )
    )

    name: str = Field(
        description="Pool name, a DNS-1035 label; <factory>-<pool> names its "
        "Deployment and Service.",
        min_length=1,
        max_length=MAX_NAME,
        pattern=DNS1035_LABEL,
    )
    region: str = Field(
        description="Name of the FleetRegion the pool runs in.",
        min_length=1,
        max_length=MAX_NAME,
        pattern=DNS1123_LABEL,
    )
    accelerator: Accelerator = Field(description="Accelerators per replica.")
    replicas: Replicas = Field(description="Replica bounds.")
    engine: EngineSpec | None = Field(
        default=None,
        description="Overrides of spec.engine for "
        "this pool (a Neuron pool needs its own settings).",
    )
    node_selector: dict[str, LabelValue] | None = Field(
        default=None,
        description="Extra node labels, added to the region's selector.",
        json_schema_extra={"maxProperties": MAX_LABELS},
    )
    tolerations: list[Toleration] | None = Field(
        default=None,
        description="Extra tolerations (the accelerator's is added).",
        max_length=MAX_LABELS,
    )
    startup_seconds: int | None = Field(
        default=None,
        description="Start-up budget of one replica (download, load, Neuron compilation) before "
        "its startup probe fails; the rollout's progress deadline is above it. Default: the "
        "operator's (30 min NVIDIA, 60 min Neuron).",
        ge=60,
        le=14_400,
    )
    resources: PoolResources | None = Field(
        default=None,
        description="CPU/memory requests and limits, key by key over the defaults per "
        "accelerator type (e.g. 8 CPUs and 64Gi per H100, 8 CPUs and 48Gi per inf2 device).",
    )


class Residency(ApiModel):
    """Where this model's traffic may be processed."""

    jurisdictions: list[JurisdictionCode] = Field(
        description="Allowed jurisdiction codes (EU, US, ...). A pool whose region is in "
        "another jurisdiction is never deployed.",
        min_length=1,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


# spec.rollout.waves against the pools: rules of the spec, which holds both; both hold while
# waves is absent (the operator's default waves). Static messages: a messageExpression naming
# the offending region (a map over the pools and waves building strings) is estimated far
# above the API server's CEL cost budget, which then refuses the whole CRD.
_WAVES_SET = "!has(self.rollout) || !has(self.rollout.waves) || "
WAVES_COVER_POOLS = cel(
    _WAVES_SET + "self.pools.all(p, self.rollout.waves.exists_one(w, p.region in w))",
    WAVES_COVER_POOLS_MESSAGE,
    ".rollout.waves",
)
WAVES_NAME_POOL_REGIONS = cel(
    _WAVES_SET + "self.rollout.waves.all(w, w.all(r, self.pools.exists(p, p.region == r)))",
    WAVES_NAME_POOL_REGIONS_MESSAGE,
    ".rollout.waves",
)


class InferenceFactorySpec(ApiModel):
    """Desired state of a factory."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            cel(
                "!has(self.engine) || !has(self.engine.args) || "
                "!has(self.engine.args.tensorParallelSize) || self.pools.all(p, "
                "p.accelerator.kind != 'nvidia' || (has(p.engine) && has(p.engine.args) && "
                "has(p.engine.args.tensorParallelSize)) || "
                "p.accelerator.count == self.engine.args.tensorParallelSize)",
                "spec.engine.args.tensorParallelSize must equal the GPU count of every nvidia pool "
                "that does not set its own",
                ".engine.args.tensorParallelSize",
            ),
            cel(
                "!self.model.uri.startsWith('s3://') || has(self.model.credentialsSecretRef) || "
                "has(self.serviceAccountName)",
                "an s3:// model needs credentialsSecretRef (AWS_* keys for vLLM's streamer) or "
                "spec.serviceAccountName (a ServiceAccount bound to a cloud role: IRSA, EKS Pod "
                "Identity, GKE Workload Identity)",
                ".model.credentialsSecretRef",
            ),
            cel(
                "!self.model.uri.startsWith('s3://') || "
                "self.pools.all(p, p.accelerator.kind != 'neuron')",
                "an s3:// model cannot be served by neuron pools: the Neuron loader reads "
                "weights from a local path, not through vLLM's S3 streamer; use hf:// or a "
                "pvc:// volume with the weights staged on it",
                ".model.uri",
            ),
            WAVES_COVER_POOLS,
            WAVES_NAME_POOL_REGIONS,
        )
    )

    model: ModelSource = Field(description="The model served.")
    service_account_name: str | None = Field(
        default=None,
        description="ServiceAccount (in the factory's namespace) the engine pods run as. Bound "
        "to a cloud role (IRSA's eks.amazonaws.com/role-arn annotation, an EKS Pod Identity "
        "association, GKE Workload Identity) it gives vLLM s3:// access without static keys. "
        "Default: the namespace's default ServiceAccount.",
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
    )
    engine: EngineSpec | None = Field(default=None, description="Engine settings for all pools.")
    cache: CacheVolume | None = Field(
        default=None,
        description="A volume for downloaded weights and compiled Neuron graphs. Default: a "
        "size-limited emptyDir per replica (lost on restart), with a matching "
        "ephemeral-storage request.",
    )
    residency: Residency | None = Field(
        default=None,
        description="Where traffic may be processed. Absent: no placement limit "
        "from the factory itself (tenant policies still apply at routing).",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Autoscaling of the pools between replicas.min and replicas.max from "
        "live load (the operator's Prometheus). Absent: not autoscaled, every pool runs "
        "replicas.min; {} (or no policy): the balanced policy.",
    )
    rollout: Rollout | None = Field(
        default=None,
        description="How a new revision (a change to what the engines run) rolls out. "
        "Absent: every pool's Deployment rolls at once, ungated; {}: canaries region by "
        "region, step by step, gated on golden prompts and live SLOs, rolled back on failure.",
    )
    pools: list[Pool] = Field(
        description="Regional pools.",
        min_length=1,
        max_length=MAX_POOLS,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **cel_rules(
                cel(
                    "self.all(p, self.exists_one(q, q.name == p.name))", "pool names must be unique"
                )
            ),
        },
    )

    @model_validator(mode="after")
    def _waves_match_pools(self) -> Self:
        """The CEL rules on rollout.waves, for specs that reach the operator some other way."""
        waves = self.rollout.waves if self.rollout else None
        if waves is None:
            return self
        regions = {pool.region for pool in self.pools}
        if any(sum(region in wave for wave in waves) != 1 for region in regions):
            raise ValueError(WAVES_COVER_POOLS_MESSAGE)
        if any(region not in regions for wave in waves for region in wave):
            raise ValueError(WAVES_NAME_POOL_REGIONS_MESSAGE)
        return self


class PoolStatus(ApiModel):
    """What one pool really runs."""

    name: str = Field(description="Pool name.", max_length=MAX_NAME)
    region: str = Field(description="FleetRegion.", max_length=MAX_NAME)
    jurisdiction: str | None = Field(
        default=None,
        description="The region's jurisdiction (absent when the region is unknown).",
        max_length=8,
    )
    state: Literal["Running", "Progressing", "Degraded", "Blocked", "ManagedElsewhere"] = Field(
        description="Running, Progressing, Degraded, Blocked (never deployed: residency, "
        "unknown region, spec) or ManagedElsewhere (--region mode)."
    )
    reason: str | None = Field(
        default=None, description="CamelCase reason when not Running.", max_length=128
    )
    desired_replicas: int = Field(description="Replicas the operator asks for.", ge=0)
    ready_replicas: int = Field(description="Ready pods of the current Deployment.", ge=0)
    endpoint: str | None = Field(
        default=None, description="In-cluster URL of the pool's Service.", max_length=MAX_URI
    )
    revision: str | None = Field(
        default=None,
        description="Short hash of image, model uri "
        "and revision, engine args; the pods' revision label.",
        max_length=32,
    )
    autoscaling: PoolAutoscalingStatus | None = Field(
        default=None,
        description="The autoscaler's desired and current replicas, its reason, and what it "
        "remembers between decisions.",
    )
    canary: PoolCanaryStatus | None = Field(
        default=None,
        description="The pool's canary while a rollout runs one (the router splits the pool's "
        "traffic by its weight).",
    )
    cost_per_million_tokens: float | None = Field(
        default=None,
        description="USD per million tokens (prompt + generated) over the last 5 minutes, "
        "every ready replica billed at its region's spec.pricing for its accelerators; "
        "absent while the pool serves no token, or without a price or a Prometheus "
        "(--prometheus-url). Refreshed at most once a minute.",
        ge=0,
    )


class InferenceFactoryStatus(ApiModel):
    """Observed state of a factory."""

    observed_generation: int | None = Field(default=None, description="Generation observed.", ge=0)
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Progressing, Degraded; CapacityPressure once the autoscaler runs "
        "(True: a jurisdiction's pools are all at their ceiling and still short).",
        max_length=MAX_CONDITIONS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    pools: list[PoolStatus] = Field(
        default_factory=list, description="Per-pool state.", max_length=MAX_POOLS
    )
    ready_pools: int = Field(default=0, description="Pools with all desired replicas ready.", ge=0)
    total_pools: int = Field(default=0, description="Pools in spec.", ge=0)
    pools_ready: str = Field(
        default="0/0", description="readyPools/totalPools, for kubectl.", max_length=16
    )
    jurisdictions: str = Field(
        default="",
        description="Jurisdictions where pools run, comma-separated, for kubectl.",
        max_length=MAX_STRING,
    )
    costs: str = Field(
        default="",
        description="Each pool's costPerMillionTokens (USD), e.g. 'dub=0.42,fra=0.51', for "
        "kubectl.",
        max_length=MAX_STRING,
    )
    rollout: RolloutStatus | None = Field(
        default=None, description="The factory's revision and where its rollout is."
    )
    costs_time: str | None = Field(
        default=None,
        description="When the pools' costPerMillionTokens were computed (RFC 3339).",
        json_schema_extra={"format": RFC3339},
        max_length=64,
    )


class InferenceFactory(ApiModel):
    """An InferenceFactory object as read from the API server."""

    api_version: Literal["inference.factory.dev/v1alpha1"] = Field(
        default="inference.factory.dev/v1alpha1", description="API version."
    )
    kind: Literal["InferenceFactory"] = Field(default="InferenceFactory", description="Kind.")
    metadata: ObjectMeta = Field(description="Object metadata.")
    spec: InferenceFactorySpec = Field(description="Desired state.")
    status: InferenceFactoryStatus | None = Field(default=None, description="Observed state.")
