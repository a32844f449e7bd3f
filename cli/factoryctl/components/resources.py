"""Components `crds` and `samples`: the API of Inference Factory and the local fleet's objects.

`crds` applies `crds/` server-side and waits until the API server serves them. `samples`
applies one FleetRegion per region of the local topology (jurisdiction and nodeLabelScheme from
the topology; pricing and power from `deploy/examples/fleetregions.yaml` where it names the
same region) and the sample InferenceFactories of `deploy/examples/`, creating their namespaces,
plus `deploy/local/tiny-llama.yaml` when the topology has a real-engine pool (its factory selects
and tolerates those nodes only).

FleetRegions follow the topology on every `up`. A sample factory is created only when it is
missing: once it exists it is the user's to change (`kubectl edit`, a bench's patch), and a
later `up` keeps it as it is (`down` and `up` again restores the samples).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from factoryctl.component import ComponentStatus, FleetContext
from factoryctl.topology import REPO_ROOT

CRDS_DIR = REPO_ROOT / "crds"
EXAMPLES_DIR = REPO_ROOT / "deploy" / "examples"
REAL_ENGINE_SAMPLE = REPO_ROOT / "deploy" / "local" / "tiny-llama.yaml"
CRD_NAMES = ("fleetregions.inference.factory.dev", "inferencefactories.inference.factory.dev")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


class CrdsComponent:
    """The CustomResourceDefinitions, generated from the operator's models."""

    name = "crds"

    def up(self, ctx: FleetContext) -> None:
        kubectl = ctx.kubectl()
        kubectl.run("apply", "--server-side", "--field-manager=factoryctl", "-f", str(CRDS_DIR))
        kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                    *(f"crd/{name}" for name in CRD_NAMES))  # fmt: skip

    def down(self, ctx: FleetContext) -> None:
        """CRDs go with the cluster."""

    def status(self, ctx: FleetContext) -> ComponentStatus:
        if ctx.tools_if_present() is None or not ctx.home.kubeconfig.exists():
            return ComponentStatus(self.name, "stopped", "no cluster")
        done = ctx.kubectl().run("get", "crd", *CRD_NAMES, check=False, timeout=10)
        if done.returncode != 0:
            return ComponentStatus(self.name, "stopped", "not installed")
        return ComponentStatus(self.name, "running", "FleetRegion, InferenceFactory")


def fleet_regions(ctx: FleetContext) -> list[dict[str, Any]]:
    """FleetRegions of the local topology, priced like the examples."""
    examples = {
        d["metadata"]["name"]: d["spec"]
        for d in _documents(EXAMPLES_DIR / "fleetregions.yaml")
        if d.get("kind") == "FleetRegion"
    }
    regions = []
    for region in ctx.topology.regions:
        spec: dict[str, Any] = {"jurisdiction": region.jurisdiction}
        if region.nodeLabelScheme:
            spec["nodeLabelScheme"] = region.nodeLabelScheme
        for key in ("pricing", "power"):
            if key in examples.get(region.name, {}):
                spec[key] = examples[region.name][key]
        regions.append({
            "apiVersion": "inference.factory.dev/v1alpha1", "kind": "FleetRegion",
            "metadata": {"name": region.name}, "spec": spec,
        })  # fmt: skip
    return regions


def sample_factories(real_engine: bool = False) -> list[dict[str, Any]]:
    """The InferenceFactories of deploy/examples/, and the real-engine sample if asked."""
    paths = sorted(EXAMPLES_DIR.glob("*.yaml")) + ([REAL_ENGINE_SAMPLE] if real_engine else [])
    found = []
    for path in paths:
        found += [d for d in _documents(path) if d.get("kind") == "InferenceFactory"]
    return found


class SamplesComponent:
    """FleetRegions of the topology and the sample factories."""

    name = "samples"

    def up(self, ctx: FleetContext) -> None:
        kubectl = ctx.kubectl()
        factories = sample_factories(real_engine=bool(ctx.topology.real_engine_pools()))
        for namespace in sorted({f["metadata"].get("namespace", "default") for f in factories}):
            manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            kubectl.run("apply", "--server-side", "--field-manager=factoryctl", "-f", "-",
                        input_text=json.dumps(manifest))  # fmt: skip
        listed = kubectl.run("get", "inferencefactories", "-A", "-o", "json").stdout
        existing = {
            (f["metadata"].get("namespace"), f["metadata"]["name"])
            for f in json.loads(listed)["items"]
        }
        missing = [
            f
            for f in factories
            if (f["metadata"].get("namespace", "default"), f["metadata"]["name"]) not in existing
        ]
        items = [*fleet_regions(ctx), *missing]
        kubectl.run(
            "apply",
            "--server-side",
            "--field-manager=factoryctl",
            "-f",
            "-",
            input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )
        kept = len(factories) - len(missing)
        ctx.progress(f"[samples] {len(items) - len(missing)} FleetRegions, "
                     f"{len(missing)} InferenceFactories created"
                     + (f", {kept} kept as they are" if kept else ""))  # fmt: skip

    def down(self, ctx: FleetContext) -> None:
        """Objects go with the cluster."""

    def status(self, ctx: FleetContext) -> ComponentStatus:
        if ctx.tools_if_present() is None or not ctx.home.kubeconfig.exists():
            return ComponentStatus(self.name, "stopped", "no cluster")
        done = ctx.kubectl().run("get", "inferencefactories", "-A", "-o", "json",
                                 check=False, timeout=10)  # fmt: skip
        if done.returncode != 0:
            return ComponentStatus(self.name, "stopped", "not installed")
        items = json.loads(done.stdout)["items"]
        return ComponentStatus(self.name, "running", f"{len(items)} InferenceFactories")
