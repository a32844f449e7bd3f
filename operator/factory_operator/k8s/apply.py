"""Execute a plan: apply what changed, delete what must go, record events, patch status
only when it changed.

A Deployment planned without ``spec.replicas`` (autoscaling mode external: KEDA or an HPA
owns the count) is handed over first: a field that its only server-side-apply owner drops is
removed, and a Deployment without replicas defaults to 1. So while the operator's field
manager still owns ``spec.replicas``, the live count is applied once under a second manager
(``HANDOVER_MANAGER``, never applied again), which keeps the field when the operator's own
manifest drops it; KEDA's or the HPA's updates then take it from there (Kubernetes
documents this as transferring ownership between managers).
"""

from __future__ import annotations

import logging

from factory_operator.api import InferenceFactory
from factory_operator.plan import OperatorSettings, Plan

from .cache import OwnWrites
from .client import FIELD_MANAGER, Kube, Obj
from .diff import first_drift, merge_patch, needs_apply, with_hash
from .observe import World

log = logging.getLogger(__name__)
FACTORY_API = "inference.factory.dev/v1alpha1"
HANDOVER_MANAGER = "inference-factory-replicas-handover"


def owns_replicas(live: Obj, manager: str = FIELD_MANAGER) -> bool:
    """Whether ``manager`` holds ``spec.replicas`` of a live object through an apply."""
    for entry in (live.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") != manager or entry.get("operation") != "Apply":
            continue
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
            return True
    return False


def replicas_handover(manifest: Obj, live: Obj | None) -> Obj | None:
    """The apply that hands a Deployment's replicas over before the operator's manifest
    drops them, or None when there is nothing to hand over."""
    if manifest["kind"] != "Deployment" or "replicas" in manifest["spec"] or live is None:
        return None
    if not owns_replicas(live):
        return None
    meta = manifest["metadata"]
    return {
        "apiVersion": manifest["apiVersion"],
        "kind": "Deployment",
        "metadata": {"name": meta["name"], "namespace": meta.get("namespace")},
        "spec": {"replicas": int((live.get("spec") or {}).get("replicas") or 0)},
    }


def _event(
    factory: InferenceFactory, type_: str, reason: str, message: str, now: str
) -> dict[str, object]:
    meta = factory.metadata
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.name}.", "namespace": meta.namespace},
        "involvedObject": {
            "apiVersion": FACTORY_API,
            "kind": "InferenceFactory",
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": "inference-factory"},
    }


def _remember(own: OwnWrites | None, answer: Obj | None) -> None:
    if own is not None and answer:
        own.wrote(answer)


async def execute(
    kube: Kube,
    factory: InferenceFactory,
    plan: Plan,
    world: World,
    settings: OperatorSettings,
    *,
    own: OwnWrites | None = None,
) -> int:
    """Carry out the plan; returns how many writes were sent. ``own`` keeps what they left
    until the watches deliver it (``k8s.cache``)."""
    key = f"{settings.annotation_prefix}/applied-hash"
    writes = 0
    for manifest in plan.apply:
        live = world.live.get((manifest["kind"], manifest["metadata"]["name"]))
        if needs_apply(manifest, live, key):
            if live is not None:
                drift = first_drift(
                    {k: live.get(k) for k in ("metadata", "spec")},
                    {k: manifest[k] for k in ("metadata", "spec") if k in manifest},
                )
                log.info(
                    "re-applying %s %s: %s",
                    manifest["kind"],
                    manifest["metadata"]["name"],
                    f"drift at {drift}" if drift else "intent changed",
                )
            handover = replicas_handover(manifest, live)
            if handover is not None:
                log.info(
                    "handing the replicas of %s over to KEDA/HPA", manifest["metadata"]["name"]
                )
                await kube.apply(handover, field_manager=HANDOVER_MANAGER)
                writes += 1
            _remember(own, await kube.apply(with_hash(manifest, key)))
            writes += 1
    namespace = factory.metadata.namespace or "default"
    for child in plan.delete:
        await kube.delete(child.api_version, child.kind, child.name, namespace)
        if own is not None:
            meta = (world.live.get((child.kind, child.name)) or {}).get("metadata") or {}
            own.deleted(child.kind, namespace, child.name, meta.get("uid") or "")
        writes += 1
    for event in plan.events:
        await kube.create_event(
            _event(factory, event.type, event.reason, event.message, world.observed.now)
        )
        writes += 1
    desired = plan.status.to_wire()
    current = factory.status.to_wire() if factory.status else None
    if desired != current:
        answer = await kube.patch_status(
            FACTORY_API,
            "InferenceFactory",
            factory.metadata.name,
            namespace,
            merge_patch(current or {}, desired),
        )
        _remember(own, answer)
        writes += 1
    return writes
