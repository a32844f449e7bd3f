"""Third-party validators on what the project ships: kubeconform (strict, offline schemas for
the pinned Kubernetes minor and for our own CRDs), kube-score and promtool, over the rendered
chart, the GitOps overlays and the operator's generated workloads for every example.

A finding fails the test unless tests/static/validator-allowlist.yaml lists it with its
reason; an entry that no longer matches anything fails too, so the list stays honest. A
missing validator fails (never skips): `make test` builds them first (`factoryctl dev
tools`; promtool comes with Debian's prometheus package, installed by scripts/bootstrap.sh).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from factoryctl.toolchain import KUBERNETES_VERSION, Toolchain, find_tools
from tests.static import validators as v
from tests.unit.chart.chart_tools import (
    BASE_SET,
    CHART,
    GITOPS,
    MONITORING,
    REGIONS,
    of_kind,
    run,
)

KUBERNETES_MINOR = ".".join(KUBERNETES_VERSION.split(".")[:2])


@pytest.fixture(scope="module")
def tools() -> Toolchain:
    """The pinned binaries and schemas; a failure (not a skip) when absent."""
    found = find_tools()
    if found is None:
        pytest.fail(
            "the pinned toolchain (kubeconform, kube-score, the Kubernetes schemas, helm, "
            "kubectl) is not built: run `factoryctl dev tools`"
        )
    return found


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: install Debian's prometheus (scripts/bootstrap.sh)")
    return found


@pytest.fixture(scope="module")
def allowed() -> list[v.Allowed]:
    return v.load_allowlist()


@pytest.fixture(scope="module")
def rendered(tools: Toolchain, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[v.Obj]]:
    """source name -> its objects (the renders run side by side: each takes about 0.5 s)."""
    all_on = tmp_path_factory.mktemp("values") / "all-on.yaml"
    all_on.write_text(yaml.safe_dump(v.ALL_ON_VALUES))
    helm = [str(tools.helm), "template", "fleet", str(CHART), "--namespace", "inference-factory"]
    commands = {
        "chart-default": [*helm, *BASE_SET],
        "chart-all-on": [*helm, *BASE_SET, "--values", str(all_on), *v.ALL_ON_ARGS],
        **{
            f"gitops-{region}": [str(tools.kubectl), "kustomize", str(GITOPS / "overlays" / region)]
            for region in REGIONS
        },
    }
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        done = dict(zip(commands, pool.map(run, commands.values()), strict=True))
    sources = {}
    for name, result in done.items():
        assert result.returncode == 0, f"{name}: {result.stderr}"
        sources[name] = [d for d in yaml.safe_load_all(result.stdout) if d]
    for factory, children in v.example_workloads().items():
        sources[f"workloads-{factory}"] = children
    return sources


@pytest.fixture(scope="module")
def files(
    rendered: dict[str, list[v.Obj]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sources")
    return {name: v.write_source(folder, name, objs) for name, objs in rendered.items()}


@pytest.fixture(scope="module")
def kubeconform_run(
    tools: Toolchain,
    files: dict[str, Path],
    allowed: list[v.Allowed],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[v.Finding], dict[str, int]]:
    crd_location = v.write_crd_schemas(tmp_path_factory.mktemp("crd-schemas"))
    k8s_location = f"{tools.kubernetes_schemas}/{v.SCHEMA_FILE}"
    # Kinds without a schema here may be skipped only when the allowlist says so and why.
    skip = sorted({a.kind for a in allowed if a.validator == "kubeconform" and a.check == "skip"})
    return v.kubeconform(tools.kubeconform, [k8s_location, crd_location], skip, files)


@pytest.fixture(scope="module")
def kube_score_findings(tools: Toolchain, files: dict[str, Path]) -> list[v.Finding]:
    found = []
    for source, path in files.items():
        found += v.kube_score(tools.kube_score, KUBERNETES_MINOR, source, path)
    return found


@pytest.fixture(scope="module")
def promtool_findings(
    promtool: str, rendered: dict[str, list[v.Obj]], tmp_path_factory: pytest.TempPathFactory
) -> list[v.Finding]:
    check = ["check", "rules", "--lint=all", "--lint-fatal"]
    rule_files = [MONITORING / "alerts.yaml", CHART / "files" / "alerts.yaml"]
    # The PrometheusRule the chart renders is what clusters get: its groups, as a rule file.
    folder = tmp_path_factory.mktemp("rules")
    for rule in of_kind(rendered["chart-all-on"], "PrometheusRule"):
        target = folder / f"chart-all-on-{rule['metadata']['name']}.yaml"
        target.write_text(yaml.safe_dump(rule["spec"]))
        rule_files.append(target)
    assert len(rule_files) == 3, "the all-on chart renders one PrometheusRule"
    runs = []
    for path in rule_files:
        source = str(path.relative_to(v.ROOT)) if path.is_relative_to(v.ROOT) else path.name
        runs.append(("check-rules", source, [*check, str(path)], path.parent))
    unit_tests = sorted((MONITORING / "tests").glob("*.yaml"))
    assert unit_tests, "deploy/monitoring/tests has the alerts' unit tests"
    for path in unit_tests:
        args = ["test", "rules", str(path.relative_to(MONITORING))]
        runs.append(("test-rules", str(path.relative_to(v.ROOT)), args, MONITORING))
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        results = pool.map(lambda r: v.promtool(promtool, *r), runs)
        return [finding for found in results for finding in found]


def _report(findings: list[v.Finding]) -> str:
    lines = "\n".join(f"  {f}" for f in findings)
    return (
        f"{len(findings)} finding(s) not in {v.ALLOWLIST.relative_to(v.ROOT)} "
        f"(fix them, or list them there with the reason):\n{lines}"
    )


def test_allowlist_entries_are_well_formed(allowed: list[v.Allowed]) -> None:
    skips = [a for a in allowed if a.check == "skip"]
    for entry in skips:
        assert entry.validator == "kubeconform", f"only kubeconform skips kinds: {entry}"
        assert "*" not in entry.kind, f"a skip names one kind, not a pattern: {entry}"


def test_kubeconform_strict(
    kubeconform_run: tuple[list[v.Finding], dict[str, int]],
    rendered: dict[str, list[v.Obj]],
    allowed: list[v.Allowed],
) -> None:
    findings, seen = kubeconform_run
    # Every object of every source reached kubeconform (none dropped on the way).
    assert seen == {name: len(objs) for name, objs in rendered.items()}
    assert not (left := v.unexplained(findings, allowed)), _report(left)


def test_kube_score(kube_score_findings: list[v.Finding], allowed: list[v.Allowed]) -> None:
    assert not (left := v.unexplained(kube_score_findings, allowed)), _report(left)


def test_promtool(promtool_findings: list[v.Finding], allowed: list[v.Allowed]) -> None:
    assert not (left := v.unexplained(promtool_findings, allowed)), _report(left)


def test_no_stale_allowlist_entry(
    kubeconform_run: tuple[list[v.Finding], dict[str, int]],
    kube_score_findings: list[v.Finding],
    promtool_findings: list[v.Finding],
    allowed: list[v.Allowed],
) -> None:
    findings = [*kubeconform_run[0], *kube_score_findings, *promtool_findings]
    stale = [a for a in allowed if not any(a.covers(f) for f in findings)]
    assert not stale, "allowlist entries that match no finding any more (remove them):\n" + (
        "\n".join(f"  {a}" for a in stale)
    )


def test_validators_find_what_they_should(tools: Toolchain, promtool: str, tmp_path: Path) -> None:
    """The pipeline is not vacuous: a bad Deployment, a misspelled factory field and a bad
    rule are each reported."""
    bad_deployment: v.Obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "bad", "namespace": "ml"},
        "spec": {
            "replicas": "two",
            "selector": {"matchLabels": {"app": "bad"}},
            "template": {
                "metadata": {"labels": {"app": "bad"}},
                "spec": {"containers": [{"name": "c", "image": "busybox", "bogus": 1}]},
            },
        },
    }
    factory = next(iter(v.example_workloads()))
    example = next(
        d
        for p in sorted(v.EXAMPLES.glob("*.yaml"))
        for d in yaml.safe_load_all(p.read_text())
        if d and d["kind"] == "InferenceFactory" and d["metadata"]["name"] == factory
    )
    example["spec"]["modle"] = example["spec"]["model"]
    path = v.write_source(tmp_path, "bad", [bad_deployment, example])
    crd_location = v.write_crd_schemas(tmp_path / "crd-schemas")
    k8s_location = f"{tools.kubernetes_schemas}/{v.SCHEMA_FILE}"
    found, _ = v.kubeconform(tools.kubeconform, [k8s_location, crd_location], [], {"bad": path})
    messages = {(f.kind, f.check): f.message for f in found}
    assert "bogus" in messages[("Deployment", "schema")]
    assert "/spec/replicas" in messages[("Deployment", "schema")]
    assert "modle" in messages[("InferenceFactory", "schema")]

    # kube-score reads typed objects: the same Deployment with a well-typed replica count.
    bad_deployment["spec"]["replicas"] = 2
    scorable = v.write_source(tmp_path, "scorable", [bad_deployment])
    scored = v.kube_score(tools.kube_score, KUBERNETES_MINOR, "bad", scorable)
    assert {"container-resources", "container-image-tag"} <= {f.check for f in scored}

    rules = tmp_path / "rules.yaml"
    rules.write_text("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: rate(x[5m]\n")
    check = ["check", "rules", str(rules)]
    assert v.promtool(promtool, "check-rules", "rules.yaml", check, tmp_path)
