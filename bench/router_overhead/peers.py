"""Router overhead against its peers: the same load straight to one upstream, through
`factory-router`, through `vllm-router` (vLLM's Rust router) and through the LiteLLM proxy,
in one run, at the same arrival rates and concurrencies, non-streaming and streaming.

    bash bench/router_overhead/setup_peers.sh          # once: .venv-bench with the peers
    PYTHONPATH=router python bench/router_overhead/peers.py [--requests 2000]
        [--rates 100 300] [--concurrency 1 8 32] [--rounds 1] [--peer vllm-router litellm]

Every process binds 127.0.0.1 and is stopped at the end; every load point is bounded by a
request count and a timeout. Per (mode, load, target): p50/p99 latency, added p50/p99 over
direct, throughput, and the CPU time per request of the proxy process (its whole process
tree, utime + stime from /proc) and of the upstream. Writes results/peers.json and
results/peers.md next to this file.

`stack-minimal` is not a peer but a reference: the smallest pass-through proxy on the
router's own stack (an asyncio-protocol server parsing with httptools + the router's
upstream client, aiohttp's behind the reuse guard, uvloop; `stack_compare.py proxy
protocol+router-client`), with no authentication, policy, metrics, logs or limits.
What it adds is what this stack costs on this machine before the router does anything of
its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from common import BODY, STREAM_BODY, cpu_seconds, free_port, load, load_rate
from run import KEY, start_router

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BENCH_VENV = Path(os.environ.get("BENCH_VENV", ROOT / ".venv-bench"))
PEERS = ("vllm-router", "litellm", "stack-minimal")
REFERENCES = ("stack-minimal",)  # run from this venv, not .venv-bench
POINT_TIMEOUT_S = 300.0  # one load point never takes longer than this
READY_TIMEOUT_S = 180.0  # LiteLLM takes 5-25 s to import and start on this machine
# LiteLLM answers ~30 JSON / ~12 SSE req/s here: 2000 requests per point would take an hour.
LITELLM_REQUESTS = 400


@dataclass
class Target:
    name: str
    url: str
    headers: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None  # None: the upstream itself (direct)
    log: Path | None = None
    max_requests: int | None = None  # a cap for a peer 10-100x slower than the others
    results: list[dict[str, Any]] = field(default_factory=list)


def process_tree(pid: int) -> list[int]:
    """A process and its live descendants."""
    found: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
        found.append(p)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its live descendants (all threads included)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            total += cpu_seconds(p)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def only_running(targets: list[Target], active: Target | None) -> None:
    """Freeze (SIGSTOP) every proxy but `active` (None: thaw them all). An idle LiteLLM
    proxy alone kept a quarter of a core busy with background tasks, and vllm-router polls
    its workers: measured side by side, each would tax the others' figures."""
    for t in targets:
        if t.proc is None:
            continue
        sig = signal.SIGCONT if active is None or t is active else signal.SIGSTOP
        for p in process_tree(t.proc.pid):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                continue


def version_of(python: Path, dist: str) -> str:
    out = subprocess.run(
        [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return out.stdout.strip() or "not installed"


def start_vllm_router(tmp: Path, upstream: str) -> Target:
    port = free_port()
    log = tmp / "vllm-router.log"
    proc = subprocess.Popen(
        [str(BENCH_VENV / "bin" / "vllm-router"), "--host", "127.0.0.1", "--port", str(port),
         "--worker-urls", upstream, "--policy", "round_robin",
         "--worker-startup-check-interval", "1", "--worker-startup-timeout-secs", "60",
         "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
         "--log-level", "warning"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp,
    )  # fmt: skip
    return Target("vllm-router", f"http://127.0.0.1:{port}/v1/chat/completions", {}, proc, log)


def start_stack_minimal(tmp: Path, upstream: str) -> Target:
    port = free_port()
    log = tmp / "stack-minimal.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "router")}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "stack_compare.py"), "proxy", "protocol+router-client",
         str(port), upstream, "uvloop"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp, env=env,
    )  # fmt: skip
    return Target("stack-minimal", f"http://127.0.0.1:{port}/v1/chat/completions", {}, proc, log)


def start_litellm(tmp: Path, upstream: str) -> Target:
    port = free_port()
    master_key = "sk-" + secrets.token_hex(32)
    config = tmp / "litellm.yaml"
    # JSON is YAML: one openai-compatible model whose api_base is the shared upstream.
    config.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "m",
                        "litellm_params": {
                            "model": "openai/m",
                            "api_base": f"{upstream}/v1",
                            "api_key": "sk-upstream-unused",
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False},
                "general_settings": {"master_key": master_key},
            }
        )
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "DATABASE_"))},
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price map at start
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    log = tmp / "litellm.log"
    proc = subprocess.Popen(
        [str(BENCH_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
         "--port", str(port), "--num_workers", "1"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=tmp, env=env,
    )  # fmt: skip
    return Target(
        "litellm",
        f"http://127.0.0.1:{port}/v1/chat/completions",
        {"authorization": f"Bearer {master_key}"},
        proc,
        log,
        max_requests=LITELLM_REQUESTS,
    )


async def ready(t: Target) -> None:
    """Until one JSON and one streamed request both answer 200 (or the deadline)."""
    end = time.monotonic() + READY_TIMEOUT_S
    hdrs = {"content-type": "application/json", **t.headers}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while time.monotonic() < end:
            if t.proc is not None and t.proc.poll() is not None:
                tail = t.log.read_text(errors="replace")[-2000:] if t.log else ""
                raise RuntimeError(f"{t.name} exited with {t.proc.returncode}:\n{tail}")
            try:
                ok = True
                for body in (BODY, STREAM_BODY):
                    async with session.post(t.url, data=body, headers=hdrs) as resp:
                        await resp.read()
                        ok = ok and resp.status == 200
                if ok:
                    return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{t.name} not answering 200 after {READY_TIMEOUT_S}s")


async def one_point(
    t: Target, kind: str, x: float, stream: bool, n: int, up_pid: int
) -> dict[str, Any]:
    n = min(n, t.max_requests or n)
    pid = t.proc.pid if t.proc is not None else None
    cpu0 = tree_cpu_seconds(pid) if pid else 0.0
    up0 = cpu_seconds(up_pid)
    coro = (
        load_rate(t.url, n, x, stream, t.headers)
        if kind == "rate"
        else load(t.url, n, int(x), stream, t.headers)
    )
    r = await asyncio.wait_for(coro, POINT_TIMEOUT_S)
    if pid:
        r["proxy_cpu_ms_per_request"] = (tree_cpu_seconds(pid) - cpu0) * 1e3 / n
    r["upstream_cpu_ms_per_request"] = (cpu_seconds(up_pid) - up0) * 1e3 / n
    return r


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}"
    upstream = subprocess.Popen([sys.executable, str(HERE / "upstream.py"), str(up_port)])  # noqa: ASYNC220 (started once, before timing)
    procs: list[subprocess.Popen[bytes]] = [upstream]
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp_s:
            tmp = Path(tmp_s)
            router, port = start_router(tmp, upstream_url, args.policy, args.router_arg)
            procs.append(router)
            targets = [
                Target("direct", f"{upstream_url}/v1/chat/completions", {}),
                Target(
                    "factory-router",
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    {"authorization": f"Bearer {KEY}"},
                    router,
                ),
            ]
            starters = {
                "vllm-router": start_vllm_router,
                "litellm": start_litellm,
                "stack-minimal": start_stack_minimal,
            }
            for name in args.peer:
                t = starters[name](tmp, upstream_url)
                assert t.proc is not None
                procs.append(t.proc)
                targets.append(t)
            for t in targets:
                await ready(t)
            print("ready: " + ", ".join(t.name for t in targets), flush=True)
            points = [("rate", x) for x in args.rates] + [
                ("concurrency", float(c)) for c in args.concurrency
            ]
            for stream in (False, True):
                for kind, x in points:
                    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
                    for t in targets:  # warm-up: connections, caches, JIT-free paths
                        only_running(targets, t)
                        await one_point(t, kind, x, stream, args.warmup, upstream.pid)
                    for rnd in range(args.rounds):
                        # direct first, then the proxies in an order rotated per round
                        proxies = targets[1:]
                        k = rnd % len(proxies)
                        for t in [targets[0], *proxies[k:], *proxies[:k]]:
                            only_running(targets, t)
                            r = await one_point(t, kind, x, stream, args.requests, upstream.pid)
                            runs[t.name].append(r)
                    row = point_row(stream, kind, x, runs)
                    rows.append(row)
                    print_row(row)
    finally:
        for p in procs:
            for q in process_tree(p.pid):  # thaw: a stopped process would not terminate
                with contextlib.suppress(ProcessLookupError):
                    os.kill(q, signal.SIGCONT)
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    py = sys.executable
    bench_py = BENCH_VENV / "bin" / "python"
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": args.load_avg_at_start,
                    "load_avg_at_end": os.getloadavg()},
        "versions": {"factory-router (httptools)": version_of(Path(py), "httptools"),
                     "factory-router client (aiohttp)": version_of(Path(py), "aiohttp"),
                     "vllm-router": version_of(bench_py, "vllm-router"),
                     "litellm": version_of(bench_py, "litellm")},
        "requests_per_point": args.requests,
        "requests_per_point_litellm": min(args.requests, LITELLM_REQUESTS),
        "rounds": args.rounds,
        "policy": args.policy,
        "router_args": args.router_arg,
        "peers": args.peer,
        "rows": rows,
        "summary": summary(rows),
    }  # fmt: skip


def point_row(
    stream: bool, kind: str, x: float, runs: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    med = {name: median_of(rs) for name, rs in runs.items()}
    d = med["direct"]
    for name, r in med.items():
        if name != "direct":
            r["added_p50_ms"] = r["p50_ms"] - d["p50_ms"]
            r["added_p99_ms"] = r["p99_ms"] - d["p99_ms"]
    return {
        "mode": "stream" if stream else "json",
        "kind": kind,
        "load": f"{x:g} req/s open loop" if kind == "rate" else f"{int(x)} concurrent",
        "targets": med,
        "rounds": runs,
    }


def print_row(row: dict[str, Any]) -> None:
    parts = []
    for name, r in row["targets"].items():
        if name == "direct":
            parts.append(f"direct p50 {r['p50_ms']:.2f} {r['rps']:.0f}/s")
        else:
            parts.append(
                f"{name} +{r['added_p50_ms']:.2f}/+{r['added_p99_ms']:.2f} ms "
                f"{r['rps']:.0f}/s cpu {r['proxy_cpu_ms_per_request']:.3f} err {r['errors']}"
            )
    print(f"{row['mode']:6} {row['load']:20} " + " | ".join(parts), flush=True)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's floor and aims, per mode, from the measured rows."""
    out: dict[str, Any] = {}
    for mode in ("json", "stream"):
        mine = [r for r in rows if r["mode"] == mode]
        s: dict[str, Any] = {"moderate_load": [], "throughput": {}}
        for r in mine:
            if r["kind"] != "rate":
                continue
            fr = r["targets"]["factory-router"]
            item: dict[str, Any] = {
                "load": r["load"],
                "factory_added_p50_ms": fr["added_p50_ms"],
                "factory_added_p99_ms": fr["added_p99_ms"],
                "floor_met": fr["added_p50_ms"] <= 1.0 and fr["added_p99_ms"] <= 5.0,
            }
            ref = r["targets"].get("stack-minimal")
            if ref is not None:
                item["minimal_added_p50_ms"] = ref["added_p50_ms"]
                item["minimal_added_p99_ms"] = ref["added_p99_ms"]
            vr = r["targets"].get("vllm-router")
            if vr is not None:
                item["vllm_added_p50_ms"] = vr["added_p50_ms"]
                item["vllm_added_p99_ms"] = vr["added_p99_ms"]
                for q in ("p50", "p99"):
                    peer = vr[f"added_{q}_ms"]
                    mine_q = fr[f"added_{q}_ms"]
                    # A peer that adds ~nothing makes the ratio meaningless: say so.
                    item[f"ratio_{q}_vs_vllm"] = mine_q / peer if peer > 0.05 else None
                    item[f"within_2x_vllm_{q}"] = mine_q <= 2 * max(peer, 0.0)
            s["moderate_load"].append(item)
        for name in mine[0]["targets"] if mine else []:
            if name == "direct":
                continue
            closed = [r["targets"][name] for r in mine if r["kind"] == "concurrency"]
            if not closed:
                continue
            best = max(closed, key=lambda t: t["rps"])
            cpu = best["proxy_cpu_ms_per_request"]
            s["throughput"][name] = {
                "max_rps": best["rps"],
                "cpu_ms_per_request_at_max": cpu,
                # None: less CPU than one clock tick was seen (a point with few requests)
                "requests_per_cpu_second": 1e3 / cpu if cpu > 0 else None,
            }
        tp = s["throughput"]
        if (
            "litellm" in tp
            and "factory-router" in tp
            and tp["litellm"]["requests_per_cpu_second"] is not None
            and tp["factory-router"]["requests_per_cpu_second"] is not None
        ):
            s["per_core_ratio_vs_litellm"] = (
                tp["factory-router"]["requests_per_cpu_second"]
                / tp["litellm"]["requests_per_cpu_second"]
            )
            s["aim_10x_litellm_met"] = s["per_core_ratio_vs_litellm"] >= 10
        out[mode] = s
    return out


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Router overhead vs peers, {result['when']}, {m['cpus']} CPUs, load average "
        f"{m['load_avg_at_start'][0]:.1f} at start, {m['load_avg_at_end'][0]:.1f} at end, "
        f"{result['requests_per_point']} requests per point "
        f"({result['requests_per_point_litellm']} for LiteLLM), {result['rounds']} round(s) "
        f"(medians), factory-router policy {result['policy']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        "| mode | load | target | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s "
        "| proxy CPU ms/req | upstream CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        for name, r in row["targets"].items():
            lines.append(
                f"| {row['mode']} | {row['load']} | {name} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.2f} | {fmt(r.get('added_p50_ms'))} | "
                f"{fmt(r.get('added_p99_ms'))} | {r['rps']:.0f} | "
                f"{fmt(r.get('proxy_cpu_ms_per_request'), '.3f')} | "
                f"{r['upstream_cpu_ms_per_request']:.3f} | {r['errors']:.0f} |"
            )
    lines += ["", "## Floor and aims", ""]
    for mode, s in result["summary"].items():
        lines.append(f"### {mode}")
        lines.append("")
        lines.append(
            "| load | factory added p50 / p99 ms | floor (1 / 5 ms) | stack-minimal added "
            "p50 / p99 ms | vllm-router added p50 / p99 ms | ratio p50 / p99 "
            "| within 2x (p50 / p99) |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for it in s["moderate_load"]:
            lines.append(
                f"| {it['load']} | {it['factory_added_p50_ms']:.2f} / "
                f"{it['factory_added_p99_ms']:.2f} | {'met' if it['floor_met'] else 'NOT met'} "
                f"| {fmt(it.get('minimal_added_p50_ms'))} / {fmt(it.get('minimal_added_p99_ms'))} "
                f"| {fmt(it.get('vllm_added_p50_ms'))} / {fmt(it.get('vllm_added_p99_ms'))} "
                f"| {fmt(it.get('ratio_p50_vs_vllm'), '.1f')} / "
                f"{fmt(it.get('ratio_p99_vs_vllm'), '.1f')} "
                f"| {it.get('within_2x_vllm_p50', 'n/a')} / {it.get('within_2x_vllm_p99', 'n/a')} |"
            )
        lines.append("")
        lines.append("| proxy | max req/s (closed loop) | CPU ms/req there | req per CPU-second |")
        lines.append("|---|---|---|---|")
        for name, tp in s["throughput"].items():
            lines.append(
                f"| {name} | {tp['max_rps']:.0f} | {tp['cpu_ms_per_request_at_max']:.3f} | "
                f"{fmt(tp['requests_per_cpu_second'], '.0f')} |"
            )
        if "per_core_ratio_vs_litellm" in s:
            lines.append("")
            lines.append(
                f"factory-router requests per CPU-second / LiteLLM's: "
                f"**{s['per_core_ratio_vs_litellm']:.1f}x** (aim >= 10x: "
                f"{'met' if s['aim_10x_litellm_met'] else 'NOT met'})."
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=1, help="repeat each point, keep medians")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rates", type=float, nargs="+", default=[100.0, 300.0])
    ap.add_argument("--peer", nargs="*", choices=PEERS, default=list(PEERS))
    ap.add_argument("--policy", default="score")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--name", default="peers", help="output file stem")
    ap.add_argument("--router-arg", action="append", default=[])
    args = ap.parse_args()
    args.load_avg_at_start = os.getloadavg()
    missing = [
        p for p in args.peer if p not in REFERENCES and not (BENCH_VENV / "bin" / p).exists()
    ]
    if missing:
        sys.exit(f"{missing} not in {BENCH_VENV}: run bench/router_overhead/setup_peers.sh")
    result = asyncio.run(measure(args))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{args.name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
