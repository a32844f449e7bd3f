"""Operator at scale: N InferenceFactories x 3 pools on the local control plane.

Measured, in one run and on one cluster:
- **operator**: apply N factories (3 pools, 1 H100 replica each) with `factory-operator`
  running; time until every factory is Ready=True; the operator's write requests during
  convergence and during an idle minute (from the API server's audit log, by user agent, and
  from the operator's own counter); its read requests (list, get) per reconcile during that
  idle minute, the steady state (audit log, against its reconcile counter); its peak RSS
  (VmHWM).
- **baseline**: the same 3N Deployments applied directly with `kubectl apply`, no operator:
  the time the control plane itself needs to make them Available. The ratio of the two is the
  operator's cost; absolute times depend on the machine.

The fleet's API server logs reads too for this bench (``AUDIT_POLICY``; `factoryctl dev`
logs writes only), and its node pools grow with N (`topology`).

Run: `.venv/bin/python bench/operator_scale/run.py [--factories 100] [--idle 60]`.
Writes `results/results.json` and `results/results.md` beside this file (the last run), and
`results/<N>-factories.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REGIONS = ("eu-west-1", "eu-central-1", "us-east-1")
GPUS_PER_NODE = 8  # p5.48xlarge
OPERATOR_AGENTS = ("factory-operator", "kopf")
READS = ("get", "list")
# The fleet's audit policy with reads added (Metadata level: who read what). `factoryctl dev
# up` has no option for it, so the bench runs factoryctl with its policy replaced.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata",
         "verbs": ["create", "update", "patch", "delete", "deletecollection", *READS]},
        {"level": "None"},
    ],
}  # fmt: skip
# Also: `factoryctl dev up`'s wait for Ready nodes lists every node once per node
# (NodesComponent.up calls _observed inside all(...)): at 414 nodes, minutes of 2 MB lists.
# Within the bench, one list serves the calls of one second. And its kubectl calls get 300 s
# instead of 60: applying 414 nodes took longer than 60 s on the shared, loaded machine.
FACTORYCTL_WITH_READS_AUDIT = """
import json, sys, time
import factoryctl.components.cluster as cluster
from factoryctl.component import Kubectl
from factoryctl.components.nodes import NodesComponent
cluster.AUDIT_POLICY = json.loads(sys.argv.pop(1))
Kubectl.run.__kwdefaults__["timeout"] = 300
observed, seen = NodesComponent._observed, {}
def once_a_second(self, ctx):
    if time.monotonic() - seen.get("at", -9.0) > 1.0:
        seen.update(at=time.monotonic(), nodes=observed(self, ctx))
    return seen["nodes"]
NodesComponent._observed = once_a_second
from factoryctl.main import app
app()
"""


def topology(factories: int) -> dict[str, Any]:
    """bench's topology.yaml with node pools big enough for every pool's replica (+10%)."""
    base = yaml.safe_load((HERE / "topology.yaml").read_text())
    nodes = max(14, -(-factories * 11 // 10 // GPUS_PER_NODE))
    per_pool = 50  # factoryctl's ceiling per node pool
    for region in base["regions"]:
        template = region["nodePools"][0]
        name = template["name"]
        region["nodePools"] = [
            {**template, "name": f"{name}-{i}" if nodes > per_pool else name,
             "count": min(per_pool, nodes - i * per_pool)}
            for i in range(-(-nodes // per_pool))
        ]  # fmt: skip
    return dict(base)


def factory(index: int, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "inference.factory.dev/v1alpha1", "kind": "InferenceFactory",
        "metadata": {"name": f"model-{index:03d}", "namespace": namespace},
        "spec": {
            "model": {"name": f"model-{index:03d}", "uri": "hf://meta-llama/Llama-3.1-8B-Instruct"},
            "engine": {"args": {"maxModelLen": 8192, "maxNumSeqs": 64}},
            "pools": [
                {"name": f"p{r}", "region": region,
                 "accelerator": {"kind": "nvidia", "type": "H100", "count": 1},
                 "replicas": {"min": 1, "max": 2}}
                for r, region in enumerate(REGIONS)
            ],
        },
    }  # fmt: skip


class Bench:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "FACTORY_HOME": str(home)}
        sys.path.insert(0, str(ROOT / "cli"))
        from factoryctl.home import FleetHome  # noqa: PLC0415
        from factoryctl.toolchain import find_tools  # noqa: PLC0415

        tools = find_tools()
        if tools is None:
            raise SystemExit("run `factoryctl dev tools` first")
        self.kubectl_bin = str(tools.kubectl)
        self.kubeconfig = FleetHome(home).kubeconfig
        self.audit = self.kubeconfig.parent / "logs" / "audit.log"
        # `kubectl apply` of 1,000 factories took over 300 s on the loaded machine (2.2 a second
        # at 16:52 UTC on 2026-12-03): main() allows 3 s a factory (the baseline applies its 3
        # Deployments), 300 s at least.
        self.kubectl_timeout = 300.0

    def factoryctl(self, *args: str) -> None:
        subprocess.run([sys.executable, "-c", FACTORYCTL_WITH_READS_AUDIT,
                        json.dumps(AUDIT_POLICY), "dev", *args], env=self.env,
                       check=True, timeout=900)  # fmt: skip

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        return subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args], input=input_text,
            capture_output=True, text=True, check=True, timeout=self.kubectl_timeout,
        ).stdout  # fmt: skip

    def apply(self, items: list[dict[str, Any]]) -> None:
        self.kubectl(
            "apply",
            "--server-side",
            "-f",
            "-",
            input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
        )

    def audit_lines(self) -> int:
        return sum(1 for _ in self.audit.open()) if self.audit.exists() else 0

    def operator_requests(self, since_line: int) -> Counter[tuple[str, str]]:
        """The operator's requests (its client's and kopf's) by (verb, resource)."""
        count: Counter[tuple[str, str]] = Counter()
        with self.audit.open() as log:
            for number, line in enumerate(log):
                if number < since_line:
                    continue
                entry = json.loads(line)
                if entry.get("userAgent", "").startswith(OPERATOR_AGENTS):
                    count[(entry["verb"], (entry.get("objectRef") or {}).get("resource", ""))] += 1
        return count

    def wait(self, predicate: Any, timeout: float, what: str, every: float = 0.5) -> float:
        started = time.monotonic()
        while not predicate():
            if time.monotonic() - started > timeout:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(every)
        return time.monotonic() - started


def _ready_factories(bench: Bench, namespace: str) -> int:
    items = json.loads(bench.kubectl("get", "inferencefactories", "-n", namespace, "-o",
                                     "json"))["items"]  # fmt: skip
    return sum(
        any(c["type"] == "Ready" and c["status"] == "True"
            for c in (i.get("status") or {}).get("conditions", []))
        for i in items
    )  # fmt: skip


def _available_deployments(bench: Bench, namespace: str) -> int:
    items = json.loads(bench.kubectl("get", "deployments", "-n", namespace, "-o", "json"))["items"]
    return sum((i.get("status") or {}).get("availableReplicas", 0) >= 1 for i in items)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _metric(url: str, name: str) -> float:
    text = httpx.get(url, timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))  # fmt: skip


def _jurisdiction(region: str) -> str:
    return "US" if region == "us-east-1" else "EU"


def run_baseline(bench: Bench, factories: list[dict[str, Any]]) -> dict[str, Any]:
    """The same Deployments, applied directly: what the control plane alone needs."""
    sys.path.insert(0, str(ROOT / "operator"))
    from factory_operator.api import FleetRegion, InferenceFactory  # noqa: PLC0415
    from factory_operator.plan import OperatorSettings, plan_factory  # noqa: PLC0415
    from factory_operator.plan.observed import Observed  # noqa: PLC0415

    regions = {
        r: FleetRegion.model_validate({"metadata": {"name": r},
                                       "spec": {"jurisdiction": _jurisdiction(r)}})
        for r in REGIONS
    }  # fmt: skip
    deployments = []
    for original in factories:
        meta = {**original["metadata"], "namespace": "baseline", "uid": "u"}
        raw = {**original, "metadata": meta}
        plan = plan_factory(InferenceFactory.model_validate(raw), regions,
                            Observed(now="2026-01-01T00:00:00Z"), OperatorSettings())  # fmt: skip
        for manifest in plan.apply:
            if manifest["kind"] == "Deployment":
                manifest["metadata"].pop("ownerReferences", None)
                deployments.append(manifest)
    # The operator's factories go first: their pods hold the accelerators.
    bench.kubectl("delete", "namespace", "bench", "--wait=false")
    bench.wait(lambda: not bench.kubectl("get", "pods", "-n", "bench", "-o", "name").strip(),
               600, "the operator run's pods to go")  # fmt: skip
    bench.kubectl("create", "namespace", "baseline")
    started = time.monotonic()
    bench.apply(deployments)
    bench.wait(lambda: _available_deployments(bench, "baseline") == len(deployments), 1800,
               "baseline Deployments", every=_poll(len(deployments) // 3))  # fmt: skip
    return {"deployments": len(deployments),
            "seconds_to_available": round(time.monotonic() - started, 2)}  # fmt: skip


def run_operator(bench: Bench, factories: list[dict[str, Any]], idle: float) -> dict[str, Any]:
    bench.kubectl("create", "namespace", "bench")
    metrics_port = 19000 + os.getpid() % 1000
    log = (bench.home / "operator.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "factory-operator"), "--namespace", "bench",
         "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port),
         "--liveness", "", "--log-format", "json"],
        env={**bench.env, "KUBECONFIG": str(bench.kubeconfig)}, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        bench.wait(lambda: _up(url), 60, "the operator's metrics")
        mark = bench.audit_lines()
        started = time.monotonic()
        bench.apply(factories)
        bench.wait(lambda: _ready_factories(bench, "bench") == len(factories), 1800,
                   "every factory Ready", every=_poll(len(factories)))  # fmt: skip
        converge_seconds = time.monotonic() - started
        converge = bench.operator_requests(mark)
        own_converge = _metric(url, "factory_operator_api_writes_total")
        reconciles_converge = _metric(url, "factory_operator_reconciles_total")
        mark = bench.audit_lines()
        time.sleep(idle)  # the idle window itself is what is measured
        steady = bench.operator_requests(mark)
        own_idle = _metric(url, "factory_operator_api_writes_total") - own_converge
        reconciles = _metric(url, "factory_operator_reconciles_total") - reconciles_converge
        lists = sum(n for (verb, _), n in steady.items() if verb == "list")
        gets = sum(n for (verb, _), n in steady.items() if verb == "get")
        return {
            "factories": len(factories), "pools": 3 * len(factories),
            "seconds_to_all_ready": round(converge_seconds, 2),
            "writes_during_convergence_audit": sum(
                n for (verb, _), n in converge.items() if verb not in READS),
            "writes_during_convergence_own_counter": own_converge,
            "reads_during_convergence_audit": {f"{v} {r}": n for (v, r), n in
                                               sorted(converge.items()) if v in READS},
            "reconciles_during_convergence": reconciles_converge,
            "idle_seconds": idle,
            "writes_while_idle_audit": sum(n for (v, _), n in steady.items() if v not in READS),
            "writes_while_idle_own_counter": own_idle,
            "reconciles_while_idle": reconciles,
            "lists_while_idle_audit": lists, "gets_while_idle_audit": gets,
            "reads_while_idle_audit": {f"{v} {r}": n for (v, r), n in sorted(steady.items())
                                       if v in READS},
            "lists_per_reconcile_idle": round(lists / reconciles, 3) if reconciles else None,
            "reads_per_reconcile_idle": round((lists + gets) / reconciles, 3)
            if reconciles else None,
            "peak_rss_mib": round(_peak_rss_mib(proc.pid), 1),
        }  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _poll(objects: int) -> float:
    # Each poll lists every object: at 1,000 factories, a 0.5 s poll would load the API server
    # more than the operator does.
    return max(0.5, objects / 400)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factories", type=int, default=100)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    # Stopped from outside (`timeout`), the run still takes its fleet down (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        bench = Bench(Path(tmp))
        fleet = Path(tmp) / "topology.yaml"
        fleet.write_text(yaml.safe_dump(topology(args.factories)))
        try:
            bench.factoryctl("up", "--only", "toolchain,cluster,nodes,crds",
                             "--topology", str(fleet))  # fmt: skip
            bench.apply([{"apiVersion": "inference.factory.dev/v1alpha1", "kind": "FleetRegion",
                          "metadata": {"name": r},
                          "spec": {"jurisdiction": _jurisdiction(r)}}
                         for r in REGIONS])  # fmt: skip
            factories = [factory(i, "bench") for i in range(args.factories)]
            bench.kubectl_timeout = max(300.0, 3.0 * args.factories)
            operator = run_operator(bench, factories, args.idle)
            # Kept at once: the baseline can still fail or be cut short.
            out = HERE / "results"
            out.mkdir(exist_ok=True)
            (out / f"{args.factories}-factories-operator.json").write_text(
                json.dumps(operator, indent=2)
            )
            baseline = run_baseline(bench, factories)
        finally:
            bench.factoryctl("down", "--topology", str(fleet))
    ratio = operator["seconds_to_all_ready"] / max(baseline["seconds_to_available"], 0.01)
    result = {"operator": operator, "baseline_kubectl_apply": baseline,
              "ratio_operator_to_baseline": round(ratio, 2)}  # fmt: skip
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    for stem in ("results", f"{args.factories}-factories"):
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
        (out / f"{stem}.md").write_text(render(result))
    print(render(result))


def render(result: dict[str, Any]) -> str:
    op, base = result["operator"], result["baseline_kubectl_apply"]
    return "\n".join([
        "# Operator at scale", "",
        f"{op['factories']} InferenceFactories x 3 pools, 1 H100 replica each, on the local "
        "control plane (kwok nodes), one run.", "",
        "| measure | value |", "|---|---|",
        f"| operator: time until every factory Ready | {op['seconds_to_all_ready']} s |",
        f"| baseline: same {base['deployments']} Deployments by kubectl, time until Available "
        f"| {base['seconds_to_available']} s |",
        f"| ratio operator / baseline | {result['ratio_operator_to_baseline']} |",
        "| operator writes during convergence (audit log) | "
        f"{op['writes_during_convergence_audit']} |",
        f"| operator writes during convergence (own counter) | "
        f"{op['writes_during_convergence_own_counter']:.0f} |",
        f"| operator writes during {op['idle_seconds']:.0f} s idle (audit log) | "
        f"{op['writes_while_idle_audit']} |",
        "| operator writes during idle (own counter) | "
        f"{op['writes_while_idle_own_counter']:.0f} |",
        f"| operator reconciles during {op['idle_seconds']:.0f} s idle | "
        f"{op['reconciles_while_idle']:.0f} |",
        f"| operator list requests during idle (audit log) | {op['lists_while_idle_audit']} |",
        f"| operator list requests per reconcile, idle | {op['lists_per_reconcile_idle']} |",
        f"| operator reads (list + get) per reconcile, idle | {op['reads_per_reconcile_idle']} |",
        f"| operator reads during convergence (audit log) | "
        f"{', '.join(f'{k}: {n}' for k, n in op['reads_during_convergence_audit'].items())} |",
        f"| operator peak RSS | {op['peak_rss_mib']} MiB |", "",
        "The audit log counts every write the API server received from the operator's client "
        "and from kopf (finalizers, annotations); the operator's own counter counts only its "
        "client's writes.", "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
