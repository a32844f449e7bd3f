"""Execute a plan: apply what changed, delete what must go, record events, patch status
only when it changed."""

from __future__ import annotations

import logging

from factory_operator.api import InferenceFactory
from factory_operator.plan import OperatorSettings, Plan

from .client import Kube
from .diff import first_drift, needs_apply, with_hash
from .observe import World

log = logging.getLogger(__name__)
FACTORY_API = "inference.factory.dev/v1alpha1"


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


async def execute(
    kube: Kube, factory: InferenceFactory, plan: Plan, world: World, settings: OperatorSettings
) -> int:
    """Carry out the plan; returns how many writes were sent."""
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
            await kube.apply(with_hash(manifest, key))
            writes += 1
    namespace = factory.metadata.namespace or "default"
    for child in plan.delete:
        await kube.delete(child.api_version, child.kind, child.name, namespace)
        writes += 1
    for event in plan.events:
        await kube.create_event(
            _event(factory, event.type, event.reason, event.message, world.observed.now)
        )
        writes += 1
    desired = plan.status.to_wire()
    current = factory.status.to_wire() if factory.status else None
    if desired != current:
        await kube.patch_status(
            FACTORY_API, "InferenceFactory", factory.metadata.name, namespace, desired
        )
        writes += 1
    return writes
