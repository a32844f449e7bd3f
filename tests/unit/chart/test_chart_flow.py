"""The chart's flow control (router.flow): the router's flags from values, read back by the
router's own settings (names, the boolean flag's form, numbers a values file gives as
floats); the schema's bounds; and the tenants file the chart documents, whose `priority` and
quotas reach the router as written (the chart mounts the Secret's file, it never builds it)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from factory_router.main import Settings
from factory_router.policy.config import FlowConfig
from factory_router.policy.tenants import PriorityClass, load_tenants_text
from tests.unit.chart.chart_tools import CHART, Obj, by_name, helm_template, helm_template_error
from tests.unit.chart.test_values_schema import SCHEMA_ERROR

FLOW_VALUES = """\
router:
  flow:
    enabled: false
    maxQueued: 10000000
    maxWaitSeconds: {interactive: 0.5, standard: 12, batch: 300}
    retryAfterSeconds: 7
"""
README_BLOCK = re.compile(
    r"^<!-- readme-test: tenants -->\n```yaml\n(?P<body>.*?)^```", re.M | re.S
)


def _router(objs: list[Obj]) -> Obj:
    container: Obj = by_name(objs, "Deployment", "router")["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


def _flow_of(container: Obj, monkeypatch: pytest.MonkeyPatch) -> FlowConfig:
    """The FlowConfig the router builds from the container's args and env, as it starts."""
    for env in container["env"]:
        monkeypatch.setenv(env["name"], env["value"])
    settings = Settings(_cli_parse_args=container["args"])  # type: ignore[call-arg]
    return settings.router_config().flow


def test_defaults_are_the_routers(monkeypatch: pytest.MonkeyPatch) -> None:
    args = _router(helm_template())["args"]
    assert "--no-flow-control" in args and "--flow-max-queued=512" in args
    assert _flow_of(_router(helm_template()), monkeypatch) == FlowConfig()


def test_values_render_the_flags_the_router_reads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = tmp_path / "flow.yaml"
    values.write_text(FLOW_VALUES)
    router = _router(helm_template("-f", str(values)))
    flags = [a for a in router["args"] if "flow" in a]
    assert flags == [
        "--no-flow-control",
        "--flow-max-queued=10000000",  # not 1e+07: Helm reads a values file's numbers as floats
        "--flow-max-wait-interactive=0.5",
        "--flow-max-wait-standard=12",
        "--flow-max-wait-batch=300",
        "--flow-retry-after=7",
    ]
    assert _flow_of(router, monkeypatch) == FlowConfig(
        enabled=False,
        max_queued=10_000_000,
        max_wait_interactive=0.5,
        max_wait_standard=12.0,
        max_wait_batch=300.0,
        retry_after_seconds=7,
    )
    on = _router(helm_template("--set", "router.flow.enabled=true"))["args"]
    assert "--flow-control" in on and "--no-flow-control" not in on


def test_large_counts_from_a_values_file_are_whole_numbers(tmp_path: Path) -> None:
    """Every integer flag of the router, not only flow's: a float rendered as 1e+07 would
    keep the router from starting."""
    values = tmp_path / "big.yaml"
    values.write_text(
        "router:\n  replicas: 12\n  hold: {maxRequests: 10000000}\n"
        "  quota: {defaultMaxTokens: 10000000}\n"
    )
    args = _router(helm_template("-f", str(values)))["args"]
    for flag in ("--hold-max-requests=10000000", "--quota-default-max-tokens=10000000",
                 "--quota-replicas=12"):  # fmt: skip
        assert flag in args, args
    assert not [a for a in args if "e+" in a], args


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("router.flow.enabled=yes", "/router/flow/enabled"),
        ("router.flow.maxQueued=-1", "/router/flow/maxQueued"),
        ("router.flow.maxQueued=1.5", "/router/flow/maxQueued"),
        ("router.flow.maxWaitSeconds.batch=-1", "/router/flow/maxWaitSeconds/batch"),
        ("router.flow.maxWaitSeconds.urgent=1", "additional properties 'urgent' not allowed"),
        ("router.flow.retryAfterSeconds=0", "/router/flow/retryAfterSeconds"),
        ("router.flow.retryAfter=5", "additional properties 'retryAfter'"),
    ],
)
def test_schema_refuses(setting: str, where: str) -> None:
    err = helm_template_error("--set", "router.region=x", "--set", setting)
    assert SCHEMA_ERROR in err
    assert where in err, err


def test_the_documented_tenants_file_reaches_the_router_with_its_priority_and_quotas() -> None:
    """The README's tenants.yaml (the Secret the Deployment mounts as --tenants, unchanged:
    test_chart.py::test_router_mounts_the_tenants_secret_without_subpath), its placeholder
    hashes filled in, is a file the router accepts, priority and quotas included."""
    match = README_BLOCK.search((CHART / "README.md").read_text())
    assert match, "the chart README marks its tenants block"
    text = re.sub(
        r'"<sha256 of ([^>]+)>"', lambda m: hashlib.sha256(m[1].encode()).hexdigest(), match["body"]
    )
    (tenant,) = load_tenants_text(text).tenants.values()
    assert tenant.priority is PriorityClass.INTERACTIVE
    assert (tenant.requests_per_minute, tenant.tokens_per_day) == (600, 50_000_000)
