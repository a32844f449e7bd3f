"""The cluster as the watches hold it: what a reconcile reads instead of listing.

The handlers keep kopf indexes (``handlers.indexes``) of FleetRegions, Nodes, the factories'
children, their pods' and ReplicaSets' problems and the claims; a reconcile reads them
through a ``Watched`` view. A kind the operator may not watch (its RBAC predates the cache)
has no index: ``observe`` lists that kind as before, so nothing fails.

A watch delivers the operator's own writes a little later (the object's kopf worker may be
busy for seconds under load), and a plan made from an older copy would write again: a child
re-applied, a status whose conditions move their transition times. ``OwnWrites`` keeps each
object as the operator's last write left it (the API server's answer) until the watch has
delivered that version or a newer one (resourceVersions of one object compared as the
integers etcd makes them), and at most ``OWN_WRITE_SECONDS``: after that the watch is the
truth even when it lost the object (deleted by someone else meanwhile).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from factory_operator.plan import NodeInfo, PodProblem

Obj = dict[str, Any]
OWN_WRITE_SECONDS = 120.0  # far above the watch's lag at 1,000 factories (bench/operator_scale)
TOP_LEVEL = ("apiVersion", "kind", "metadata", "spec", "status")


@dataclass(frozen=True)
class CachedObject:
    """One watched object, kept as compact JSON: a Deployment's dicts weigh about ten times
    its text, and a reconcile parses only its own factory's few children."""

    kind: str
    name: str
    resource_version: str
    text: str

    def obj(self) -> Obj:
        """A fresh copy of the object (callers may change it)."""
        found: Obj = json.loads(self.text)
        return found


def _replica_owners(managed: Iterable[Obj]) -> list[Obj]:
    # Only what k8s.apply.owns_replicas reads: who applied spec.replicas.
    return [
        {"manager": m.get("manager"), "operation": m.get("operation"),
         "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        for m in managed
        if "f:replicas" in (((m.get("fieldsV1") or {}).get("f:spec")) or {})
    ]  # fmt: skip


def cached_object(body: Mapping[str, Any]) -> CachedObject:
    """A watched object reduced to what the operator reads (managed fields: replica owners)."""
    obj = {k: body[k] for k in TOP_LEVEL if k in body}
    meta = dict(obj.get("metadata") or {})
    owners = _replica_owners(meta.pop("managedFields", None) or [])
    if owners:
        meta["managedFields"] = owners
    obj["metadata"] = meta
    return CachedObject(
        kind=str(obj.get("kind", "")),
        name=str(meta.get("name", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        text=json.dumps(obj, separators=(",", ":")),
    )


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def pod_problem(pod: Mapping[str, Any], pool_key: str) -> PodProblem | None:
    """A pending pod the scheduler refused, as a problem of its pool (else None)."""
    if (pod.get("status") or {}).get("phase") != "Pending":
        return None
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return PodProblem(
                _labels(pod).get(pool_key, ""), "Unschedulable", cond.get("message") or ""
            )
    return None


def replica_set_problem(rs: Mapping[str, Any], pool_key: str) -> PodProblem | None:
    """A ReplicaSet that cannot create its pods, as a problem of its pool (else None)."""
    if not int((rs.get("spec") or {}).get("replicas") or 0):
        return None  # old ReplicaSets scaled to zero keep stale failure conditions
    for cond in (rs.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return PodProblem(
                _labels(rs).get(pool_key, ""), "FailedCreate", cond.get("message") or ""
            )
    return None


def _first(pair: tuple[str, PodProblem]) -> str:
    return pair[0]


def _rv(value: Any) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


@dataclass
class _Written:
    resource_version: int
    cached: CachedObject | None  # None: deleted by the operator
    uid: str
    at: float
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class OwnWrites:
    """Objects as the operator's own last write left them, until the watch catches up."""

    ttl: float = OWN_WRITE_SECONDS
    # (kind, namespace) -> name -> the write
    _written: dict[tuple[str, str], dict[str, _Written]] = field(default_factory=dict)
    _pruned: float = field(default_factory=time.monotonic)

    def _put(self, kind: str, namespace: str, name: str, written: _Written) -> None:
        if written.at - self._pruned > self.ttl:
            self.prune()
        self._written.setdefault((kind, namespace), {})[name] = written

    def wrote(self, obj: Mapping[str, Any]) -> None:
        """Remember an object as the API server answered a write of it."""
        meta = obj.get("metadata") or {}
        rv = _rv(meta.get("resourceVersion"))
        if rv is not None:
            uid, labels = meta.get("uid") or "", dict(meta.get("labels") or {})
            written = _Written(rv, cached_object(obj), uid, time.monotonic(), labels)
            self._put(str(obj.get("kind")), meta.get("namespace") or "", meta["name"], written)

    def deleted(self, kind: str, namespace: str, name: str, uid: str) -> None:
        """Remember that the operator deleted this object."""
        self._put(kind, namespace, name, _Written(0, None, uid, time.monotonic()))

    def prune(self) -> None:
        """Drop what the watch is trusted with again (also objects no reconcile reads)."""
        now = self._pruned = time.monotonic()
        for key, by_name in list(self._written.items()):
            for name in [n for n, w in by_name.items() if now - w.at > self.ttl]:
                del by_name[name]
            if not by_name:
                del self._written[key]

    def pending(self, kind: str, namespace: str, label: str, value: str) -> list[str]:
        """Names of the objects of a kind and namespace labelled ``label=value`` that the
        operator wrote (and did not delete) and the watch has not confirmed yet."""
        by_name = self._written.get((kind, namespace)) or {}
        return [
            name
            for name, w in by_name.items()
            if w.cached is not None and w.labels.get(label) == value
        ]

    def fresher(self, kind: str, namespace: str, name: str, seen: Obj | None) -> Obj | None:
        """The newer of the watch's copy (``seen``, None: absent) and the own write's."""
        by_name = self._written.get((kind, namespace)) or {}
        mine = by_name.get(name)
        if mine is None:
            return seen
        seen_meta = (seen or {}).get("metadata") or {}
        seen_rv = _rv(seen_meta.get("resourceVersion"))
        if time.monotonic() - mine.at > self.ttl:
            trust_watch = True
        elif mine.cached is None:  # deleted: absent until the watch has another object
            trust_watch = seen is None or seen_meta.get("uid") != mine.uid
        else:
            trust_watch = seen_rv is not None and seen_rv >= mine.resource_version
        if trust_watch:
            del by_name[name]
            return seen
        return mine.cached.obj() if mine.cached is not None else None


@dataclass(frozen=True)
class Watched:
    """kopf's indexes as a reconcile reads them. Keys: ``regions`` and ``nodes`` by name;
    ``children`` and ``problems`` (of Pods, ReplicaSets) by kind, then (namespace, factory);
    ``claims`` by (namespace, name). A kind left out (absent, or ``claims`` None) is not
    watched: it is read through the API."""

    regions: Mapping[Any, Iterable[CachedObject]]
    nodes: Mapping[Any, Iterable[NodeInfo]]
    children: Mapping[str, Mapping[Any, Iterable[CachedObject]]]
    problems: Mapping[str, Mapping[Any, Iterable[tuple[str, PodProblem]]]]
    claims: Mapping[Any, Iterable[tuple[str, ...]]] | None
    own: OwnWrites

    def region_objects(self) -> list[Obj]:
        """Every FleetRegion, own status writes included."""
        out = []
        for name in sorted(self.regions):
            for cached in self.regions[name]:
                obj = self.own.fresher("FleetRegion", "", cached.name, cached.obj())
                if obj is not None:
                    out.append(obj)
        return out

    def region_object(self, name: str) -> Obj | None:
        """One FleetRegion, own status writes included; None when the watch has none."""
        cached = next(iter(self.regions.get(name, ())), None)
        return self.own.fresher("FleetRegion", "", name, cached.obj()) if cached else None

    def factory_problems(self, kind: str, namespace: str, factory: str) -> list[PodProblem] | None:
        """Problems of a factory's Pods or ReplicaSets; None: that kind is not watched."""
        index = self.problems.get(kind)
        if index is None:
            return None
        # By object name, as a list would return them: the first one's message is shown.
        return [problem for _, problem in sorted(index.get((namespace, factory), ()), key=_first)]

    def child_objects(
        self, kind: str, namespace: str, factory: str, factory_key: str
    ) -> list[Obj] | None:
        """The children of one kind of a factory (labelled ``factory_key=factory``), own
        writes included; None: the kind is not watched."""
        index = self.children.get(kind)
        if index is None:
            return None
        seen = {c.name: c for c in index.get((namespace, factory), ())}
        # Children the operator created that the watch has not delivered yet.
        created = set(self.own.pending(kind, namespace, factory_key, factory))
        out = []
        for name in sorted(seen.keys() | created):
            cached = seen.get(name)
            obj = self.own.fresher(kind, namespace, name, cached.obj() if cached else None)
            if obj is not None and _labels(obj).get(factory_key) == factory:
                out.append(obj)
        return out

    def node_list(self) -> list[NodeInfo]:
        """Every node the watch holds, by name."""
        return [n for name in sorted(self.nodes) for n in self.nodes[name]]
