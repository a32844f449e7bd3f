"""Volumes that several replicas share (pure): a model claim (``pvc://``) is mounted read-only
by every replica and the ``spec.cache`` claim read-write, so with replicas on more than one
node the claim must allow it. A ReadWriteOnce claim (an EBS or Persistent Disk volume)
attaches to one node only: the other replicas stay in ContainerCreating on a Multi-Attach
error. Reported as a Degraded condition; the pools still run (the first replica works)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from factory_operator.api import InferenceFactory

READ_BY_MANY = frozenset({"ReadOnlyMany", "ReadWriteMany"})
WRITTEN_BY_MANY = frozenset({"ReadWriteMany"})


def claim_names(factory: InferenceFactory) -> list[str]:
    """Claims the factory's pods mount: the model's (pvc://) and the cache's."""
    names = []
    uri = factory.spec.model.uri
    if uri.startswith("pvc://"):
        names.append(uri.removeprefix("pvc://").split("/", 1)[0])
    cache = factory.spec.cache
    if cache is not None and cache.persistent_volume_claim:
        names.append(cache.persistent_volume_claim)
    return names


def _describe(modes: Sequence[str]) -> str:
    return ", ".join(modes) or "no access mode"


def shared_volume_problem(
    factory: InferenceFactory, claims: Mapping[str, Sequence[str]] | None, pods: int
) -> str | None:
    """Why replicas on several nodes cannot all mount the factory's claims, or None (also
    when the claims could not be read, or when one pod is all there is)."""
    if claims is None or pods <= 1:
        return None
    problems = []
    uri = factory.spec.model.uri
    if uri.startswith("pvc://"):
        name = uri.removeprefix("pvc://").split("/", 1)[0]
        modes = claims.get(name)
        if modes is not None and not READ_BY_MANY & set(modes):
            problems.append(
                f"model claim {name} is {_describe(modes)}: the {pods} replicas cannot mount "
                f"it from several nodes (Multi-Attach error); use a ReadOnlyMany or "
                f"ReadWriteMany claim (EFS, FSx for Lustre, Filestore)"
            )
    cache = factory.spec.cache
    if cache is not None and cache.persistent_volume_claim:
        name = cache.persistent_volume_claim
        modes = claims.get(name)
        if modes is not None and not WRITTEN_BY_MANY & set(modes):
            problems.append(
                f"cache claim {name} is {_describe(modes)}: the {pods} replicas write to it "
                f"from several nodes; use a ReadWriteMany claim or a hostPath cache"
            )
    return "; ".join(problems) or None
