"""Cost-aware routing in the fleet-routing bench: the router's `score` policy with and
without its cost weight, side by side in one run (pure; `run.py` does the I/O).

A policy named `score+cost=W` is `score` with `--cost-weight-ms W`: W ms of predicted TTFT
per USD per million tokens of the backend's pool (router/README.md, "Cost-aware routing").

Equal SLO attainment: each weighted run is compared with plain `score` on the same
arrivals in the same invocation; a weight counts as "at equal SLO attainment" when its
attainment is at most `SLO_TOLERANCE` (1 point) below plain `score`'s. The saving reported
is that of the cheapest such weight (busy view: a pool is billed, all its replicas, while a
request runs on it; the provisioned view bills every replica for the whole run, which
routing cannot change on a fleet of fixed size beyond the tokens served). The whole curve
(every weight's attainment and cost) is reported too, so a reader can choose another
tolerance.
"""

from __future__ import annotations

from typing import Any

COST_PREFIX = "score+cost="
COST_WEIGHTS = (2.0, 5.0, 20.0)  # ms per USD/Mtok, the default curve
SLO_TOLERANCE = 0.01  # "equal": within 1 point of attainment


def router_policy(policy: str) -> tuple[str, tuple[str, ...]]:
    """`--policy` and the extra router flags of a bench policy name."""
    if policy.startswith(COST_PREFIX):
        weight = float(policy.removeprefix(COST_PREFIX))
        return "score", ("--cost-weight-ms", f"{weight:g}")
    return policy, ()


def cost_policies(weights: tuple[float, ...] = COST_WEIGHTS) -> list[str]:
    return [f"{COST_PREFIX}{w:g}" for w in weights]


def comparison(results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Plain `score` against each `score+cost=W` of the same level; None without both."""
    base = results.get("score")
    weighted = {p: r for p, r in results.items() if p.startswith(COST_PREFIX)}
    if base is None or not weighted or not base.get("cost_per_mtok_busy_usd"):
        return None
    curve = []
    for policy, r in sorted(weighted.items(), key=lambda kv: float(kv[0][len(COST_PREFIX) :])):
        busy, base_busy = r["cost_per_mtok_busy_usd"], base["cost_per_mtok_busy_usd"]
        curve.append({
            "policy": policy,
            "weight_ms_per_usd_mtok": float(policy[len(COST_PREFIX) :]),
            "slo_attainment": r["slo_attainment"],
            "slo_delta_points": round(100 * (r["slo_attainment"] - base["slo_attainment"]), 2),
            "p99_ttft_ms": r["p99_ttft_ms"],
            "cost_per_mtok_busy_usd": busy,
            "cost_per_mtok_provisioned_usd": r["cost_per_mtok_provisioned_usd"],
            "saved_per_mtok_busy_usd": round(base_busy - busy, 3) if busy is not None else None,
            "saved_busy": round(1 - busy / base_busy, 4) if busy is not None else None,
            "equal_slo": r["slo_attainment"] >= base["slo_attainment"] - SLO_TOLERANCE,
        })  # fmt: skip
    equal = [c for c in curve if c["equal_slo"] and c["saved_per_mtok_busy_usd"] is not None]
    best = max(equal, key=lambda c: c["saved_per_mtok_busy_usd"]) if equal else None
    return {
        "baseline": {
            "slo_attainment": base["slo_attainment"],
            "p99_ttft_ms": base["p99_ttft_ms"],
            "cost_per_mtok_busy_usd": base["cost_per_mtok_busy_usd"],
            "cost_per_mtok_provisioned_usd": base["cost_per_mtok_provisioned_usd"],
        },
        "slo_tolerance_points": 100 * SLO_TOLERANCE,
        "curve": curve,
        "best_at_equal_slo": best,
    }


def markdown(cmp: dict[str, Any], live: dict[str, dict[str, float | None]]) -> list[str]:
    """The level's cost section: the curve, the saving at equal SLO, the live costs seen."""
    b = cmp["baseline"]
    out = [
        "",
        "Cost-aware routing (`score` vs `score+cost=W`, W ms per USD/Mtok; cost per million "
        "generated tokens; equal SLO = attainment at most "
        f"{cmp['slo_tolerance_points']:g} point below `score`'s):",
        "",
        "| policy | SLO met | Δ points | p99 TTFT ms | $/Mtok busy | saved $/Mtok busy "
        "| $/Mtok provisioned | equal SLO |",
        "|---|---|---|---|---|---|---|---|",
        f"| score | {b['slo_attainment']:.1%} | 0 | {b['p99_ttft_ms']} | "
        f"{b['cost_per_mtok_busy_usd']} | 0 | {b['cost_per_mtok_provisioned_usd']} | - |",
    ]
    for c in cmp["curve"]:
        saved = c["saved_busy"]
        saved_text = f"{c['saved_per_mtok_busy_usd']} ({saved:+.1%})" if saved is not None else "-"
        out.append(
            f"| {c['policy']} | {c['slo_attainment']:.1%} | {c['slo_delta_points']:+g} | "
            f"{c['p99_ttft_ms']} | {c['cost_per_mtok_busy_usd']} | {saved_text} | "
            f"{c['cost_per_mtok_provisioned_usd']} | {'yes' if c['equal_slo'] else 'no'} |"
        )
    best = cmp["best_at_equal_slo"]
    out += [
        "",
        "Saved at equal SLO attainment: "
        + (
            f"{best['saved_per_mtok_busy_usd']} USD per million tokens "
            f"({best['saved_busy']:+.1%} of `score`'s, busy view) with {best['policy']}."
            if best
            else "none (no weight kept the attainment within the tolerance)."
        ),
    ]
    if live:
        pools = sorted({p for costs in live.values() for p in costs})
        out += ["", "Live `status.pools[].costPerMillionTokens` when each policy's routers "
                "started (USD; - = absent):", "",
                "| policy | " + " | ".join(pools) + " |",
                "|---|" + "---|" * len(pools)]  # fmt: skip
        for policy, costs in live.items():
            cells = [f"{costs[p]:g}" if costs.get(p) is not None else "-" for p in pools]
            out.append(f"| {policy} | " + " | ".join(cells) + " |")
    return out
