"""The engines agent: a simulated vLLM engine behind every running engine pod of the local fleet.

kwok pods run no containers, so this agent stands in for the kubelet, the vLLM process and
its readiness probe: for every running pod the operator created
(`app.kubernetes.io/managed-by=inference-factory`), it starts a simulated engine in its
region's `factory-sim` process, with the profile of the node's accelerator and the pod's
own engine arguments, and once that engine answers `/health` it annotates the pod with
`inference.factory.dev/address: 127.0.0.1:<port>` and `inference.factory.dev/engine-ready:
"true"`. The cluster's kwok Stages (`factoryctl.components.stages`) keep an engine pod
Running but not Ready until that annotation is set, so a Deployment rollout waits for an
engine that serves, as it waits for vLLM's readiness probe on a real cluster.

A pod may ask its engine to play a bad revision (slower, erroring, answering otherwise, slow
to load; see `factory_sim.engine.config.Behaviour`), with the annotation
`inference.factory.dev/sim-behaviour: slow=3,error_rate=0.05,answer_seed=b,load_s=5` or the
same text in the engine container's environment variable `FACTORY_SIM_BEHAVIOUR` (which the
factory's `engine.env` sets, so it is part of the revision; vLLM ignores it). Only the local
fleet reads either.

Pods on the nodes of a real-engine pool (topology `engine: vllm`) get the real vLLM instead,
started from the pod's own command line (`factoryctl.agents.real_engine`), when the fleet runs
with the real engine on; its pod turns Ready the same way, turns not Ready again
(`engine-ready: "false"`) if the engine exits, and gets an Event with the engine's own last
words whenever it fails.

The loop is level-based: every second it lists pods and engines and converges the two, so a
restarted agent adopts what runs. An engine whose pod is deleted is drained: it stops once
its running and waiting requests are done (or after `DRAIN_SECONDS`), as vLLM finishes
in-flight streams within the pod's termination grace period. A region whose `factory-sim`
process is down is left down (fault tests kill them on purpose); `factoryctl dev up` starts
it again, and the agent then starts the engines of that region's pods again.
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

from factory_contract import metrics, names
from factoryctl.agents.real_engine import NotServable, RealEngines
from factoryctl.topology import ENGINE_LABEL, Topology

log = logging.getLogger("factoryctl.engines")

# The keys are the contract's (factory_contract.names), under the operator's default prefix.
MANAGED = names.MANAGED_BY_SELECTOR
ADDRESS_ANNOTATION = names.prefixed(names.ADDRESS_ANNOTATION)
READY_ANNOTATION = names.prefixed(names.ENGINE_READY_ANNOTATION)
BEHAVIOUR_ANNOTATION = names.prefixed(names.SIM_BEHAVIOUR_ANNOTATION)
BEHAVIOUR_ENV = "FACTORY_SIM_BEHAVIOUR"
BEHAVIOUR_KEYS = {
    "slow": float, "error_rate": float, "error_status": int, "answer_seed": str, "load_s": float,
}  # fmt: skip
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


def parse_behaviour(text: str) -> dict[str, float | int | str]:
    """`slow=3,error_rate=0.05,answer_seed=b` -> the simulator's Behaviour fields.

    Raises ValueError naming what is wrong (an unknown key, a value that is not a number);
    the simulator checks the ranges."""
    parsed: dict[str, float | int | str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (piece.strip() for piece in item.partition("="))
        if not sep or key not in BEHAVIOUR_KEYS:
            known = ", ".join(BEHAVIOUR_KEYS)
            raise ValueError(f"{item!r} is not key=value with a key among {known}")
        try:
            parsed[key] = BEHAVIOUR_KEYS[key](value)
        except ValueError:
            raise ValueError(f"{key}={value!r} is not a {BEHAVIOUR_KEYS[key].__name__}") from None
    return parsed


def _behaviour_text(pod: dict[str, Any], engine: dict[str, Any]) -> str | None:
    annotations = pod["metadata"].get("annotations") or {}
    if BEHAVIOUR_ANNOTATION in annotations:
        return str(annotations[BEHAVIOUR_ANNOTATION])
    for env in engine.get("env") or []:
        if env.get("name") == BEHAVIOUR_ENV and env.get("value") is not None:
            return str(env["value"])
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
    if (behaviour := _behaviour_text(pod, engine)) is not None:
        cfg["behaviour"] = parse_behaviour(behaviour)
    return cfg


EVENT_MESSAGE_CHARS = 1024  # the kubelet's Events are about as long


def _clip(message: str) -> str:
    """An Event's message: its first line whole (what happened), then as much of the end
    (the engine's last words) as fits."""
    if len(message) <= EVENT_MESSAGE_CHARS:
        return message
    head, _, rest = message.partition("\n")
    room = max(EVENT_MESSAGE_CHARS - len(head) - 5, 0)
    return f"{head}\n...\n{rest[-room:]}" if room else head[:EVENT_MESSAGE_CHARS]


def scrape_target(
    pod: dict[str, Any], port: int, prefix: str = names.DEFAULT_PREFIX
) -> dict[str, Any]:
    """A Prometheus file_sd target for one engine, with the fleet's label set (the pool
    labels read under the operator's label prefix)."""
    labels = pod["metadata"].get("labels") or {}
    return {
        "targets": [f"127.0.0.1:{port}"],
        "labels": {
            metrics.NAMESPACE_SERIES_LABEL: pod["metadata"]["namespace"],
            metrics.POD_SERIES_LABEL: pod["metadata"]["name"],
            **metrics.pool_series_labels(labels, prefix),
        },
    }


def _running(pod: dict[str, Any]) -> bool:
    """Scheduled, started and not being deleted: its engine should run (Ready or not)."""
    if pod["metadata"].get("deletionTimestamp") or not pod["spec"].get("nodeName"):
        return False
    return (pod.get("status") or {}).get("phase") == "Running"


@dataclass
class _Engine:
    id: str
    port: int
    region: str


class EnginesAgent:
    """Converges simulated engines with running engine pods, once per `interval`."""

    def __init__(
        self,
        kubeconfig: str,
        topology: Topology,
        control_urls: dict[str, str],
        targets_file: Path,
        *,
        interval: float = 1.0,
        core: client.CoreV1Api | None = None,
        real: RealEngines | None = None,
    ) -> None:
        if core is None:  # tests pass their own API (a fake of the calls used here)
            api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            core = client.CoreV1Api(api_client)
        self.core = core
        self.topology = topology
        self.control_urls = control_urls
        self.interval = interval
        self.targets_file = targets_file
        self.http = httpx.Client(timeout=TIMEOUT)
        self.stopped = threading.Event()
        self.draining: dict[str, float] = {}  # engine id -> when its drain began
        self.real = real  # None: the simulator serves real-engine nodes too
        self.real_pods: dict[str, dict[str, Any]] = {}  # uid -> the pod as last seen running
        self.reported: set[str] = set()  # uids whose unservable command was reported

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
        wanted_real: set[str] = set()
        targets: list[dict[str, Any]] = []
        for pod in pods:
            if not _running(pod):
                continue
            labels = nodes.get(pod["spec"]["nodeName"], {})
            try:  # one pod's trouble never stops the others' engines
                if self.real is not None and labels.get(ENGINE_LABEL) == "vllm":
                    wanted_real.add(pod["metadata"]["uid"])
                    self._converge_real(self.real, pod, targets)
                else:
                    self._converge_sim(pod, labels, engines, wanted, targets)
            except Exception:
                log.exception("pod %s/%s: pass failed", pod["metadata"]["namespace"],
                              pod["metadata"]["name"])  # fmt: skip
        for engine_id in wanted:
            self.draining.pop(engine_id, None)
        for engine_id, engine in engines.items():
            if engine_id not in wanted:
                self._drain(engine)
        if self.real is not None:
            for uid in self.real.uids() - wanted_real:
                if self.real.release(uid, self.real_pods.get(uid)):
                    self.real_pods.pop(uid, None)
        self._write_targets(targets)

    def _converge_sim(
        self,
        pod: dict[str, Any],
        labels: dict[str, str],
        engines: dict[str, _Engine],
        wanted: set[str],
        targets: list[dict[str, Any]],
    ) -> None:
        """A simulated engine for a pod: start it in its region's simulator, probe it."""
        try:
            cfg = engine_config(pod, labels, self.topology)
        except ValueError as exc:
            log.warning("pod %s: %s: %s", pod["metadata"]["name"], BEHAVIOUR_ANNOTATION, exc)
            return
        if cfg is None or cfg["region"] not in self.control_urls:
            return
        wanted.add(cfg["name"])
        engine = engines.get(cfg["name"])
        if engine is None:
            engine = self._start(cfg)
            if engine is None:
                return
        targets.append(scrape_target(pod, engine.port))
        # The readiness probe: the pod turns Ready (kwok's engine-pod-ready Stage) once its
        # engine answers; an engine still loading is asked again next pass.
        if self._announced(pod, engine) or self._answers(engine):
            self._annotate(pod, f"127.0.0.1:{engine.port}")

    def _converge_real(
        self, real: RealEngines, pod: dict[str, Any], targets: list[dict[str, Any]]
    ) -> None:
        """A real engine for a pod on a real-engine node: start, probe, report its failure."""
        uid = pod["metadata"]["uid"]
        self.real_pods[uid] = pod
        try:
            found = real.poll(pod)
        except NotServable as exc:
            if uid not in self.reported:
                self.reported.add(uid)
                log.warning("pod %s: %s", pod["metadata"]["name"], exc)
                self._event(pod, "EngineNotServable", str(exc))
            return
        if found.exited_now is not None:
            words = found.exited_now
            self._event(pod, "EngineFailed", f"vLLM exited; its last log lines:\n{words}")
            self._set_ready(pod, None, ready=False)
            return
        if not found.running or found.port is None:
            return
        # The pod's own probes, every pass: readiness, liveness and startup budgets from its
        # spec (the kubelet's job on a node).
        verdict = real.probe(pod, self._answers(_Engine(uid, found.port, "")))
        if verdict.ready:
            targets.append(scrape_target(pod, found.port))
            self._annotate(pod, f"127.0.0.1:{found.port}")
            return
        annotations = pod["metadata"].get("annotations") or {}
        if annotations.get(READY_ANNOTATION) == "true":
            # Not answering now, or the annotation is another engine's (a mode switch).
            self._set_ready(pod, None, ready=False)
        if verdict.restart is not None:
            self._event(pod, "Unhealthy", verdict.restart)

    def _event(self, pod: dict[str, Any], reason: str, message: str) -> None:
        """A Warning Event on the pod, as the kubelet writes when a container fails."""
        meta = pod["metadata"]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body: Any = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "reason": reason, "type": "Warning", "message": _clip(message),
            "source": {"component": "factoryctl-engines-agent"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }  # fmt: skip
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except client.ApiException as exc:
            log.warning("cannot record event %s on pod %s: %s", reason, meta["name"], exc.reason)

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

    @staticmethod
    def _announced(pod: dict[str, Any], engine: _Engine) -> bool:
        annotations = pod["metadata"].get("annotations") or {}
        return (
            annotations.get(READY_ANNOTATION) == "true"
            and annotations.get(ADDRESS_ANNOTATION) == f"127.0.0.1:{engine.port}"
        )

    def _answers(self, engine: _Engine) -> bool:
        try:
            return self.http.get(f"http://127.0.0.1:{engine.port}/health").status_code == 200
        except httpx.HTTPError:
            return False

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
        self._set_ready(pod, address, ready=True)

    def _set_ready(self, pod: dict[str, Any], address: str | None, *, ready: bool) -> None:
        """The readiness probe's verdict (`engine-ready` true or false) on the pod."""
        annotations = pod["metadata"].get("annotations") or {}
        wanted = {READY_ANNOTATION: "true" if ready else "false"}
        if address is not None:
            wanted[ADDRESS_ANNOTATION] = address
        if all(annotations.get(key) == value for key, value in wanted.items()):
            return
        body = {"metadata": {"annotations": wanted}}
        try:
            self.core.patch_namespaced_pod(
                pod["metadata"]["name"], pod["metadata"]["namespace"], body
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def close(self) -> None:
        self.http.close()
        if self.real is not None:
            self.real.stop_all()

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                try:
                    self.converge()
                except Exception:
                    log.exception("engines agent pass failed; retrying")
                self.stopped.wait(self.interval)
        finally:
            self.close()
