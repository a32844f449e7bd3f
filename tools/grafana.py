"""Grafana dashboard JSON, as data: targets, panels laid out in rows, template variables,
thresholds, links and the dashboard around them. What the fleet's dashboards show is in
`tools/dashboards.py`.

Rates use `$__rate_interval` (at least four scrape intervals whatever the zoom, Grafana's
documented choice for Prometheus rate queries); a panel whose title names a window (1h) keeps
it. Thresholds are drawn as lines on time series and colour single stats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Panel = dict[str, Any]
# (value, colour) steps above the base colour: e.g. [(2.5, "red")] marks everything above 2.5.
Thresholds = list[tuple[float, str]]
RATE = "$__rate_interval"


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "range": True,
    }


def _panel(
    kind: str,
    title: str,
    targets: list[tuple[str, str]],
    unit: str,
    description: str,
    *,
    width: int = 12,
    height: int = 8,
    thresholds: Thresholds | None = None,
    base_colour: str = "green",
) -> Panel:
    defaults: dict[str, Any] = {"unit": unit}
    if thresholds:
        steps: list[dict[str, Any]] = [{"color": base_colour, "value": None}]
        steps += [{"color": colour, "value": value} for value, colour in thresholds]
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
        if kind == "timeseries":
            defaults["custom"] = {"thresholdsStyle": {"mode": "line+area"}}
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            }
        }
        if kind == "timeseries"
        else {},
        "targets": [_target(e, leg, chr(ord("A") + i)) for i, (e, leg) in enumerate(targets)],
        "_size": (width, height),
    }


def ts(
    title: str,
    targets: list[tuple[str, str]],
    unit: str,
    description: str,
    width: int = 12,
    *,
    thresholds: Thresholds | None = None,
    base_colour: str = "green",
) -> Panel:
    """A time series panel; thresholds drawn as lines (an SLO, an alert's level)."""
    return _panel("timeseries", title, targets, unit, description, width=width,
                  thresholds=thresholds, base_colour=base_colour)  # fmt: skip


def stat(
    title: str,
    expr: str,
    unit: str,
    description: str,
    *,
    thresholds: Thresholds | None = None,
    base_colour: str = "green",
) -> Panel:
    """A single-number panel, coloured by its thresholds."""
    return _panel("stat", title, [(expr, "")], unit, description, width=6, height=4,
                  thresholds=thresholds, base_colour=base_colour)  # fmt: skip


def row(title: str) -> Panel:
    """A collapsible-free row header."""
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def _layout(panels: list[Panel]) -> list[Panel]:
    x = y = line_height = 0
    out = []
    for pid, panel in enumerate(panels, start=1):
        width, height = panel.pop("_size")
        if x + width > 24 or panel["type"] == "row":
            x, y = 0, y + line_height
            line_height = 0
        panel["gridPos"] = {"x": x, "y": y, "w": width, "h": height}
        panel["id"] = pid
        x += width
        line_height = max(line_height, height)
        if panel["type"] == "row":
            x, y, line_height = 0, y + height, 0
        out.append(panel)
    return out


def variable(name: str, label: str, query: str, *, all_value: str | None = ".*") -> dict[str, Any]:
    """A multi-value query variable with "All". ``all_value`` None: "All" stands for the
    values the query lists (so a variable it depends on narrows it), not for any value."""
    out: dict[str, Any] = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": all_value,
        "refresh": 2,
        "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }
    if all_value is None:
        del out["allValue"]
    return out


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Panel],
    *,
    variables: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A complete dashboard with the datasource, namespace, factory and region variables,
    then ``variables`` (built with ``variable``)."""
    base = "vllm:num_requests_running"
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["inference-factory"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        # Every dashboard of the fleet (same tag), keeping the time range and the variables.
        "links": [
            {
                "title": "Inference Factory",
                "type": "dashboards",
                "tags": ["inference-factory"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "targetBlank": False,
            }
        ],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                variable("namespace", "Namespace", f"label_values({base}, namespace)"),
                variable(
                    "factory",
                    "Factory",
                    f'label_values({base}{{namespace=~"$namespace"}}, factory)',
                ),
                variable(
                    "region", "Region", f'label_values({base}{{factory=~"$factory"}}, region)'
                ),
                *variables,
            ]
        },
        "panels": _layout(panels),
    }
