"""What the k8s layer observed, as plain immutable values: the planner's only input besides
the factory, the regions and the settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeInfo:
    """A node, reduced to what placement needs."""

    name: str
    labels: Mapping[str, str]
    allocatable: Mapping[str, int]
    ready: bool = True
    schedulable: bool = True


@dataclass(frozen=True)
class DeploymentInfo:
    """One pool's Deployment as it runs."""

    name: str
    pool: str
    spec_replicas: int
    ready_replicas: int = 0
    updated_replicas: int = 0
    generation: int = 0
    observed_generation: int = 0
    revision: str | None = None
    replica_failure: str | None = None


@dataclass(frozen=True)
class PodProblem:
    """Why pods of a pool do not run: Unschedulable (scheduler) or FailedCreate (ReplicaSet)."""

    pool: str
    reason: str
    message: str


@dataclass(frozen=True)
class ChildRef:
    """A child object that exists in the cluster."""

    api_version: str
    kind: str
    name: str
    pool: str


@dataclass(frozen=True)
class Observed:
    """The world as seen by one reconcile."""

    now: str
    nodes: Sequence[NodeInfo] = ()
    deployments: Mapping[str, DeploymentInfo] = field(default_factory=dict)
    # The pools' canary Deployments (track label ``canary``), by pool: a rollout's.
    canaries: Mapping[str, DeploymentInfo] = field(default_factory=dict)
    problems: Sequence[PodProblem] = ()
    children: Sequence[ChildRef] = ()
    podmonitor_crd: bool = False
    # Access modes of the claims the factory mounts, by claim name (a missing claim is
    # absent); None when they could not be read (no RBAC for claims): not checked then.
    claims: Mapping[str, Sequence[str]] | None = None
