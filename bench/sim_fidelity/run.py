"""Run the H100 profile under published workload shapes and compare with vLLM's figures.

    PYTHONPATH=sim python -m bench.sim_fidelity [--quick] [--out bench/sim_fidelity/results]
    PYTHONPATH=sim python -m bench.sim_fidelity --real-engine   # see real_engine.py

Measures from the client side, as ``vllm bench serve`` does: TTFT (request sent -> first
streamed token), ITL (gaps between streamed tokens), TPOT ((last - first) / (n - 1)),
end-to-end latency, request and output-token throughput. Scenarios with many concurrent
streams run the engine with ``time_scale`` > 1 (every simulated duration stretched) and
divide the measured times by it, so this host's Python overhead (2 cores, a client and a
server in one process) does not masquerade as GPU time; the scale used is in the results.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.sim_fidelity import real_engine
from bench.sim_fidelity.published import REFERENCES
from bench.sim_fidelity.workload import Item, fixed, sharegpt_like
from factory_sim.server import EngineConfig, SimHost

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass
class Sample:
    ttft: float
    itls: list[float]
    e2e: float
    output_tokens: int


@dataclass
class Scenario:
    name: str
    items: list[Item]
    time_scale: float
    reference: str | None = None
    notes: str = ""
    results: dict[str, Any] = field(default_factory=dict)


async def _one(http: aiohttp.ClientSession, url: str, item: Item) -> Sample:
    body = {
        "model": "llama-3.1-8b",
        "prompt": item.prompt,
        "max_tokens": item.output_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    start = time.perf_counter()
    stamps: list[float] = []
    async with http.post(f"{url}/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"text":""' not in line:
                stamps.append(time.perf_counter())
    itls = [b - a for a, b in itertools.pairwise(stamps)]
    return Sample(stamps[0] - start, itls, stamps[-1] - start, len(stamps))


async def _run(scenario: Scenario) -> dict[str, Any]:
    config = EngineConfig(
        model_name="llama-3.1-8b", profile="h100", seed=0, time_scale=scenario.time_scale
    )
    limits = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=3600, sock_connect=10)
    async with SimHost() as host, aiohttp.ClientSession(connector=limits, timeout=timeout) as http:
        handle = await host.add(config)
        start = time.perf_counter()

        async def delayed(item: Item) -> Sample:
            await asyncio.sleep(item.arrival_s * scenario.time_scale)
            return await _one(http, handle.url, item)

        samples = await asyncio.gather(*(delayed(i) for i in scenario.items))
        duration = time.perf_counter() - start
    return _summarise(samples, duration, scenario)


def _ms(values: list[float], scale: float) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {
        "mean": round(statistics.fmean(values) * 1000 / scale, 2),
        "median": round(statistics.median(values) * 1000 / scale, 2),
        "p99": round(p99 * 1000 / scale, 2),
    }


def _summarise(samples: list[Sample], duration: float, scenario: Scenario) -> dict[str, Any]:
    scale = scenario.time_scale
    itls = [x for s in samples for x in s.itls]
    tpots = [(s.e2e - s.ttft) / (s.output_tokens - 1) for s in samples if s.output_tokens > 1]
    output_tokens = sum(s.output_tokens for s in samples)
    sim_duration = duration / scale
    return {
        "num_requests": len(samples),
        "total_input_tokens": sum(i.input_tokens for i in scenario.items),
        "total_output_tokens": output_tokens,
        "duration_s": round(sim_duration, 2),
        "request_throughput": round(len(samples) / sim_duration, 2),
        "output_throughput": round(output_tokens / sim_duration, 1),
        "ttft_ms": _ms([s.ttft for s in samples], scale),
        "tpot_ms": _ms(tpots, scale),
        "itl_ms": _ms(itls, scale),
        "e2e_ms": _ms([s.e2e for s in samples], scale),
    }


def _compare(scenario: Scenario) -> list[dict[str, Any]]:
    if scenario.reference is None:
        return []
    ref, got = REFERENCES[scenario.reference], scenario.results
    pairs = {
        "mean_e2e_ms": got["e2e_ms"]["mean"],
        "median_e2e_ms": got["e2e_ms"]["median"],
        "request_throughput": got["request_throughput"],
        "output_throughput": got["output_throughput"],
        "mean_ttft_ms": got["ttft_ms"]["mean"],
        "median_ttft_ms": got["ttft_ms"]["median"],
        "mean_tpot_ms": got["tpot_ms"]["mean"],
        "median_tpot_ms": got["tpot_ms"]["median"],
        "mean_itl_ms": got["itl_ms"]["mean"],
        "median_itl_ms": got["itl_ms"]["median"],
    }
    rows = []
    for metric, simulated in pairs.items():
        if metric in ref:
            published = float(ref[metric])
            error = (simulated - published) / published * 100
            rows.append(
                {
                    "metric": metric,
                    "published": published,
                    "simulated": simulated,
                    "error_pct": round(error, 1),
                    "within_25pct": abs(error) <= 25,
                }
            )
    return rows


def scenarios(quick: bool) -> list[Scenario]:
    k = 4 if quick else 1
    burst = REFERENCES["sharegpt_burst"]["num_prompts"] // k
    return [
        Scenario(
            "latency_bs8_in32_out128",
            fixed(8, 32, 128),
            1.0,
            "latency_bs8",
            "8 simultaneous requests, like vLLM's latency test",
        ),
        Scenario("sharegpt_rate1", sharegpt_like(40 // k, 1.0, seed=1), 1.0),
        Scenario("sharegpt_rate4", sharegpt_like(120 // k, 4.0, seed=2), 1.0),
        Scenario("sharegpt_rate16", sharegpt_like(320 // k, 16.0, seed=3), 2.0),
        Scenario(
            f"sharegpt_burst_{burst}",
            sharegpt_like(burst, math.inf, seed=0),
            4.0,
            "sharegpt_burst",
            "all requests at t=0 (request rate inf)",
        ),
    ]


ANALYSIS = """\
## Reading the error

- Throughput, TPOT and ITL of the 1000-prompt burst land within 25% of the published run.
  Two figures are partly fitted, not predicted: the H100 step floor (`step_base_s`) was
  calibrated on the batch-8 latency test, and the marginal decode cost (`decode_token_s`)
  on the burst's median ITL. Prefill cost and KV-read cost are derived from the H100
  datasheet (FLOPs, bandwidth) and the model's shape, not fitted.
- TTFT under the burst is about half the published figure. The simulator prefills the
  ~230k prompt tokens at the datasheet-derived ~28k tokens/s, so the queue drains in ~9 s
  (mean TTFT ~4.5 s); the published 9.6 s mean implies about half that effective rate. The
  likely missing pieces: the API server's per-request work for 1000 simultaneous chat
  requests (chat template, tokenization, detokenization of every streamed token), which the
  simulator does not model, and the published run's GPU is not stated. We chose not to fit
  the prefill cost to this single figure; treat simulated burst TTFT as optimistic by ~2x.
- Rates 1, 4 and 16 req/s stay below saturation: TTFT ~20-25 ms and ITL ~7.6-9 ms, rising
  slowly with load. We retrieved no published H100 figures for these rates with this model
  and workload, so they are shown for shape only.
- The workload is ShareGPT-like, not ShareGPT: log-normal lengths with the published
  run's mean input and output lengths (the dataset itself is not downloadable here).
"""


def _markdown(payload: dict[str, Any]) -> str:
    meta = payload["meta"]
    lines = [
        "# factory_sim H100 profile vs published vLLM figures",
        "",
        f"Run {meta['date']} on {meta['host']}; seeds fixed; wall time {meta['wall_s']} s.",
        "Times are client-side, divided by the scenario's time_scale (see run.py).",
        "",
        "## Simulated results",
        "",
        "| scenario | time_scale | req | req/s | out tok/s | TTFT mean / p50 / p99 ms "
        "| TPOT mean / p50 ms | ITL mean / p50 / p99 ms | E2E mean ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["scenarios"]:
        lines.append(
            f"| {r['name']} | {r['time_scale']} | {r['num_requests']} | "
            f"{r['request_throughput']} | {r['output_throughput']} | {r['ttft_ms']['mean']} / "
            f"{r['ttft_ms']['median']} / {r['ttft_ms']['p99']} | {r['tpot_ms']['mean']} / "
            f"{r['tpot_ms']['median']} | {r['itl_ms']['mean']} / {r['itl_ms']['median']} / "
            f"{r['itl_ms']['p99']} | {r['e2e_ms']['mean']} |"
        )
    for r in payload["scenarios"]:
        rows = r.get("comparison", [])
        if not rows:
            continue
        ref = REFERENCES[r["reference"]]
        lines += [
            "",
            f"## {r['name']} vs published",
            "",
            f"Source: {ref['source']}.",
            f"What it measured: {ref['what']}.",
            "",
        ]
        if "gpu" in ref:
            lines += [f"GPU: {ref['gpu']}.", ""]
        if "note" in ref:
            lines += [f"Note: {ref['note']}.", ""]
        lines += ["| metric | published | simulated | error |", "|---|---|---|---|"]
        for row in rows:
            mark = "" if row["within_25pct"] else " (outside 25%)"
            lines.append(
                f"| {row['metric']} | {row['published']} | {row['simulated']} | "
                f"{row['error_pct']:+.1f}%{mark} |"
            )
    other = REFERENCES["sharegpt_offline_throughput"]
    lines += [
        "",
        "## Other published figure (not directly comparable)",
        "",
        f"- {other['what']}: {other['request_throughput']} req/s. Source: "
        f"{other['source']}. {other['note']}.",
        "",
        ANALYSIS,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the requests")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite results.md (or real_engine.md) from the JSON",
    )
    parser.add_argument(
        "--real-engine",
        action="store_true",
        help="the real-engine row instead: real vLLM (CPU) vs the cpu-tiny profile",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="--real-engine: per run")
    parser.add_argument("--repeats", type=int, default=2, help="--real-engine: repeats")
    args = parser.parse_args(argv)
    if args.real_engine:
        return real_engine.main(args.out, args.seconds, args.repeats, args.render_only)
    if args.render_only:
        payload = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(_markdown(payload))
        return 0
    started = time.perf_counter()
    todo = scenarios(args.quick)
    for scenario in todo:
        t0 = time.perf_counter()
        scenario.results = asyncio.run(_run(scenario))
        scenario.results["comparison"] = _compare(scenario)
        print(
            f"{scenario.name}: {time.perf_counter() - t0:.1f}s "
            f"{json.dumps(scenario.results['comparison'] or scenario.results['ttft_ms'])}",
            flush=True,
        )
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": f"{platform.machine()} python {platform.python_version()}",
        "wall_s": round(time.perf_counter() - started, 1),
        "quick": args.quick,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "references": REFERENCES,
        "scenarios": [
            {
                "name": s.name,
                "time_scale": s.time_scale,
                "notes": s.notes,
                "reference": s.reference,
                **s.results,
            }
            for s in todo
        ],
    }
    (args.out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "results.md").write_text(_markdown(payload))
    print(f"wrote {args.out / 'results.json'} and results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
