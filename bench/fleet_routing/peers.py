"""Peer routers on the local fleet's engines, for the same scenario: vllm-router and LiteLLM.

Neither knows residency, so each runs once per client stream and is given only the
engines that stream's tenant may use (its model, in the tenant's jurisdictions): the most
a platform team could do with them. Each sits, like the project's routers, in the client's
region: the request carries `x-factory-router-region: <client region>`, which vllm-router
forwards and LiteLLM sends as an extra header, so the simulated engines add the same round
trips as for the project's routers.

- `vllm-router` (vLLM's Rust router, `.venv-bench`): its default and recommended policy,
  `cache_aware` (prefix-cache affinity that turns into least-load when the load is
  imbalanced), and `power_of_two` (two random workers, the less loaded one);
- `litellm` (the LiteLLM proxy, `.venv-bench`): `routing_strategy: latency-based-routing`,
  its router's latency-aware strategy (per-deployment latency, time to first token for
  streams), one worker.

The engines come from the fleet's pods (Ready, with the engines agent's address
annotation); the pool of an answer is found from the engine id the simulator sends back
(`x-factory-sim-engine`, the pod's uid), which both peers relay (LiteLLM as
`llm_provider-x-factory-sim-engine`).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from scenario import Stream

from factoryctl.fleet import wait_until
from factoryctl.home import free_port

ROOT = Path(__file__).resolve().parents[2]
BENCH_VENV = Path(os.environ.get("BENCH_VENV", ROOT / ".venv-bench"))
ADDRESS = "inference.factory.dev/address"
POOL_LABEL = "inference.factory.dev/pool"
FACTORY_LABEL = "inference.factory.dev/factory"
REGION_LABEL = "inference.factory.dev/region"
PEERS = {
    "vllm-router/cache_aware": ("vllm-router", "cache_aware"),
    "vllm-router/power_of_two": ("vllm-router", "power_of_two"),
    "litellm/latency-based": ("litellm", "latency-based-routing"),
}


@dataclass(frozen=True)
class Engine:
    url: str
    model: str
    region: str
    jurisdiction: str
    pool: str  # the pool's Service, `<factory>-<pool>`
    uid: str


def _served_model(pod: dict[str, Any]) -> str | None:
    for container in pod["spec"]["containers"]:
        args = [*container.get("command", []), *container.get("args", [])]
        for flag in ("--served-model-name", "--model"):
            if flag in args and args.index(flag) + 1 < len(args):
                return str(args[args.index(flag) + 1])
    return None


def engines_of(pods: list[dict[str, Any]], jurisdictions: dict[str, str]) -> list[Engine]:
    """The fleet's serving engines, from its pods (`kubectl get pods -A -o json`)."""
    out = []
    for pod in pods:
        meta = pod["metadata"]
        labels, notes = meta.get("labels", {}), meta.get("annotations", {})
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
        model, region = _served_model(pod), labels.get(REGION_LABEL)
        if not ready or ADDRESS not in notes or model is None or region not in jurisdictions:
            continue
        out.append(
            Engine(
                url=f"http://{notes[ADDRESS]}",
                model=model,
                region=region,
                jurisdiction=jurisdictions[region],
                pool=f"{labels[FACTORY_LABEL]}-{labels[POOL_LABEL]}",
                uid=meta["uid"],
            )
        )
    return out


def compliant(engines: list[Engine], stream: Stream, allowed: set[str]) -> list[Engine]:
    return [e for e in engines if e.model == stream.model and e.jurisdiction in allowed]


class PeerRouters:
    """One peer router per stream, each with its tenant's compliant engines; stopped on
    exit. `urls` and `headers` are keyed by stream name (for `scenario.run`)."""

    def __init__(
        self,
        peer: str,
        streams: list[Stream],
        engines: list[Engine],
        allowed: dict[str, set[str]],
        logs: Path,
    ) -> None:
        self.kind, self.policy = PEERS[peer]
        self.name = peer
        self.streams, self.engines, self.allowed, self.logs = streams, engines, allowed, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: dict[str, str] = {}
        self.headers: dict[str, dict[str, str]] = {}

    def __enter__(self) -> PeerRouters:
        for stream in self.streams:
            workers = compliant(self.engines, stream, self.allowed[stream.tenant])
            if not workers:
                raise SystemExit(f"no compliant engine for stream {stream.name}")
            port = free_port()
            tag = f"{self.name.replace('/', '-')}-{stream.name.replace('/', '-')}"
            log = (self.logs / f"peer-{tag}.log").open("ab")
            if self.kind == "vllm-router":
                argv, env, key = self._vllm_router(port, workers), dict(os.environ), None
            else:
                argv, env, key = self._litellm(port, workers, stream, tag)
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            log.close()
            self.procs.append(proc)
            self.urls[stream.name] = f"http://127.0.0.1:{port}"
            headers = {"x-factory-router-region": stream.client_region}
            if key is not None:
                headers["authorization"] = f"Bearer {key}"
            self.headers[stream.name] = headers
        for stream in self.streams:
            probe = partial(_answers, self.urls[stream.name], self.headers[stream.name], stream)
            wait_until(probe, 240, f"{self.name} for {stream.name}", interval=2)
        return self

    def _vllm_router(self, port: int, workers: list[Engine]) -> list[str]:
        # power_of_two refuses to start with one worker ("requires at least 2 workers");
        # with one there is nothing to choose, so that stream runs the default policy.
        policy = self.policy if len(workers) > 1 or self.policy != "power_of_two" else "cache_aware"
        return [
            str(BENCH_VENV / "bin" / "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
            "--worker-urls", *[w.url for w in workers], "--policy", policy,
            "--worker-startup-check-interval", "1", "--worker-startup-timeout-secs", "120",
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
            "--log-level", "warning",
        ]  # fmt: skip

    def _litellm(
        self, port: int, workers: list[Engine], stream: Stream, tag: str
    ) -> tuple[list[str], dict[str, str], str]:
        key = "sk-" + secrets.token_hex(24)
        config = self.logs / f"peer-{tag}.yaml"
        deployments = [
            {
                "model_name": stream.model,
                "litellm_params": {
                    "model": f"openai/{stream.model}",
                    "api_base": f"{w.url}/v1",
                    "api_key": "sk-engine-unused",
                    "extra_headers": {"x-factory-router-region": stream.client_region},
                },
            }
            for w in workers
        ]
        config.write_text(  # JSON is YAML
            json.dumps(
                {
                    "model_list": deployments,
                    "router_settings": {"routing_strategy": self.policy},
                    "litellm_settings": {"telemetry": False},
                    "general_settings": {"master_key": key},
                }
            )
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "DATABASE_"))},
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map at start
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            # Llama model names make LiteLLM fetch a tokenizer from the Hub for its token
            # counts; no hub answers here and it retried with back-off on the request path.
            # Offline it falls back to its bundled tiktoken at once (a deployment would have
            # the tokenizer cached: the same cost per request).
            "HF_HUB_OFFLINE": "1",
        }
        argv = [
            str(BENCH_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1",
        ]  # fmt: skip
        return argv, env, key

    def __exit__(self, *exc: object) -> None:
        stop_all(self.procs, grace=30)


def stop_all(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM to every process, then wait `grace` seconds for each before a kill."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _answers(url: str, headers: dict[str, str], stream: Stream) -> bool:
    body = {"model": stream.model, "max_tokens": 1,
            "messages": [{"role": "user", "content": "ready?"}]}  # fmt: skip
    try:
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    except httpx.HTTPError:
        return False
    return reply.status_code == 200


def pools_by_engine(engines: list[Engine]) -> dict[str, str]:
    return {e.uid: e.pool for e in engines}
