"""The real-engine row: real vLLM (CPU, tiny model) and the simulator's cpu-tiny profile.

    PYTHONPATH=sim .venv/bin/python -m bench.sim_fidelity --real-engine \
        [--seconds 15] [--repeats 2] [--out bench/sim_fidelity/results]

Needs the pinned vLLM and the tiny model (`.venv/bin/factoryctl dev vllm`). Starts `vllm
serve` (about 80 s idle, minutes on a busy machine) and `factory-sim serve`, each in its own
process group, both stopped at the end. Then, ``--repeats`` times, for every shape: the
closed loop (closed_loop.py) against the real engine, then at once the same prompts against
the simulator, recording the load average before and after each. Writes
``real_engine.json`` and ``real_engine.md``; ``--render-only`` rewrites the Markdown.

Times are client-side and in real time (time_scale 1: the simulated engine is a CPU engine
as slow as the real one, so this host's overhead is part of both).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.sim_fidelity.closed_loop import Shape, closed_loop
from bench.sim_fidelity.engines import SERVED_NAME, real_vllm, simulated
from factory_sim.profiles import CPU_TINY

SHAPES = (Shape(1, 32, 32), Shape(4, 32, 32), Shape(8, 32, 32))
# Metrics shown side by side: (label, path into a result).
METRICS = (
    ("TTFT mean ms", ("ttft_ms", "mean")),
    ("TTFT p50 ms", ("ttft_ms", "median")),
    ("ITL mean ms", ("itl_ms", "mean")),
    ("ITL p50 ms", ("itl_ms", "median")),
    ("ITL p99 ms", ("itl_ms", "p99")),
    ("TPOT mean ms", ("tpot_ms", "mean")),
    ("out tok/s", ("output_throughput",)),
    ("req/s", ("request_throughput",)),
)


def _load() -> dict[str, Any]:
    one, five, _ = os.getloadavg()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    return {"load1": round(one, 2), "load5": round(five, 2), "uptime": uptime.strip()}


def _get(result: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = result
    for key in path:
        value = value[key]
    return float(value)


def _measure(url: str, shape: Shape, seconds: float, seed: int) -> dict[str, Any]:
    before = _load()
    result = asyncio.run(closed_loop(url, SERVED_NAME, shape, seconds, seed))
    return {**result, "load_before": before, "load_after": _load()}


def measure(seconds: float, repeats: int) -> dict[str, Any]:
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    with real_vllm() as (real_url, real_facts), simulated(CPU_TINY.name) as (sim_url, sim_facts):
        for repeat in range(repeats):
            for shape in SHAPES:
                seed = 1000 * (repeat + 1) + shape.clients  # same prompts for both engines
                real = _measure(real_url, shape, seconds, seed)
                sim = _measure(sim_url, shape, seconds, seed)
                runs.append({"repeat": repeat + 1, "shape": shape.name, "real": real, "sim": sim})
                print(
                    f"repeat {repeat + 1} {shape.name}: real ITL {real['itl_ms']['mean']} ms "
                    f"TTFT {real['ttft_ms']['mean']} ms {real['output_throughput']} tok/s | "
                    f"sim ITL {sim['itl_ms']['mean']} ms TTFT {sim['ttft_ms']['mean']} ms "
                    f"{sim['output_throughput']} tok/s | load {real['load_before']['load1']}",
                    flush=True,
                )
    return {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": f"{platform.machine()} python {platform.python_version()}, "
            f"{os.cpu_count()} cores",
            "wall_s": round(time.perf_counter() - started, 1),
            "seconds_per_measurement": seconds,
            "repeats": repeats,
            "real": real_facts,
            "sim": {**sim_facts, "profile": CPU_TINY.model_dump()},
        },
        "runs": runs,
    }


# The real engine's chunks often arrive together (several in one read), so its median gap
# between chunks is ~0 and a ratio to it says nothing: shown, not compared.
NOT_COMPARED = frozenset({"ITL p50 ms"})


def _ratio(sim: float, real: float) -> float:
    return round(sim / real, 2) if real else float("nan")


def _ratio_cell(label: str, sim: float, real: float) -> str:
    return "n/a" if label in NOT_COMPARED else f"{_ratio(sim, real)}"


def _spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]}"
    return f"{min(values)}-{max(values)}"


ANALYSIS = """\
## Reading the difference

- **The real engine's own spread is as large as the error.** Between the two repeats of this
  run, minutes apart, the real engine moved 146-281 tok/s at 1 client, 370-586 at 4 and
  793-1451 at 8; the calibration run (real_engine_calibration.md) saw 591-772 at 8. The
  2 cores were shared with other engineers' tests (load average 10-13 throughout; at
  times another real vLLM), and the real engine's latency tails show it: end-to-end p99 of
  0.7-1.3 s against medians of 0.1-0.3 s, ITL p99 of 38-82 ms. The simulator has no such
  noise. Read a sim/real ratio between ~0.5 and ~2 as inside the real engine's variation
  on this machine, not as a precise error.
- **What was fitted and what was not.** The profile's three step figures were fitted to the
  calibration run's 1-client TTFT and TPOT and its 8-client throughput (profiles.py,
  cpu-tiny). This run is a later, separate run; 4 clients is not fitted at all. Throughput
  lands at 0.78-1.5x (1 client), 0.87-1.4x (4, held out) and 0.46-0.84x (8, where the real
  engine ran far above its calibration figure in repeat 2); TPOT at 0.69-1.5x, 0.49-0.99x
  and 0.66-1.26x.
- **TTFT under load is the clear miss: 1.5x at 4 clients, 2.7-4.4x at 8.** Two causes,
  both in the simulator's model rather than its figures. (1) vLLM's per-request work
  (about 30 ms here: the API server's request handling and the engine's admission, on
  busy cores) has no place of its own in the step model, so the profile charges it as
  prefill (`prefill_token_s`) inside the engine step, where it stalls every running
  sequence; in vLLM it runs in the API server process beside the engine core. (2) The
  simulator is deterministic, so a closed loop stays in lockstep: 8 clients finish in the
  same step, send again together, and their 8 prefills land in one ~240 ms step (simulated
  TTFT p50 ~250 ms). The real engine's noise breaks the lockstep (its TTFT p50 is 15-44 ms
  at 8 clients). A per-request cost outside the step (an API-server stage) would fix both;
  no figure in this profile can.
- **Tokens per chunk.** The real engine streamed 27-30 text chunks for 32 tokens: when its
  API server falls behind it sends several tokens in one chunk (first chunk 1.0-1.7 tokens
  on average), and more than half the gaps between its chunks are near zero at 1 client
  (chunks arriving together). So the median gap between chunks is not compared (n/a); TPOT,
  counted per token from the chunks' `token_ids`, is the figure to compare. The simulator
  sends exactly one token per chunk.
- **Compute is negligible.** The tiny model's forward pass costs microseconds; what the
  profile models is vLLM's Python per step and per request on two shared cores. It holds
  for this workload's shape only: `prefill_token_s` (0.94 ms a token) would charge a
  500-token prompt about 0.47 s, which the real engine does not take. The profile is fit
  for playing the real engine's pool in the local fleet at the right order of magnitude
  (hundreds of tokens/s, a few ms per token), not for predicting it.
"""


def render(payload: dict[str, Any]) -> str:
    meta, runs = payload["meta"], payload["runs"]
    real = meta["real"]
    lines = [
        "# Real engine vs the simulator's cpu-tiny profile",
        "",
        f"Run {meta['date']} on {meta['host']}; wall time {meta['wall_s']} s; "
        f"{meta['seconds_per_measurement']} s of closed loop per measurement, "
        f"{meta['repeats']} repeats.",
        *([f"\n{meta['note']}\n"] if meta.get("note") else []),
        f"Real: vLLM {real['vllm_version']} CPU build, `vllm serve` of the tiny model "
        f"({real['model']}), flags `{' '.join(real['args'][1:])}`; ready after "
        f"{real['start_s']} s.",
        "Simulated: `factory-sim serve`, one engine on profile `cpu-tiny` "
        "(sim/factory_sim/profiles.py), time_scale 1.",
        "Workload (closed_loop.py): N clients, each sending streamed `/v1/completions` back to "
        "back, 32 prompt token ids (unique heads: no prefix-cache hits), `max_tokens` 32, "
        "`ignore_eos`; one untimed request per client first. Same client code, same prompts.",
        "",
        "## Side by side (every repeat)",
        "",
        "| repeat | shape | engine | req | "
        + " | ".join(label for label, _ in METRICS)
        + " | load1 before/after |",
        "|---|---|---|---|" + "---|" * len(METRICS) + "---|",
    ]
    for run in runs:
        for engine in ("real", "sim"):
            r = run[engine]
            values = " | ".join(f"{_get(r, path)}" for _, path in METRICS)
            lines.append(
                f"| {run['repeat']} | {run['shape']} | {engine} | {r['num_requests']} | "
                f"{values} | {r['load_before']['load1']} / {r['load_after']['load1']} |"
            )
        cells = " | ".join(
            _ratio_cell(label, _get(run["sim"], path), _get(run["real"], path))
            for label, path in METRICS
        )
        lines.append(f"| {run['repeat']} | {run['shape']} | **sim/real** | | {cells} | |")
    lines += [
        "",
        "## Ratio sim/real: mean over repeats (min-max)",
        "",
        "| shape | " + " | ".join(label for label, _ in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    shapes = list(dict.fromkeys(run["shape"] for run in runs))
    for shape in shapes:
        means = []
        for label, path in METRICS:
            if label in NOT_COMPARED:
                means.append("n/a")
                continue
            ratios = [
                _ratio(_get(run["sim"], path), _get(run["real"], path))
                for run in runs
                if run["shape"] == shape
            ]
            means.append(f"{round(statistics.fmean(ratios), 2)} ({_spread(ratios)})")
        lines.append(f"| {shape} | " + " | ".join(means) + " |")
    lines += [
        "",
        "## Spread of the real engine between repeats (min-max)",
        "",
        "| shape | " + " | ".join(label for label, _ in METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for shape in shapes:
        spreads = [
            _spread([_get(run["real"], path) for run in runs if run["shape"] == shape])
            for _, path in METRICS
        ]
        lines.append(f"| {shape} | " + " | ".join(spreads) + " |")
    lines += [
        "",
        "Token counts from the usage chunk (prompt, completion), text chunks per request and "
        "tokens in the first chunk (means):",
        "",
    ]
    for run in runs:
        for engine in ("real", "sim"):
            r = run[engine]
            lines.append(
                f"- repeat {run['repeat']} {run['shape']} {engine}: prompt "
                f"{r['prompt_tokens_seen']}, completion {r['completion_tokens_seen']}, chunks "
                f"{r['chunks_per_request_mean']}, first chunk {r['first_chunk_tokens_mean']}"
            )
    lines += [
        "",
        "Load before and after each measurement (`uptime`):",
        "",
    ]
    for run in runs:
        for engine in ("real", "sim"):
            r = run[engine]
            lines.append(
                f"- repeat {run['repeat']} {run['shape']} {engine}: before "
                f"`{r['load_before']['uptime']}`, after `{r['load_after']['uptime']}`"
            )
    if not meta.get("note"):  # the analysis reads the comparison run, not the calibration
        lines += ["", ANALYSIS]
    return "\n".join(lines)


def main(out: Path, seconds: float, repeats: int, render_only: bool) -> int:
    json_path, md_path = out / "real_engine.json", out / "real_engine.md"
    if render_only:  # the calibration run's file too (see profiles.py, cpu-tiny)
        for stem in ("real_engine", "real_engine_calibration"):
            if (out / f"{stem}.json").is_file():
                payload = json.loads((out / f"{stem}.json").read_text())
                (out / f"{stem}.md").write_text(render(payload))
        return 0
    payload = measure(seconds, repeats)
    out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(payload, indent=2) + "\n")
    md_path.write_text(render(payload))
    print(f"wrote {json_path} and {md_path}")
    return 0
