"""Children of one pool as plain dicts ready for server-side apply.

Deployment, Service, PodDisruptionBudget and (when its CRD exists) a PodMonitor, all named
``<factory>-<pool>``, labelled and owned by the factory (garbage collection removes them
with it). Where the pods go and what they request comes from ``placement``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from factory_contract import metrics, names
from factory_operator.api import EngineSpec, InferenceFactory, Pool
from factory_operator.api.accelerators import RESOURCE_BY_KIND

from .engine import MODEL_MOUNT, NEURON_CACHE, EngineProfile
from .placement import Placement, default_requests, topology_spread
from .settings import PROGRESS_MARGIN_SECONDS, OperatorSettings

MANAGED_BY = names.MANAGED_BY
SERVICE_PORT = 8000
DO_NOT_DISRUPT = "karpenter.sh/do-not-disrupt"
Manifest = dict[str, Any]


@dataclass(frozen=True)
class PoolContext:
    """Everything needed to render one pool's children."""

    factory: InferenceFactory
    pool: Pool
    engine: EngineSpec
    profile: EngineProfile
    args: list[str]
    revision: str
    jurisdiction: str
    region_selector: dict[str, str]
    settings: OperatorSettings
    placement: Placement

    @property
    def name(self) -> str:
        """``<factory>-<pool>``."""
        return names.pool_object_name(self.factory.metadata.name, self.pool.name)

    @property
    def namespace(self) -> str:
        """The factory's namespace."""
        return self.factory.metadata.namespace or "default"


def label_key(settings: OperatorSettings, key: str) -> str:
    """``<annotation prefix>/<key>``."""
    return names.prefixed(key, settings.annotation_prefix)


def selector_labels(ctx: PoolContext) -> dict[str, str]:
    """Immutable selector: factory + pool (never the revision)."""
    return {
        label_key(ctx.settings, names.FACTORY_LABEL): ctx.factory.metadata.name,
        label_key(ctx.settings, names.POOL_LABEL): ctx.pool.name,
    }


def pool_labels(ctx: PoolContext) -> dict[str, str]:
    """All labels of a pool's children and pods."""
    return {
        names.MANAGED_BY_LABEL: MANAGED_BY,
        "app.kubernetes.io/name": "vllm",
        "app.kubernetes.io/instance": ctx.name,
        **selector_labels(ctx),
        label_key(ctx.settings, names.REGION_LABEL): ctx.pool.region,
        label_key(ctx.settings, names.JURISDICTION_LABEL): ctx.jurisdiction,
        label_key(ctx.settings, names.REVISION_LABEL): ctx.revision,
    }


def owner_reference(factory: InferenceFactory) -> dict[str, Any]:
    """Controller owner reference to the factory."""
    return {
        "apiVersion": factory.api_version,
        "kind": factory.kind,
        "name": factory.metadata.name,
        "uid": factory.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(ctx: PoolContext) -> dict[str, Any]:
    return {
        "name": ctx.name,
        "namespace": ctx.namespace,
        "labels": pool_labels(ctx),
        "ownerReferences": [owner_reference(ctx.factory)],
    }


ENGINE_READY_TIMEOUT_ENV = "VLLM_ENGINE_READY_TIMEOUT_S"


def _env(ctx: PoolContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, envFrom) for the engine container."""
    model = ctx.factory.spec.model
    env: list[dict[str, Any]] = []
    env_from: list[dict[str, Any]] = []
    secret = model.credentials_secret_ref
    if secret is not None and model.uri.startswith("hf://"):
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret.name, "key": "HF_TOKEN"}},
            }
        )
    elif secret is not None and model.uri.startswith("s3://"):
        # The Run:ai streamer reads the standard AWS_* variables (docs.vllm.ai "Run:ai Model
        # Streamer"); the Secret carries them under those names.
        env_from.append({"secretRef": {"name": secret.name}})
    if ctx.profile.neuron == "nxdi":
        env.append(
            {
                "name": "NEURON_COMPILED_ARTIFACTS",
                "value": f"{NEURON_CACHE}/compiled/{ctx.revision}",
            }
        )
        env.append({"name": "NEURON_COMPILE_CACHE_URL", "value": f"{NEURON_CACHE}/neuronx-cc"})
    elif ctx.profile.neuron == "plugin":
        env.append({"name": "VLLM_CACHE_ROOT", "value": f"{NEURON_CACHE}/vllm"})
    own = [{"name": e.name, "value": e.value} for e in (ctx.engine.env or [])]
    if not any(e["name"] == ENGINE_READY_TIMEOUT_ENV for e in own):
        # vLLM gives up on its engine process after VLLM_ENGINE_READY_TIMEOUT_S (600 s by
        # default, vllm/envs.py), while a Neuron compile or a large model's load may take the
        # whole startup budget: wait as long as the startup probe does.
        env.append({"name": ENGINE_READY_TIMEOUT_ENV, "value": str(_startup_budget(ctx))})
    return env + own, env_from


def _cache_source(ctx: PoolContext) -> dict[str, Any]:
    """The cache volume's source: the factory's spec.cache, else a size-limited emptyDir."""
    cache = ctx.factory.spec.cache
    if cache is not None and cache.persistent_volume_claim:
        return {"persistentVolumeClaim": {"claimName": cache.persistent_volume_claim}}
    if cache is not None and cache.host_path:
        return {"hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}}
    return {"emptyDir": {"sizeLimit": f"{ctx.settings.model_cache_gi}Gi"}}


def _ephemeral_gi(ctx: PoolContext) -> int:
    """Node disk the pod's emptyDirs may fill (none when spec.cache holds the caches)."""
    if ctx.factory.spec.cache is not None:
        return 0
    neuron = ctx.settings.neuron_cache_gi if ctx.profile.neuron is not None else 0
    return ctx.settings.model_cache_gi + neuron


def _volumes(ctx: PoolContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts): /dev/shm, the weights cache, the model PVC, the Neuron cache."""
    volumes: list[dict[str, Any]] = [
        # vLLM's Kubernetes guide mounts a memory-backed /dev/shm: tensor-parallel workers
        # exchange tensors through shared memory and the container default is 64Mi.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": ctx.settings.shm_size}},
        {"name": "cache", **_cache_source(ctx)},
    ]
    shm = "/dev/shm"  # noqa: S108 (a mount point, not a temp file)
    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": shm},
        {"name": "cache", "mountPath": "/root/.cache"},
    ]
    uri = ctx.factory.spec.model.uri
    if uri.startswith("pvc://"):
        claim = uri.removeprefix("pvc://").split("/", 1)[0]
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True})
    if ctx.profile.neuron is not None and ctx.factory.spec.cache is not None:
        # Compiled graphs beside the weights, keyed by revision (NEURON_COMPILED_ARTIFACTS).
        mounts.append({"name": "cache", "mountPath": NEURON_CACHE, "subPath": "neuron"})
    elif ctx.profile.neuron is not None:
        size = f"{ctx.settings.neuron_cache_gi}Gi"
        volumes.append({"name": "neuron-cache", "emptyDir": {"sizeLimit": size}})
        mounts.append({"name": "neuron-cache", "mountPath": NEURON_CACHE})
    return volumes, mounts


def _startup_budget(ctx: PoolContext) -> int:
    if ctx.pool.startup_seconds is not None:
        return ctx.pool.startup_seconds
    return (
        ctx.settings.neuron_startup_seconds
        if ctx.profile.neuron
        else ctx.settings.nvidia_startup_seconds
    )


def _probes(ctx: PoolContext) -> dict[str, Any]:
    get = {"path": ctx.profile.health_path, "port": "http"}
    ceiling = _startup_budget(ctx)
    return {
        # Model download + load (+ Neuron compilation) happen before /health answers.
        "startupProbe": {
            "httpGet": get,
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": max(1, ceiling // 10),
        },
        "readinessProbe": {
            "httpGet": get,
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": get,
            "periodSeconds": 15,
            "timeoutSeconds": 5,
            "failureThreshold": 4,
        },
    }


def _resources(ctx: PoolContext) -> dict[str, Any]:
    key = ctx.placement.resource
    count = str(ctx.pool.accelerator.count)
    extra = ctx.pool.resources
    requests = default_requests(ctx.pool.accelerator)
    if disk := _ephemeral_gi(ctx):
        requests["ephemeral-storage"] = f"{disk}Gi"
    if extra is not None and extra.requests:
        requests |= extra.requests
    limits = dict(extra.limits or {}) if extra else {}
    return {"requests": {**requests, key: count}, "limits": {**limits, key: count}}


def _tolerations(ctx: PoolContext) -> list[dict[str, Any]]:
    # Taint values differ by cloud (GKE nvidia.com/gpu=present, Karpenter =true, EKS managed
    # groups none): tolerating the resource key with Exists covers all of them.
    key = RESOURCE_BY_KIND[ctx.pool.accelerator.kind]
    own = [t.to_wire() for t in (ctx.pool.tolerations or [])]
    return [{"key": key, "operator": "Exists"}, *own]


def deployment(ctx: PoolContext) -> Manifest:
    """The pool's vLLM Deployment."""
    env, env_from = _env(ctx)
    volumes, mounts = _volumes(ctx)
    container: dict[str, Any] = {
        "name": "vllm",
        "image": ctx.profile.image,
        # vLLM's CLI entry point (`python3 -m vllm.entrypoints.openai.api_server` is
        # deprecated in 0.32); every image the operator deploys ships it.
        "command": ["vllm", "serve"],
        "args": ctx.args,
        "ports": [{"name": "http", "containerPort": ctx.profile.port, "protocol": "TCP"}],
        "env": env,
        "resources": _resources(ctx),
        "volumeMounts": mounts,
        **_probes(ctx),
        # Sleep first so Service endpoints drop the pod before vLLM gets SIGTERM; vLLM then
        # drains in-flight streams within the grace period.
        "lifecycle": {"preStop": {"sleep": {"seconds": ctx.settings.prestop_sleep_seconds}}},
        # The vLLM and Neuron DLC images run as root, so runAsNonRoot cannot be set; the rest
        # of the restricted profile applies. The root filesystem stays writable (caches).
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if env_from:
        container["envFrom"] = env_from
    node_selector = {**ctx.region_selector, **(ctx.pool.node_selector or {})}
    labels = pool_labels(ctx)
    template_meta: dict[str, Any] = {"labels": labels}
    if ctx.placement.karpenter and ctx.settings.karpenter_do_not_disrupt:
        # Karpenter's consolidation and drift would otherwise evict a replica whose restart
        # costs a model load (minutes) just to repack nodes; kubectl drain, expiry and the
        # NodePool's terminationGracePeriod still move it.
        template_meta["annotations"] = {DO_NOT_DISRUPT: "true"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(ctx),
        "spec": {
            "replicas": ctx.pool.replicas.min,
            "selector": {"matchLabels": selector_labels(ctx)},
            # Above the startup budget: a model that loads within it is a normal rollout, not
            # ProgressDeadlineExceeded (which Argo CD and kubectl rollout status report).
            "progressDeadlineSeconds": _startup_budget(ctx) + PROGRESS_MARGIN_SECONDS,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": _rolling_update(ctx)},
            "template": {
                "metadata": template_meta,
                "spec": {
                    "containers": [container],
                    "nodeSelector": node_selector,
                    **_type_affinity(ctx),
                    **_scheduler(ctx),
                    "topologySpreadConstraints": topology_spread(selector_labels(ctx)),
                    "tolerations": _tolerations(ctx),
                    "volumes": volumes,
                    "terminationGracePeriodSeconds": ctx.settings.termination_grace_seconds,
                    "enableServiceLinks": False,
                    **_service_account(ctx),
                    # The API token is not needed: IRSA and EKS Pod Identity project their own
                    # tokens (their webhooks add the volume), GKE Workload Identity uses the
                    # metadata server.
                    "automountServiceAccountToken": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                },
            },
        },
    }


def _rolling_update(ctx: PoolContext) -> dict[str, int]:
    return rolling_update(ctx.pool.replicas.min, ctx.pool.replicas.max)


def rolling_update(replicas: int, ceiling: int) -> dict[str, int]:
    """Replace pods one at a time, and never below the replicas the pool runs when its spec
    allows one more (`replicas` below `ceiling`, replicas.max): a surge pod first, an old
    pod removed only once the new one is Ready (maxSurge 1, maxUnavailable 0). With maxSurge
    0 a one-replica pool served nothing from the old pod's end to the new one's model load,
    minutes on a real cluster (issue 18). A pool at its ceiling keeps within its
    accelerators: one pod at a time without a surge pod, so it runs one replica short while
    each new pod loads (a one-replica pool at its ceiling serves nothing then: give it a
    higher max, or another pool of the factory to take its traffic). Where the spec allows
    a surge pod but the region has no free accelerator (nodes or quota), the surge pod stays
    Pending and every old pod keeps serving: the roll waits for room (a node, Karpenter or
    the cluster autoscaler) and reports ProgressDeadlineExceeded after
    progressDeadlineSeconds; serving is kept over rolling. Whoever changes a Deployment's
    replicas (the autoscaler) recomputes this with the new count."""
    if ceiling > replicas:
        return {"maxSurge": 1, "maxUnavailable": 0}
    return {"maxSurge": 0, "maxUnavailable": 1}


def _service_account(ctx: PoolContext) -> dict[str, str]:
    name = ctx.factory.spec.service_account_name
    return {"serviceAccountName": name} if name else {}


def _scheduler(ctx: PoolContext) -> dict[str, str]:
    """A pod with more than one Neuron device needs the Neuron scheduler extension: it picks
    directly connected devices (the default scheduler would take any free ones)."""
    name = ctx.settings.neuron_scheduler_name
    if ctx.pool.accelerator.kind == "neuron" and ctx.pool.accelerator.count > 1 and name:
        return {"schedulerName": name}
    return {}


def _type_affinity(ctx: PoolContext) -> dict[str, object]:
    """Node affinity to the pool's accelerator type (H100 vs L4, inf2 vs trn1), on the
    label of the region's node-labelling scheme."""
    required = ctx.placement.requirement
    if required is None:
        return {}
    key, values = required
    term = {"matchExpressions": [{"key": key, "operator": "In", "values": list(values)}]}
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
            }
        }
    }


def service(ctx: PoolContext) -> Manifest:
    """ClusterIP Service on 8000 for every pool, whatever port the engine uses."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ctx),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(ctx),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def pod_disruption_budget(ctx: PoolContext) -> Manifest:
    """At most one pod of the pool evicted at a time (drains, upgrades). maxUnavailable, not
    minAvailable, so a pool of one replica never blocks its node's drain; a pod that is not
    ready (crash-looping, still loading) may always be evicted."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(ctx),
        "spec": {
            "maxUnavailable": 1,
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
            "selector": {"matchLabels": selector_labels(ctx)},
        },
    }


def pod_monitor(ctx: PoolContext) -> Manifest:
    """Prometheus Operator PodMonitor with the project's label set (the contract's)."""
    relabel = metrics.podmonitor_relabelings(ctx.settings.annotation_prefix)
    metadata = _metadata(ctx)
    # Prometheus Operator selects monitors by label (kube-prometheus-stack: release=<name>).
    metadata["labels"] = {**ctx.settings.podmonitor_labels, **metadata["labels"]}
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": selector_labels(ctx)},
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "relabelings": relabel}],
        },
    }


def service_endpoint(ctx: PoolContext) -> str:
    """In-cluster base URL of the pool."""
    return f"http://{ctx.name}.{ctx.namespace}.svc:{SERVICE_PORT}/v1"


def canary_deployment(ctx: PoolContext, replicas: int) -> Manifest:
    """The pool's canary: the Deployment the pool would run at its new revision, named
    ``<factory>-<pool>-canary``, its pods and selector also labelled track=canary (so the
    stable Deployment's ReplicaSets never count them, and the router tells them apart by
    their revision label). The pool's Service, PodDisruptionBudget and PodMonitor select
    factory + pool: they reach the canary pods too."""
    manifest = deployment(ctx)
    track = {label_key(ctx.settings, names.TRACK_LABEL): names.CANARY_TRACK}
    name = names.canary_object_name(ctx.factory.metadata.name, ctx.pool.name)
    manifest["metadata"]["name"] = name
    manifest["metadata"]["labels"] = {**manifest["metadata"]["labels"], **track}
    spec = manifest["spec"]
    spec["replicas"] = replicas
    spec["selector"] = {"matchLabels": {**spec["selector"]["matchLabels"], **track}}
    spec["template"]["metadata"]["labels"] = {**spec["template"]["metadata"]["labels"], **track}
    # A canary grows by its steps' counts: a surge pod first, never one short.
    spec["strategy"]["rollingUpdate"] = {"maxSurge": 1, "maxUnavailable": 0}
    return manifest
