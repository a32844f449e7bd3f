"""deploy/gitops: the ApplicationSet points at overlays that exist, one per region, and each
overlay renders (kubectl kustomize, no cluster) with that region for the operator and the
router, and the same FleetRegions and factories everywhere; what Argo CD needs to adopt it
safely (sync options, a pinned revision, its own least-privilege AppProject); the monitoring
objects in the render."""

from __future__ import annotations

import functools

import yaml

from tests.unit.chart.chart_tools import GITOPS, REGIONS, ROOT, Obj, by_name, run, toolchain


def test_applicationset_points_at_existing_overlays() -> None:
    appset = yaml.safe_load((GITOPS / "applicationset.yaml").read_text())
    assert appset["kind"] == "ApplicationSet"
    elements = appset["spec"]["generators"][0]["list"]["elements"]
    assert sorted(e["region"] for e in elements) == sorted(REGIONS)
    template = appset["spec"]["template"]["spec"]["source"]["path"]
    for element in elements:
        path = template.replace("{{.region}}", element["region"])
        assert (ROOT / path / "kustomization.yaml").is_file(), path
    overlays = sorted(p.name for p in (GITOPS / "overlays").iterdir())
    assert overlays == sorted(REGIONS)


@functools.cache
def _render(region: str) -> list[Obj]:
    done = run([str(toolchain().kubectl), "kustomize", str(GITOPS / "overlays" / region)])
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _env(objs: list[Obj], component: str) -> dict[str, str]:
    container = by_name(objs, "Deployment", component)["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def test_overlays_render_with_their_region() -> None:
    factories = None
    for region in REGIONS:
        objs = _render(region)
        assert _env(objs, "operator")["FACTORY_OPERATOR_REGION"] == region
        assert _env(objs, "router")["FACTORY_ROUTER_REGION"] == region
        assert "replaced-by-overlay" not in yaml.safe_dump_all(objs)
        mine = sorted(
            (o["kind"], o["metadata"]["name"])
            for o in objs
            if o["kind"] in ("FleetRegion", "InferenceFactory")
        )
        assert len(mine) >= 6
        factories = factories or mine
        assert mine == factories, "every region applies the same factories"


ARGO_KEEP = "Prune=false,Delete=false"


def _appset() -> Obj:
    doc: Obj = yaml.safe_load((GITOPS / "applicationset.yaml").read_text())
    return doc


def _project() -> Obj:
    doc: Obj = yaml.safe_load((GITOPS / "appproject.yaml").read_text())
    return doc


def test_argocd_never_prunes_or_deletes_crds_and_namespaces() -> None:
    for region in REGIONS:
        objs = _render(region)
        kept = [o for o in objs if o["kind"] in ("CustomResourceDefinition", "Namespace")]
        assert len(kept) == 4, [o["metadata"]["name"] for o in kept]
        for obj in kept:
            annotations = obj["metadata"]["annotations"]
            assert annotations["argocd.argoproj.io/sync-options"] == ARGO_KEEP, obj["metadata"]
        # Nothing else carries it: the rest is pruned as usual when it leaves Git.
        others = [o for o in objs if o not in kept]
        assert not any(
            "argocd.argoproj.io/sync-options" in (o["metadata"].get("annotations") or {})
            for o in others
        )


def test_applicationset_preserves_resources_and_pins_the_revision() -> None:
    spec = _appset()["spec"]
    assert spec["syncPolicy"]["preserveResourcesOnDeletion"] is True
    template = spec["template"]["spec"]
    revision = template["source"]["targetRevision"]
    chart = yaml.safe_load((ROOT / "charts" / "inference-factory" / "Chart.yaml").read_text())
    assert revision == f"v{chart['appVersion']}", "a release tag, never HEAD or a branch"
    assert template["project"] == _project()["metadata"]["name"] != "default"


def test_appproject_allows_exactly_what_the_overlays_render() -> None:
    project = _project()["spec"]
    appset = _appset()["spec"]
    assert project["sourceRepos"] == [appset["template"]["spec"]["source"]["repoURL"]]
    servers = {e["server"] for e in appset["generators"][0]["list"]["elements"]}
    rendered_kinds: set[tuple[str, str, bool]] = set()
    namespaces: set[str] = set()
    for region in REGIONS:
        for obj in _render(region):
            group = obj["apiVersion"].rpartition("/")[0]
            namespace = obj["metadata"].get("namespace")
            rendered_kinds.add((group, obj["kind"], namespace is None))
            if namespace:
                namespaces.add(namespace)
    cluster = {(k["group"], k["kind"]) for k in project["clusterResourceWhitelist"]}
    namespaced = {(k["group"], k["kind"]) for k in project["namespaceResourceWhitelist"]}
    assert cluster == {(g, k) for g, k, scoped in rendered_kinds if scoped}
    assert namespaced == {(g, k) for g, k, scoped in rendered_kinds if not scoped}
    destinations = {(d["server"], d["namespace"]) for d in project["destinations"]}
    assert destinations == {(s, n) for s in servers for n in namespaces}
    assert not any("*" in str(v) for v in project.values())
    # The Applications' own destination is permitted too.
    target = appset["template"]["spec"]["destination"]
    assert all((s, target["namespace"]) in destinations for s in servers)


def test_render_carries_the_monitoring_objects() -> None:
    """The clusters run the Prometheus Operator: each gets its alerts and scrape targets."""
    alerts = yaml.safe_load((ROOT / "deploy" / "monitoring" / "alerts.yaml").read_text())
    for region in REGIONS:
        objs = _render(region)
        monitors = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceMonitor"}
        assert monitors == {"inference-factory-operator", "inference-factory-router"}
        (rule,) = [o for o in objs if o["kind"] == "PrometheusRule"]
        assert rule["spec"] == alerts
        hooks = [o["metadata"]["name"] for o in objs if o["metadata"]["name"].endswith("-test")]
        assert not hooks, "no `helm test` Pod or its NetworkPolicy in GitOps"
