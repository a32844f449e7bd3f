"""The chart's generated copies are current, its values schema is closed at every level and
documented, and the dashboards and alerts use metric names the code really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from factory_operator.k8s import OperatorMetrics
from factory_router.app.metrics import RouterMetrics
from factory_router.app.revisions import RevisionMetrics
from factory_sim.engine.metric_names import VLLM_METRICS
from tests.unit.chart.chart_tools import CHART, MONITORING
from tools import sync_chart
from tools.dashboards import DASHBOARDS

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
# Kubernetes structures passed through to the pod spec as they are (the API server validates
# them): the only objects allowed to accept any property.
PASSTHROUGH = {
    "affinity.nodeAffinity",
    "affinity.podAffinity",
    "affinity.podAntiAffinity",
    "podSecurityContext",
    "securityContext",
    "extraEnv[]",
    "extraVolumes[]",
    "extraVolumeMounts[]",
    "parentRefs[]",
    "definitions.podSecurityContext",
    "definitions.securityContext",
}
# Shared with every sub-chart of a parent chart: must accept keys this chart does not know.
OPEN_FOR_PARENT_CHARTS = "global"


def test_chart_copies_are_current() -> None:
    stale = sync_chart.stale(sync_chart.chart_copies())
    assert not stale, f"stale: {[str(p) for p in stale]}; run: python tools/sync_chart.py"


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    return sync_chart._resolve(SCHEMA, node)


def _objects(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    node = _resolve(node)
    found = []
    if node.get("type") == "object":
        found.append((path, node))
        for key, sub in (node.get("properties") or {}).items():
            found += _objects(sub, f"{path}.{key}" if path else key)
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        found += _objects(node["items"], f"{path}[]")
    return found


def test_schema_is_closed_at_every_level() -> None:
    objects = _objects(SCHEMA, "")
    objects += [
        (f"definitions.{k}", v)
        for k, v in SCHEMA["definitions"].items()
        if v.get("type") == "object"
    ]
    assert len(objects) > 30
    for path, node in objects:
        closed = node.get("additionalProperties")
        typed_map = isinstance(closed, dict) and closed.get("type") == "string"
        passthrough = any(path.endswith(p) for p in PASSTHROUGH) and closed is True
        shared = path == OPEN_FOR_PARENT_CHARTS and closed is True
        assert closed is False or typed_map or passthrough or shared, path


def _leaves(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        assert key in (schema.get("properties") or {}), f"{prefix}{key} is not in the schema"
        sub = _resolve(schema["properties"][key])
        if isinstance(value, dict) and value and sub.get("additionalProperties") is False:
            out += _leaves(value, sub, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def test_every_value_is_in_the_schema_and_the_readme() -> None:
    readme = (CHART / "README.md").read_text()
    leaves = _leaves(VALUES, SCHEMA)
    assert len(leaves) > 60
    missing = [k for k in leaves if f"| `{k}` |" not in readme]
    assert not missing, f"undocumented values: {missing}"


def _dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for name, build in DASHBOARDS.items():
        for panel in build()["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{name}/{panel['title']}", target["expr"]))
    return out


def _alert_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def _with_series(names: set[str]) -> set[str]:
    """``names`` and the series a histogram or counter of that name has once observed."""
    return names | {f"{n}_{s}" for n in names for s in ("bucket", "count", "sum", "total")}


def _exported() -> set[str]:
    names = {spec.name for spec in VLLM_METRICS}
    router = RouterMetrics(lambda: 0.0, lambda: 0.0).registry
    RevisionMetrics(router)  # the per-revision series (canary rollouts) share its registry
    for registry in (OperatorMetrics().registry, router):
        for family in registry.collect():
            names |= {sample.name for sample in family.samples} | {family.name}
    # histogram series that appear once something was observed
    names = _with_series(names)
    recorded = {
        rule["record"]
        for group in yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    return names | recorded


METRIC = re.compile(r"\b((?:vllm:|factory_operator_|factory_router_|factory:)[a-z0-9_:]+)")


@pytest.mark.parametrize("source", ["dashboards", "alerts"])
def test_queries_use_exported_metric_names(source: str) -> None:
    exprs = _dashboard_exprs() if source == "dashboards" else _alert_exprs()
    exported = _exported()
    unknown = {
        (where, m) for where, expr in exprs for m in METRIC.findall(expr) if m not in exported
    }
    assert not unknown


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing (Debian package prometheus)"
    # Grafana replaces $__rate_interval before Prometheus sees the query.
    rules = [
        {"record": f"dashboard:check:{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, (_, expr) in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboards.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboards_use_the_fleet_label_set() -> None:
    allowed = {
        "namespace",
        "factory",
        "pool",
        "region",
        "jurisdiction",
        "pod",
        "model_name",
        "engine",
        "le",
        "reason",
        "status",
        "kind",
        "type",
        "outcome",
        "verb",
        # unit economics: the operator's pool labels and the router's metering
        "model",
        "accelerator_kind",
        "tenant",
        # canary rollouts: the router's per-revision series and the operator's rollout series
        "revision",
        "phase",
        "check",
    }
    for where, expr in _dashboard_exprs():
        for group in re.findall(r"by \(([^)]*)\)", expr):
            labels = {label.strip() for label in group.split(",")}
            assert labels <= allowed, (where, labels)


def test_dashboards_have_unique_uids_and_panel_ids() -> None:
    uids = [build()["uid"] for build in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)
    for build in DASHBOARDS.values():
        ids = [p["id"] for p in build()["panels"]]
        assert len(set(ids)) == len(ids)
