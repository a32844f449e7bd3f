"""Fleet-routing benchmark: round-robin, least-request and score on the local fleet's engines.

    .venv/bin/python bench/fleet_routing/run.py            # own fleet home, about 6 minutes

Brings up a local fleet in a fleet home of its own (`factoryctl dev up`), shapes it (one
slow region), then for each policy starts one router per client region (eu-west-1,
us-east-1, ap-south-1; `--policy`), runs the same scenario (`scenario.py`) against them,
stops them, and finally writes `results/results.json` and `results/results.md`.

Shaping: eu-west-1 is the slow region: its Llama pool (`llama-8b/h100-dub`) is cut to one
replica with a batch of 2 sequences (`maxNumSeqs: 2`), as a region short of capacity
would be; it is also the EU clients' own region, so a policy that only looks at distance
keeps sending them there. GPU and Neuron pools of different capacity come with the sample
factories: EU Llama on H100 (eu-west-1, eu-central-1) and on Inferentia2 (eu-central-1,
batch 8), Qwen on H100 (us-east-1) and L4 (ap-south-1).

Round trips come from the topology file (`deploy/local/topology.yaml`, cloudping.co
medians): the simulated engines delay their first byte by the round trip from the
router's region, and the routers score with the same matrix (`--rtt`).
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
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from brownout import BROWNOUTS, Brownout, apply, engine_ids  # noqa: E402
from cost import COST_PREFIX, comparison, cost_policies, router_policy  # noqa: E402
from cost import markdown as cost_markdown  # noqa: E402
from peers import PEERS, POOL_LABEL, PeerRouters, engines_of, pools_by_engine, stop_all  # noqa: E402
from scenario import PoolInfo, Record, Scenario, SideTask, Stream, run, summarise  # noqa: E402

from factoryctl.components.router import ready, router_argv  # noqa: E402
from factoryctl.fleet import FleetContext, wait_until  # noqa: E402
from factoryctl.home import FleetHome, free_port  # noqa: E402
from factoryctl.toolchain import find_tools  # noqa: E402
from factoryctl.topology import load_topology  # noqa: E402

POLICIES = ("round-robin", "least-request", "score", *cost_policies(), *PEERS)
# --quick: plain score against three cost weights, one surge level, 30 s each (cost.py)
QUICK = {"policies": ",".join(["score", *cost_policies()]), "duration": 30.0, "warmup": 3.0,
         "surges": [3.0], "brownouts": [], "repeats": 2, "prime": 30.0}  # fmt: skip
COSTS_TIMEOUT_S = 150.0  # the economics timer runs once a minute per factory

CLIENT_REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
LLAMA, QWEN = "llama-3.1-8b-instruct", "qwen2.5-7b-instruct"
SLOW_REGION = "eu-west-1"
SLOW_POOL = ("inference", "llama-8b", "h100-dub")
SLOW_MAX_NUM_SEQS = 2

STREAMS = [  # the first one surges (--surges)
    Stream("eu/eu-only/llama", "eu-only", "eu-west-1", LLAMA, rate=5.0, surge=3.0),
    Stream("us/us-only/qwen", "us-only", "us-east-1", QWEN, rate=2.0),
    Stream("us/global/qwen", "global", "us-east-1", QWEN, rate=1.5),
    Stream("in/in-only/qwen", "in-only", "ap-south-1", QWEN, rate=1.5),
    Stream("in/global/llama", "global", "ap-south-1", LLAMA, rate=1.0),
    Stream("in/global/qwen", "global", "ap-south-1", QWEN, rate=1.0),
]


def factoryctl(home: Path, *args: str, timeout: float = 900) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "factoryctl.main", "dev", *args],
        env={**os.environ, "FACTORY_HOME": str(home)},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"factoryctl dev {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def kubectl() -> str:
    tools = find_tools()
    if tools is None:
        raise SystemExit("the toolchain is missing: run factoryctl dev tools")
    return str(tools.kubectl)


def kubectl_json(env: dict[str, Any], *args: str) -> Any:
    done = subprocess.run(
        [kubectl(), f"--kubeconfig={env['kubeconfig']}", *args, "-o", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def pools_of(env: dict[str, Any]) -> dict[str, PoolInfo]:
    """Every pool's Service name, region, jurisdiction, accelerator and hourly price."""
    regions = {
        r["metadata"]["name"]: r["spec"] for r in kubectl_json(env, "get", "fleetregions")["items"]
    }
    pools: dict[str, PoolInfo] = {}
    for factory in kubectl_json(env, "get", "inferencefactories", "-A")["items"]:
        spec_pools = {p["name"]: p for p in factory["spec"]["pools"]}
        for status in factory.get("status", {}).get("pools", []):
            spec = spec_pools[status["name"]]
            acc = spec["accelerator"]
            region = regions[status["region"]]
            price = float(region.get("pricing", {}).get(acc["type"], 0.0)) * int(
                acc.get("count", 1)
            )
            name = f"{factory['metadata']['name']}-{status['name']}"
            accelerator = f"{acc['type']} x{acc.get('count', 1)}"
            replicas = int(status.get("readyReplicas") or 0)
            pools[name] = PoolInfo(
                name, status["region"], region["jurisdiction"], accelerator, replicas, price
            )
    return pools


def live_costs(env: dict[str, Any]) -> dict[str, float | None]:
    """Every pool's `status.pools[].costPerMillionTokens` now (what the cost term sees)."""
    return {
        f"{f['metadata']['name']}-{p['name']}": p.get("costPerMillionTokens")
        for f in kubectl_json(env, "get", "inferencefactories", "-A")["items"]
        for p in f.get("status", {}).get("pools", [])
    }


async def prime(
    env: dict[str, Any], ctx: FleetContext, home: Path, scenario: Scenario, keys: dict[str, str]
) -> None:
    """Traffic through plain `score` routers (not measured), then wait until the pools that
    served it have a live cost in status: the cost-weighted runs then see live figures
    from their first request, not only list prices."""
    print(f"priming: {scenario.duration_s:g} s of plain score", file=sys.stderr)
    with Routers(ctx, "score", FleetHome(home).logs_dir) as routers:
        await run(scenario, routers.urls, keys)
    wait_until(lambda: sum(v is not None for v in live_costs(env).values()) >= 4,
               COSTS_TIMEOUT_S, "live costs in the factories' status", interval=5)  # fmt: skip
    print(f"live costs: {live_costs(env)}", file=sys.stderr)


def shape_slow_region(env: dict[str, Any], ctx: FleetContext) -> None:
    """One replica with a small batch in the slow region; wait until routers can see it."""
    ns, name, pool = SLOW_POOL
    factory = kubectl_json(env, "get", "inferencefactory", name, "-n", ns)
    index = next(i for i, p in enumerate(factory["spec"]["pools"]) if p["name"] == pool)
    patch = [
        {"op": "replace", "path": f"/spec/pools/{index}/replicas", "value": {"min": 1, "max": 1}},
        {"op": "add", "path": f"/spec/pools/{index}/engine",
         "value": {"args": {"maxNumSeqs": SLOW_MAX_NUM_SEQS}}},
    ]  # fmt: skip
    subprocess.run(
        [kubectl(), f"--kubeconfig={env['kubeconfig']}", "patch", "inferencefactory", name,
         "-n", ns, "--type=json", "-p", json.dumps(patch)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip

    from factoryctl.components.engines import control_url  # noqa: PLC0415

    def settled() -> bool:
        engines = httpx.get(f"{control_url(ctx, SLOW_REGION)}/engines", timeout=5).json()
        llama = [e for e in engines["engines"] if LLAMA in e["model_name"]]
        pods = kubectl_json(env, "get", "pods", "-n", ns, "-l",
                            f"inference.factory.dev/pool={pool}")["items"]  # fmt: skip
        return len(llama) == 1 and len(pods) == 1

    wait_until(settled, 180, "the slow region's pool to settle at one replica", interval=1)


class Routers:
    """One router per client region, all with the same policy; stopped on exit."""

    def __init__(self, ctx: FleetContext, policy: str, logs: Path) -> None:
        self.ctx, self.policy, self.logs = ctx, policy, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: dict[str, str] = {}
        self.admin_urls: dict[str, str] = {}

    def __enter__(self) -> Routers:
        for region in CLIENT_REGIONS:
            port, admin = free_port(), free_port()
            policy, extra = router_policy(self.policy)
            argv = router_argv(self.ctx, region=region, port=port, admin_port=admin,
                               policy=policy, extra=("--no-access-log", *extra))  # fmt: skip
            log = (self.logs / f"router-{self.policy}-{region}.log").open("ab")
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            self.procs.append(proc)
            log.close()
            self.urls[region] = f"http://127.0.0.1:{port}"
            self.admin_urls[region] = f"http://127.0.0.1:{admin}"
        for url in self.urls.values():
            wait_until(partial(ready, url), 90, f"router {url}")
        return self

    def __exit__(self, *exc: object) -> None:
        stop_all(self.procs, grace=40)


def brownout_during(
    env: dict[str, Any], ctx: FleetContext, brown: Brownout, scenario: Scenario
) -> SideTask:
    """Stall the brownout's pool for the middle third of the measured run, on the run's
    own clock (`origin`: offset 0 of the measured part). The first version counted from
    before the routers (or peers) were started, so the window came early by their start-up
    time: a few seconds for the project's routers, tens of seconds for LiteLLM's proxies,
    whose brownout then fell partly into the warm-up."""
    from factoryctl.components.engines import control_url  # noqa: PLC0415

    pods = kubectl_json(env, "get", "pods", "-n", brown.namespace, "-l", POOL_LABEL)["items"]
    ids = engine_ids(pods, brown)
    lo, hi = scenario.surge_window

    async def stall(origin: float) -> int:
        start, end = origin + lo * scenario.duration_s, origin + hi * scenario.duration_s
        return await apply(control_url(ctx, brown.region), ids, brown.stall_s, start, end)

    return stall


def explain_sampler(
    admin_urls: dict[str, str], admin_key: str, streams: list[Stream], sink: list[dict[str, Any]]
) -> SideTask:
    """Every second, each stream's `/admin/explain` on its region's router (what the
    policy saw: engine vs client-observed TTFT, outliers, the chosen backend), into
    `sink` (diagnostics only; the figures never depend on it)."""

    async def sample(origin: float) -> int:
        headers = {"authorization": f"Bearer {admin_key}"}
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                await asyncio.sleep(1.0)
                for s in streams:
                    query = {"tenant": s.tenant, "model": s.model, "client_region": s.client_region}
                    try:
                        reply = await http.get(f"{admin_urls[s.client_region]}/admin/explain",
                                               params=query, headers=headers)  # fmt: skip
                    except httpx.HTTPError:
                        continue
                    rows = reply.json().get("candidates", []) if reply.status_code == 200 else []
                    rows = [_explain_row(r) for r in rows if r.get("eligible")]
                    sink.append({"t": round(time.monotonic() - origin, 2), "stream": s.name,
                                 "rows": rows})  # fmt: skip

    return sample


def _explain_row(row: dict[str, Any]) -> dict[str, Any]:
    parts = row.get("parts") or {}
    keep = ("ttft_source", "ttft_ms", "engine_ttft_ms", "observed_ttft_ms",
            "observed_region_ttft_ms", "observed_samples", "outstanding", "score")  # fmt: skip
    return {"pool": row.get("pool"), "verdict": row.get("verdict"),
            "outlier": row.get("latency_outlier"), **{k: parts.get(k) for k in keep}}  # fmt: skip


async def run_peer(
    env: dict[str, Any],
    peer: str,
    scenario: Scenario,
    keys: dict[str, str],
    allowed: dict[str, set[str]],
    home: Path,
    side_tasks: list[SideTask],
) -> list[Record]:
    """The scenario through a peer router, one per stream (see peers.py)."""
    jurisdictions = {
        r["metadata"]["name"]: r["spec"]["jurisdiction"]
        for r in kubectl_json(env, "get", "fleetregions")["items"]
    }
    pods = kubectl_json(env, "get", "pods", "-A", "-l", POOL_LABEL)["items"]
    engines = engines_of(pods, jurisdictions)
    logs = FleetHome(home).logs_dir
    with PeerRouters(peer, scenario.streams, engines, allowed, logs) as peers:
        records, _ = await run(scenario, peers.urls, keys, peers.headers, side_tasks)
    by_engine = pools_by_engine(engines)
    for rec in records:
        rec.pool = rec.pool or by_engine.get(rec.engine or "")
    return records


def markdown(doc: dict[str, Any]) -> str:
    sc = doc["scenario"]
    out = [
        "# Fleet routing: score vs round-robin, least-request, vllm-router and LiteLLM",
        "",
        f"Run {doc['run']['started']} on {doc['run']['machine']}; "
        f"{sc['duration_s']:.0f} s measured per policy after {sc['warmup_s']:.0f} s warm-up; "
        f"TTFT SLO {sc['slo_ms']:.0f} ms; {sc['max_tokens']} output tokens per request, "
        "streamed; the same arrival schedule for every policy. Method and caveats: "
        "`README.md`.",
    ]
    for label, level in doc["surges"].items():
        if level.get("brownout"):
            b = level["brownout"]
            out += ["", f"## {label}: {b['description']} (middle third)", ""]
        else:
            out += ["", f"## EU surge {label} (EU stream {level['eu_rate_rps']:g} rps -> "
                    f"{level['eu_surge_rps']:g} rps in the middle third)", ""]  # fmt: skip
        out += _level_markdown(level)
    return "\n".join([*out, ""])


def _level_markdown(level: dict[str, Any]) -> list[str]:
    policies = level["policies"]
    rows = [
        "| policy | requests | errors | p50 TTFT ms | p99 TTFT ms | SLO met | goodput rps "
        "| residency violations | $/Mtok busy | $/Mtok provisioned | load 1m before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, r in policies.items():
        load = "/".join(str(x) for x in r.get("load_avg_1m", []))
        rows.append(
            f"| {policy} | {r['requests']} | {r['errors']} | {r['p50_ttft_ms']} | "
            f"{r['p99_ttft_ms']} | {r['slo_attainment']:.1%} | {r['goodput_rps']} | "
            f"{r['residency_violations']} | {r['cost_per_mtok_busy_usd']} | "
            f"{r['cost_per_mtok_provisioned_usd']} | {load} |"
        )
    streams = ["", "Per client stream (p50 / p99 TTFT ms; SLO met / requests; regions served):", "",
               "| stream | " + " | ".join(policies) + " |",
               "|---|" + "---|" * len(policies)]  # fmt: skip
    for stream in level["streams"]:
        cells = []
        for r in policies.values():
            s = r["streams"].get(stream["name"], {})
            regions = ", ".join(f"{k} {v}" for k, v in sorted(s.get("regions", {}).items()))
            cells.append(f"{s.get('p50_ttft_ms')} / {s.get('p99_ttft_ms')}; "
                         f"{s.get('slo_met')}/{s.get('requests')}; {regions}")  # fmt: skip
        streams.append(f"| {stream['name']} | " + " | ".join(cells) + " |")
    summary: list[str] = []
    if level.get("cost_comparison"):
        summary += cost_markdown(level["cost_comparison"], level.get("live_costs", {}))
    if "comparison" in level:
        cmp = level["comparison"]
        summary += [
            "",
            f"Score vs the best other policy by goodput ({cmp['better_baseline']}): p99 "
            f"TTFT {cmp['p99_ttft_reduction']:+.1%} lower, goodput "
            f"{cmp['goodput_gain']:+.1%} higher; vs the lowest p99 of the others "
            f"({cmp['lowest_p99_other']}): {cmp['p99_ttft_reduction_vs_lowest']:+.1%} lower "
            f"(aim: >= 30%); residency violations, all policies: {cmp['violations_total']}.",
        ]
    return [*rows, *streams, *summary]


def compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Score against the best of the others (baselines and peers alike): the one with the
    most goodput (ties: the lower p99), and the one with the lowest p99 TTFT."""
    others = [p for p in results if p != "score" and not p.startswith(COST_PREFIX)]
    better = max(
        others, key=lambda p: (results[p]["goodput_rps"], -(results[p]["p99_ttft_ms"] or 1e9))
    )
    lowest_p99 = min(others, key=lambda p: results[p]["p99_ttft_ms"] or 1e9)
    base, score = results[better], results["score"]
    return {
        "better_baseline": better,
        "p99_ttft_reduction": 1 - score["p99_ttft_ms"] / base["p99_ttft_ms"],
        "lowest_p99_other": lowest_p99,
        "p99_ttft_reduction_vs_lowest": 1
        - score["p99_ttft_ms"] / (results[lowest_p99]["p99_ttft_ms"] or 1e9),
        "goodput_gain": score["goodput_rps"] / base["goodput_rps"] - 1
        if base["goodput_rps"]
        else 0.0,
        "violations_total": sum(r["residency_violations"] for r in results.values()),
    }


def dump_records(
    out: Path, label: str, policy: str, records: list[Record], explained: list[dict[str, Any]]
) -> None:
    """Every request of one policy's run (JSON lines), and the explain samples."""
    out.mkdir(parents=True, exist_ok=True)
    tag = f"{label}-{policy}".replace(" ", "_").replace("/", "-")
    lines = [json.dumps({**asdict(r), "start": None, "end": round(r.end - r.start, 3)})
             for r in records]  # fmt: skip
    (out / f"{tag}.records.jsonl").write_text("\n".join(lines) + "\n")
    if explained:
        (out / f"{tag}.explain.jsonl").write_text("\n".join(map(json.dumps, explained)) + "\n")


def write_results(out: Path, doc: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    if doc.get("surges"):
        (out / "results.md").write_text(markdown(doc))


async def main_async(args: argparse.Namespace) -> None:
    home = Path(args.home or tempfile.mkdtemp(prefix="fleet-routing-"))
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"fleet home {home}", file=sys.stderr)
    factoryctl(home, "up")
    env = json.loads(factoryctl(home, "env", "--json"))
    ctx = FleetContext(FleetHome(home), load_topology(), lambda m: print(m, file=sys.stderr))
    try:
        shape_slow_region(env, ctx)
        pools = pools_of(env)
        keys = {name: t["api_key"] for name, t in env["tenants"].items()}
        allowed = {name: set(t["jurisdictions"]) for name, t in env["tenants"].items()}
        doc: dict[str, Any] = {
            "run": {"started": started, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "home": str(home)},
            "scenario": {
                "duration_s": args.duration, "warmup_s": args.warmup, "slo_ms": args.slo_ms,
                "max_tokens": args.max_tokens, "surge_window": Scenario.surge_window,
                "slow_region": {"region": SLOW_REGION, "pool": "/".join(SLOW_POOL),
                                "replicas": 1, "max_num_seqs": SLOW_MAX_NUM_SEQS},
                "rtt_source": "deploy/local/topology.yaml (cloudping.co AWS medians)",
            },
            "pools": {n: p.__dict__ for n, p in pools.items()},
            "surges": {},
        }  # fmt: skip
        levels: list[tuple[str, list[Stream], Brownout | None]] = [
            (f"x{surge:g}", [replace(s, surge=surge) if s.surge != 1.0 else s for s in STREAMS],
             None)
            for surge in args.surges
        ]  # fmt: skip
        for name in args.brownouts:
            b = BROWNOUTS[name]
            streams = [replace(s, surge=b.surge if s.name in b.surging else 1.0) for s in STREAMS]
            levels.append((f"brownout {name}", streams, b))
        for label, streams, brown in levels:
            scenario = Scenario(streams, duration_s=args.duration, warmup_s=args.warmup,
                                max_tokens=args.max_tokens)  # fmt: skip
            results: dict[str, dict[str, Any]] = {}
            live: dict[str, dict[str, float | None]] = {}
            policies = args.policies.split(",")
            if args.prime:
                await prime(env, ctx, home, replace(scenario, duration_s=args.prime), keys)
            records_of: dict[str, list[Record]] = {p: [] for p in policies}
            loads: dict[str, list[list[float]]] = {p: [] for p in policies}
            # Repeats run in alternating order (A B C, C B A, ...): a busy spell of the
            # shared machine, and the live costs' drift, land on every policy alike.
            for rep in range(args.repeats):
                for policy in policies if rep % 2 == 0 else policies[::-1]:
                    tag = policy if args.repeats == 1 else f"{policy} #{rep + 1}"
                    print(f"[{label}, {tag}] starting routers", file=sys.stderr)
                    load_before = os.getloadavg()
                    sides = [] if brown is None else [brownout_during(env, ctx, brown, scenario)]
                    explained: list[dict[str, Any]] = []
                    if policy in PEERS:
                        records = await run_peer(env, policy, scenario, keys, allowed, home, sides)
                    else:
                        live[tag] = live_costs(env)
                        with Routers(ctx, policy, FleetHome(home).logs_dir) as routers:
                            if args.records_dir:
                                sides.append(explain_sampler(routers.admin_urls, env["admin_key"],
                                                             streams, explained))  # fmt: skip
                            records, done = await run(scenario, routers.urls, keys,
                                                      side_tasks=sides)  # fmt: skip
                        if brown is not None:
                            print(f"[{label}, {tag}] brownout: {done[0]} engine(s)",
                                  file=sys.stderr)  # fmt: skip
                    if args.records_dir:
                        dump_records(Path(args.records_dir), label, tag, records, explained)
                    records_of[policy] += records
                    # The machine is shared and the policies run one after the other: a busy
                    # minute lands on one policy only. The 1-minute load average before and
                    # after each says which figures to distrust.
                    loads[policy].append([round(load_before[0], 2), round(os.getloadavg()[0], 2)])
                    r = summarise(records, args.duration, args.slo_ms, allowed, pools)
                    print(f"[{label}, {tag}] p50 {r['p50_ttft_ms']} p99 "
                          f"{r['p99_ttft_ms']} ms, goodput {r['goodput_rps']} rps, SLO met "
                          f"{r['slo_attainment']}, $/Mtok busy {r['cost_per_mtok_busy_usd']}, "
                          f"errors {r['errors']}, violations {r['residency_violations']}",
                          file=sys.stderr)  # fmt: skip
            for policy in policies:
                results[policy] = summarise(records_of[policy], args.duration * args.repeats,
                                            args.slo_ms, allowed, pools)  # fmt: skip
                results[policy]["load_avg_1m"] = [x for pair in loads[policy] for x in pair]
            surging = [s for s in streams if s.surge != 1.0]
            level: dict[str, Any] = {
                "surge": surging[0].surge if surging else 1.0,
                "surging": [s.name for s in surging],
                "eu_rate_rps": streams[0].rate, "eu_surge_rps": streams[0].rate * streams[0].surge,
                "brownout": None if brown is None else brown.__dict__,
                "streams": [s.__dict__ for s in streams], "policies": results,
            }  # fmt: skip
            if "score" in results and any(
                p != "score" and not p.startswith(COST_PREFIX) for p in results
            ):
                level["comparison"] = compare(results)
            level["cost_comparison"] = comparison(results)
            level["live_costs"] = live
            doc["surges"][label] = level
        write_results(Path(args.out), doc)
        print(f"wrote {args.out}/results.json and results.md", file=sys.stderr)
    finally:
        if not args.keep:
            factoryctl(home, "down")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", help="fleet home (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="leave the fleet up")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--duration", type=float, default=75.0, help="measured s per policy")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--slo-ms", type=float, default=300.0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--surges", type=float, nargs="*", default=[3.0, 5.0],
                        help="the EU stream's rate multipliers in the surge window, one "
                        "scenario each")  # fmt: skip
    parser.add_argument("--brownouts", nargs="*", default=list(BROWNOUTS),
                        choices=list(BROWNOUTS), help="brownout.py scenarios")  # fmt: skip
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--records-dir", help="also write every request and, for the "
                        "project's routers, /admin/explain once a second (JSON lines)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="runs per policy, in "
                        "alternating order; the figures pool them")  # fmt: skip
    parser.add_argument("--prime", type=float, default=0.0, help="s of plain score "
                        "before the measured runs, then wait for live costs")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="score with and without "
                        "the cost weight only, x3 surge, 30 s each (a few minutes)")  # fmt: skip
    args = parser.parse_args()
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
