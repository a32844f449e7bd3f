"""The engines agent: a simulated vLLM engine behind every Ready engine pod of the local fleet.

kwok pods run no containers, so this agent stands in for the kubelet and the vLLM process:
for every Ready pod the operator created (`app.kubernetes.io/managed-by=inference-factory`),
it starts a simulated engine in its region's `factory-sim` process, with the profile of the
node's accelerator and the pod's own engine arguments, and annotates the pod with
`inference.factory.dev/address: 127.0.0.1:<port>`.

The loop is level-based: every second it lists pods and engines and converges the two, so a
restarted agent adopts what runs. An engine whose pod is deleted or unready is drained: it
stops once its running and waiting requests are done (or after `DRAIN_SECONDS`), as vLLM
finishes in-flight streams within the pod's termination grace period. A region whose
`factory-sim` process is down is left down (fault tests kill them on purpose);
`factoryctl dev up` starts it again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from factoryctl.topology import Topology

log = logging.getLogger("factoryctl.engines")

MANAGED = "app.kubernetes.io/managed-by=inference-factory"
ADDRESS_ANNOTATION = "inference.factory.dev/address"
TIMEOUT = httpx.Timeout(5.0)
# How long an engine whose pod is gone may finish its requests: the operator's default
# termination grace period for engine pods is longer; this keeps the local fleet brisk.
DRAIN_SECONDS = 30.0
DRAIN_SETTLE_SECONDS = 3.0


def profile_for(node_labels: dict[str, str]) -> str | None:
    """The simulator profile for a node's accelerator, from the labels real clusters carry."""
    product = node_labels.get("nvidia.com/gpu.product", "")
    if "H100" in product:
        return "h100"
    if "L4" in product:
        return "l4"
    family = (
        node_labels.get("karpenter.k8s.aws/instance-family")
        or node_labels.get("node.kubernetes.io/instance-type", "").split(".")[0]
    )
    return family if family in {"inf2", "trn1"} else None


def _flag(args: list[str], name: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def engine_config(
    pod: dict[str, Any], node_labels: dict[str, str], topology: Topology
) -> dict[str, Any] | None:
    """The EngineConfig (as JSON) that stands behind `pod`, or None if it cannot."""
    profile = profile_for(node_labels)
    region = node_labels.get("topology.kubernetes.io/region")
    containers = pod["spec"].get("containers", [])
    if profile is None or region is None or not containers:
        return None
    engine = containers[0]
    args = [*engine.get("command", []), *engine.get("args", [])]
    served = _flag(args, "--served-model-name") or _flag(args, "--model")
    if served is None and len(args) > 2 and args[:2] == ["vllm", "serve"]:
        served = args[2]
    if served is None:
        return None
    cfg: dict[str, Any] = {
        "name": pod["metadata"]["uid"],
        "model_name": served,
        "profile": profile,
        "region": region,
        "rtt_ms": topology.rtt_table(region),
        "enable_prefix_caching": "--no-enable-prefix-caching" not in args,
        "labels": {
            "namespace": pod["metadata"]["namespace"],
            "pod": pod["metadata"]["name"],
        },
    }
    for flag, key in (
        ("--max-num-seqs", "max_num_seqs"),
        ("--max-model-len", "max_model_len"),
        ("--max-num-batched-tokens", "max_num_batched_tokens"),
    ):
        if (value := _flag(args, flag)) is not None and value.isdigit():
            cfg[key] = int(value)
    return cfg


FLEET_LABELS = ("factory", "pool", "region", "jurisdiction")


def scrape_target(pod: dict[str, Any], port: int) -> dict[str, Any]:
    """A Prometheus file_sd target for one engine, with the fleet's label set."""
    labels = pod["metadata"].get("labels") or {}
    return {
        "targets": [f"127.0.0.1:{port}"],
        "labels": {
            "namespace": pod["metadata"]["namespace"],
            "pod": pod["metadata"]["name"],
            **{key: labels.get(f"inference.factory.dev/{key}", "") for key in FLEET_LABELS},
        },
    }


def _ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp") or not pod["spec"].get("nodeName"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@dataclass
class _Engine:
    id: str
    port: int
    region: str


class EnginesAgent:
    """Converges simulated engines with Ready engine pods, once per `interval`."""

    def __init__(
        self,
        kubeconfig: str,
        topology: Topology,
        control_urls: dict[str, str],
        targets_file: Path,
        interval: float = 1.0,
    ) -> None:
        api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        self.core = client.CoreV1Api(api_client)
        self.topology = topology
        self.control_urls = control_urls
        self.interval = interval
        self.targets_file = targets_file
        self.http = httpx.Client(timeout=TIMEOUT)
        self.stopped = threading.Event()
        self.draining: dict[str, float] = {}  # engine id -> when its drain began

    def _engines(self) -> dict[str, _Engine]:
        engines: dict[str, _Engine] = {}
        for region, url in self.control_urls.items():
            try:
                listed = self.http.get(f"{url}/engines").json()["engines"]
            except httpx.HTTPError:
                continue  # the region's simulator process is down: leave it down
            for item in listed:
                engines[item["id"]] = _Engine(item["id"], int(item["port"]), region)
        return engines

    def converge(self) -> None:
        """One pass: start missing engines, stop orphaned ones, annotate pods."""
        serialize = self.core.api_client.sanitize_for_serialization
        nodes = {
            n["metadata"]["name"]: n["metadata"].get("labels", {})
            for n in serialize(self.core.list_node().items)
        }
        pods = serialize(self.core.list_pod_for_all_namespaces(label_selector=MANAGED).items)
        engines = self._engines()
        wanted: set[str] = set()
        targets: list[dict[str, Any]] = []
        for pod in pods:
            if not _ready(pod):
                continue
            labels = nodes.get(pod["spec"]["nodeName"], {})
            cfg = engine_config(pod, labels, self.topology)
            if cfg is None or cfg["region"] not in self.control_urls:
                continue
            wanted.add(cfg["name"])
            engine = engines.get(cfg["name"])
            if engine is None:
                engine = self._start(cfg)
                if engine is None:
                    continue
            self._annotate(pod, f"127.0.0.1:{engine.port}")
            targets.append(scrape_target(pod, engine.port))
        for engine_id in wanted:
            self.draining.pop(engine_id, None)
        for engine_id, engine in engines.items():
            if engine_id not in wanted:
                self._drain(engine)
        self._write_targets(targets)

    def _drain(self, engine: _Engine) -> None:
        """Stop an engine whose pod is gone once its requests are done, as vLLM does within
        the pod's termination grace period, or at the deadline."""
        now = time.monotonic()
        started = self.draining.setdefault(engine.id, now)
        # Idle only counts once the router has had time to see the pod go (as a preStop
        # sleep gives Service endpoints time to drop a pod before vLLM gets SIGTERM).
        settled = now - started >= DRAIN_SETTLE_SECONDS
        if (settled and self._idle(engine)) or now - started > DRAIN_SECONDS:
            self.draining.pop(engine.id, None)
            self._stop(engine)

    def _idle(self, engine: _Engine) -> bool:
        try:
            text = self.http.get(f"http://127.0.0.1:{engine.port}/metrics").text
        except httpx.HTTPError:
            return True
        busy = sum(
            float(sample.value)
            for family in text_string_to_metric_families(text)
            if family.name in {"vllm:num_requests_running", "vllm:num_requests_waiting"}
            for sample in family.samples
        )
        return busy == 0

    def _write_targets(self, targets: list[dict[str, Any]]) -> None:
        text = json.dumps(sorted(targets, key=lambda t: t["targets"][0]), indent=1)
        if self.targets_file.exists() and self.targets_file.read_text() == text:
            return
        self.targets_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.targets_file)

    def _start(self, cfg: dict[str, Any]) -> _Engine | None:
        url = self.control_urls[cfg["region"]]
        try:
            reply = self.http.post(f"{url}/engines", json=cfg)
        except httpx.HTTPError as exc:
            log.warning("cannot start engine for %s: %s", cfg["labels"]["pod"], exc)
            return None
        if reply.status_code != 201:
            log.warning("engine for %s refused: %s", cfg["labels"]["pod"], reply.text)
            return None
        log.info("engine for %s/%s on port %s", cfg["labels"]["namespace"],
                 cfg["labels"]["pod"], reply.json()["port"])  # fmt: skip
        return _Engine(cfg["name"], int(reply.json()["port"]), cfg["region"])

    def _stop(self, engine: _Engine) -> None:
        try:
            self.http.delete(f"{self.control_urls[engine.region]}/engines/{engine.id}")
        except httpx.HTTPError as exc:
            log.warning("cannot stop engine %s: %s", engine.id, exc)

    def _annotate(self, pod: dict[str, Any], address: str) -> None:
        annotations = pod["metadata"].get("annotations") or {}
        if annotations.get(ADDRESS_ANNOTATION) == address:
            return
        body = {"metadata": {"annotations": {ADDRESS_ANNOTATION: address}}}
        try:
            self.core.patch_namespaced_pod(
                pod["metadata"]["name"], pod["metadata"]["namespace"], body
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.converge()
            except Exception:
                log.exception("engines agent pass failed; retrying")
            self.stopped.wait(self.interval)
