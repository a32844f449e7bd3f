"""The local cluster's kwok Stages: in each state of a pod or node, exactly the intended
Stage applies (selectors evaluated as kwok does: In, NotIn, Exists, DoesNotExist), and the
kwokctl configuration carries them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from factoryctl.components.cluster import ClusterComponent
from factoryctl.components.stages import ENGINE_READY_ANNOTATION, kwok_stages

READY = '.status.conditions.[] | select( .type == "Ready" ) | .status'


def _values(obj: dict[str, Any], key: str) -> list[Any]:
    """The few kwok (jq) expressions the stages use, on a plain object."""
    meta = obj.get("metadata", {})
    if key == READY:
        return [c["status"] for c in obj.get("status", {}).get("conditions", [])
                if c["type"] == "Ready"]  # fmt: skip
    if key == ".metadata.ownerReferences.[].kind":
        return [o["kind"] for o in meta.get("ownerReferences", [])]
    for field in ("labels", "annotations"):
        prefix = f'.metadata.{field}["'
        if key.startswith(prefix):
            value = (meta.get(field) or {}).get(key[len(prefix) : -2])
            return [] if value is None else [value]
    path = key.lstrip(".").split(".")
    value: Any = obj
    for part in path:
        value = value.get(part) if isinstance(value, dict) else None
    return [] if value is None else [value]


def _matches(stage: dict[str, Any], obj: dict[str, Any]) -> bool:
    for expr in stage["spec"]["selector"]["matchExpressions"]:
        found = [str(v) for v in _values(obj, expr["key"]) if v is not None]
        inside = any(v in expr.get("values", []) for v in found)
        ok = {"In": inside, "NotIn": not inside, "Exists": bool(found),
              "DoesNotExist": not found}[expr["operator"]]  # fmt: skip
        if not ok:
            return False
    return True


def _applying(obj: dict[str, Any], kind: str, gate: bool) -> list[str]:
    return [
        s["metadata"]["name"]
        for s in kwok_stages(engine_gate=gate)
        if s["spec"]["resourceRef"]["kind"] == kind and _matches(s, obj)
    ]


def _pod(phase: str = "Pending", engine: bool = True, ready: bool = False, answered: bool = False,
         deleting: bool = False, job: bool = False) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"labels": {"app.kubernetes.io/managed-by": "inference-factory"}
                            if engine else {"app": "other"}, "annotations": {}}  # fmt: skip
    if answered:
        meta["annotations"][ENGINE_READY_ANNOTATION] = "true"
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if job:
        meta["ownerReferences"] = [{"kind": "Job"}]
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": meta, "status": {"phase": phase, "conditions": conditions}}


@pytest.mark.parametrize(
    ("pod", "gated", "ungated"),
    [
        (_pod(), ["engine-pod-running"], ["pod-ready"]),
        (_pod("Running"), [], []),  # running, its engine not answering yet
        (_pod("Running", answered=True), ["engine-pod-ready"], []),
        (_pod("Running", ready=True, answered=True), [], []),
        (_pod(engine=False), ["pod-ready"], ["pod-ready"]),
        (_pod("Running", engine=False, ready=True), [], []),
        (_pod("Running", engine=False, ready=True, job=True), ["pod-complete"], ["pod-complete"]),
        (_pod("Running", deleting=True), ["pod-delete"], ["pod-delete"]),
    ],
)
def test_each_pod_state_has_one_next_stage(
    pod: dict[str, Any], gated: list[str], ungated: list[str]
) -> None:
    assert _applying(pod, "Pod", gate=True) == gated
    assert _applying(pod, "Pod", gate=False) == ungated


def test_nodes_initialise_then_beat() -> None:
    new = {"metadata": {}, "status": {"capacity": {"nvidia.com/gpu": "8"}}}
    assert _applying(new, "Node", gate=True) == ["node-initialize"]
    conditions = [{"type": "Ready", "status": "True"}]
    ready = {"metadata": {}, "status": {"phase": "Running", "conditions": conditions}}
    assert _applying(ready, "Node", gate=True) == ["node-heartbeat"]


def test_templates_keep_what_they_must_not_touch() -> None:
    stages = {s["metadata"]["name"]: s for s in kwok_stages(engine_gate=True)}
    # A strategic merge patch leaves out what it does not name: node capacity, pod IPs.
    node = stages["node-initialize"]["spec"]["next"]["statusTemplate"]
    assert "capacity" not in node and "allocatable" not in node
    ready = stages["engine-pod-ready"]["spec"]["next"]["statusTemplate"]
    assert "podIP" not in ready and "phase" not in ready
    running = stages["engine-pod-running"]["spec"]["next"]["statusTemplate"]
    assert "podIP:" in running and "phase: Running" in running and "ready: false" in running
    assert stages["node-heartbeat"]["spec"]["delay"]["durationMilliseconds"] >= 10_000


@pytest.mark.parametrize(("selected", "gated"), [(None, True), (frozenset({"cluster"}), False)])
def test_kwokctl_config_carries_the_stages(
    tmp_path: Path, selected: frozenset[str] | None, gated: bool
) -> None:
    binaries = ("kube_apiserver", "kube_controller_manager", "kube_scheduler", "kubectl", "etcd")
    tools = SimpleNamespace(**{name: tmp_path / name for name in (*binaries, "kwok")})
    home = SimpleNamespace(root=tmp_path, port=lambda _: 40000)
    ctx = SimpleNamespace(home=home, tools=tools, selected=selected)
    path = ClusterComponent()._config(ctx)  # type: ignore[arg-type]
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    assert docs[0]["kind"] == "KwokctlConfiguration"
    assert docs[0]["options"]["bindAddress"] == "127.0.0.1"
    names = {d["metadata"]["name"] for d in docs[1:] if d["kind"] == "Stage"}
    assert ("engine-pod-ready" in names) is gated
    assert {"node-initialize", "node-heartbeat", "pod-ready", "pod-delete"} <= names
