"""deploy/gitops: the ApplicationSet points at overlays that exist, one per region, and each
overlay renders (kubectl kustomize, no cluster) with that region for the operator and the
router, and the same FleetRegions and factories everywhere."""

from __future__ import annotations

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
