"""Router overhead: the same load straight to an upstream and through `factory-router`,
in the same run, at several concurrencies, non-streaming and streaming.

    PYTHONPATH=router python bench/router_overhead/run.py [--requests 2000]
        [--concurrency 1 8 32] [--policy score] [--baseline DIR]

`--baseline DIR`: a checkout of another commit (e.g. `git worktree add /tmp/base 9c786ce`)
whose router is measured too, at every point right after this one, against the same
upstream: the router before a change, side by side in the same run.

Reports, per (mode, concurrency): p50/p99 latency direct and via the router, the added
p50/p99, throughput of each, and the router's CPU time per request (from /proc). Writes
results.json and results.md next to this file. The upstream answers instantly, so what is
measured is transport + proxy work; the load generator, upstream and router share the
machine's cores, so compare ratios within one run, not absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import cpu_seconds, free_port, load, load_rate, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KEY = "sk-bench"
TENANTS = {
    "admin_keys_sha256": ["0" * 64],
    "tenants": [
        {
            "name": "bench",
            "jurisdictions": ["EU"],
            # sha256("sk-bench")
            "api_keys_sha256": [__import__("hashlib").sha256(KEY.encode()).hexdigest()],
        }
    ],
}


def start_router(
    tmp: Path, upstream: str, policy: str, extra: list[str], root: Path = ROOT
) -> tuple[subprocess.Popen[bytes], int]:
    (tmp / "tenants.json").write_text(json.dumps(TENANTS))
    (tmp / "backends.json").write_text(
        json.dumps(
            {
                "regions": [{"name": "eu-west-1", "jurisdiction": "EU"}],
                "backends": [
                    {"model": "m", "pool": "bench", "region": "eu-west-1", "url": upstream}
                ],
            }
        )
    )
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root / "router")}
    # Nothing here reads the admin port; the default may be taken. (Routers before
    # 6e28a59 have no admin listener.)
    main = (root / "router" / "factory_router" / "main.py").read_text()
    admin = ["--admin-listen", "127.0.0.1:0"] if "admin_listen" in main else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "factory_router.main", "--listen", f"127.0.0.1:{port}",
         *admin, "--region", "eu-west-1", "--tenants", str(tmp / "tenants.json"),
         "--backends", str(tmp / "backends.json"), "--policy", policy, *extra],
        env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return proc, port


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, str(HERE / "upstream.py"), str(up_port)])  # noqa: ASYNC220 (started once, before timing)
    procs.append(upstream)
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            router, port = start_router(
                Path(tmp), f"http://127.0.0.1:{up_port}", args.policy, args.router_arg
            )
            procs.append(router)
            base: subprocess.Popen[bytes] | None = None
            if args.baseline is not None:
                base, base_port = start_router(
                    Path(tmp),
                    f"http://127.0.0.1:{up_port}",
                    args.policy,
                    args.router_arg,
                    root=args.baseline,
                )
                procs.append(base)
                await wait_port(base_port)
                based = f"http://127.0.0.1:{base_port}/v1/chat/completions"
            await wait_port(up_port)
            await wait_port(port)
            direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
            routed = f"http://127.0.0.1:{port}/v1/chat/completions"
            auth = {"authorization": f"Bearer {KEY}"}
            points = [("rate", x) for x in args.rates] + [
                ("concurrency", c) for c in args.concurrency
            ]
            for stream in (False, True):
                for kind, x in points:

                    async def run(
                        url: str,
                        hdrs: dict[str, str],
                        n: int,
                        kind: str = kind,
                        x: float = x,
                        stream: bool = stream,
                    ) -> dict[str, Any]:
                        if kind == "rate":
                            return await load_rate(url, n, x, stream, hdrs)
                        return await load(url, n, int(x), stream, hdrs)

                    await run(direct, {}, 200)  # warm-up every path
                    await run(routed, auth, 200)
                    if base is not None:
                        await run(based, auth, 200)
                    d = await run(direct, {}, args.requests)
                    cpu0 = cpu_seconds(router.pid)
                    r = await run(routed, auth, args.requests)
                    cpu_ms = (cpu_seconds(router.pid) - cpu0) * 1e3 / args.requests
                    extra: dict[str, Any] = {}
                    if base is not None:
                        cpu0 = cpu_seconds(base.pid)
                        b = await run(based, auth, args.requests)
                        extra = {
                            "baseline": b,
                            "baseline_added_p50_ms": b["p50_ms"] - d["p50_ms"],
                            "baseline_added_p99_ms": b["p99_ms"] - d["p99_ms"],
                            "baseline_cpu_ms_per_request": (cpu_seconds(base.pid) - cpu0)
                            * 1e3
                            / args.requests,
                        }
                    row = {
                        "mode": "stream" if stream else "json",
                        "load": f"{x:g} req/s open loop" if kind == "rate" else f"{x} concurrent",
                        "direct": d,
                        "router": r,
                        "added_p50_ms": r["p50_ms"] - d["p50_ms"],
                        "added_p99_ms": r["p99_ms"] - d["p99_ms"],
                        "router_cpu_ms_per_request": cpu_ms,
                        **extra,
                    }
                    rows.append(row)
                    then = (
                        f"; baseline added {extra['baseline_added_p50_ms']:.2f} / "
                        f"{extra['baseline_added_p99_ms']:.2f} ms, cpu "
                        f"{extra['baseline_cpu_ms_per_request']:.3f} ms/req"
                        if extra
                        else ""
                    )
                    print(
                        f"{row['mode']:6} {row['load']:20} direct p50 {d['p50_ms']:.2f} "
                        f"router p50 {r['p50_ms']:.2f} added p50 {row['added_p50_ms']:.2f} "
                        f"p99 {row['added_p99_ms']:.2f} ms; rps {d['rps']:.0f} vs "
                        f"{r['rps']:.0f}; router cpu {cpu_ms:.3f} ms/req; errors {r['errors']}"
                        + then,
                        flush=True,
                    )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_at_start": args.load_avg_at_start,
                    "load_avg_at_end": os.getloadavg()},
        "requests_per_point": args.requests,
        "policy": args.policy,
        "router_args": args.router_arg,
        "baseline": str(args.baseline) if args.baseline is not None else None,
        "baseline_commit": _commit(args.baseline),
        "commit": _commit(ROOT),
        "rows": rows,
    }  # fmt: skip


def _commit(root: Path | None) -> str | None:
    if root is None:
        return None
    done = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    return done.stdout.strip() or None


def markdown(result: dict[str, Any]) -> str:
    base = result.get("baseline")
    lines = [
        f"Router overhead, {result['when']}, {result['machine']['cpus']} CPUs, "
        f"load average {result['machine']['load_avg_at_start'][0]:.1f} at start, "
        f"{result['machine']['load_avg_at_end'][0]:.1f} at end, "
        f"{result['requests_per_point']} requests per point, policy {result['policy']}"
        + (
            f"; router at {result.get('commit')}, baseline router at "
            f"{result.get('baseline_commit')} ({base}), measured right after it at each point."
            if base
            else "."
        ),
        "",
        "| mode | load | direct p50 ms | router p50 ms | added p50 ms | added p99 ms "
        "| direct req/s | router req/s | router CPU ms/req |"
        + (" baseline added p50 / p99 ms | baseline CPU ms/req |" if base else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if base else ""),
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['mode']} | {r['load']} | {r['direct']['p50_ms']:.2f} | "
            f"{r['router']['p50_ms']:.2f} | {r['added_p50_ms']:.2f} | {r['added_p99_ms']:.2f} | "
            f"{r['direct']['rps']:.0f} | {r['router']['rps']:.0f} | "
            f"{r['router_cpu_ms_per_request']:.3f} |"
            + (
                f" {r['baseline_added_p50_ms']:.2f} / {r['baseline_added_p99_ms']:.2f} | "
                f"{r['baseline_cpu_ms_per_request']:.3f} |"
                if "baseline" in r
                else ""
            )
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=[100.0, 300.0],
        help="open-loop arrival rates, req/s ('moderate load')",
    )
    ap.add_argument("--policy", default="score")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="checkout of another commit whose router is measured beside this one",
    )
    ap.add_argument(
        "--router-arg",
        action="append",
        default=[],
        help="extra factory-router flag, e.g. --router-arg=--event-loop=asyncio",
    )
    args = ap.parse_args()
    args.load_avg_at_start = os.getloadavg()
    result = asyncio.run(measure(args))
    args_out: Path = args.out
    (args_out / "results.json").write_text(json.dumps(result, indent=2))
    (args_out / "results.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
