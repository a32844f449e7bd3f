"""The compressed day: demand per jurisdiction, the arrival schedule, and the figures.

Demand follows each jurisdiction's local clock: a trough at night and one bell around
14:00 local time (business hours), `rate(h) = trough + (peak - trough) * exp(-((h - 14) /
width)^2 / 2)`. EU, US and IN are offset by their time zones (UTC+1, UTC-5, UTC+5:30), so
their peaks come at different times of the one day and the fleet's total demand moves
around the globe. A day of 24 hours is compressed into `day_s` seconds.

Arrivals are a non-homogeneous Poisson process (thinning, fixed seed): the same schedule
for every set-up of a run. Everything here is pure: no I/O.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any


@dataclass(frozen=True)
class Jurisdiction:
    """One jurisdiction's clients: its tenant (allowed there only) and its local clock."""

    name: str  # EU, US, IN
    tenant: str  # the demo tenant allowed this jurisdiction only
    utc_offset_h: float
    pool: str  # the factory's pool that serves it


@dataclass(frozen=True)
class DayShape:
    """Requests per second over a local day."""

    peak_rps: float
    trough_rps: float
    peak_hour: float = 14.0
    width_h: float = 3.5

    def rate(self, local_hour: float) -> float:
        distance = (local_hour - self.peak_hour + 12.0) % 24.0 - 12.0
        bell = math.exp(-0.5 * (distance / self.width_h) ** 2)
        return self.trough_rps + (self.peak_rps - self.trough_rps) * bell


@dataclass(frozen=True)
class Arrival:
    at_s: float  # offset in the compressed day
    jurisdiction: str
    n: int  # request number in the schedule


def local_hour(at_s: float, day_s: float, offset_h: float) -> float:
    return (at_s / day_s * 24.0 + offset_h) % 24.0


def schedule(
    jurisdictions: list[Jurisdiction], shape: DayShape, day_s: float, seed: int
) -> list[Arrival]:
    """Arrivals of the whole day, every jurisdiction, in time order (thinning)."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, str]] = []
    for j in jurisdictions:
        t = 0.0
        while True:
            t += rng.expovariate(shape.peak_rps)
            if t >= day_s:
                break
            if rng.random() * shape.peak_rps <= shape.rate(local_hour(t, day_s, j.utc_offset_h)):
                arrivals.append((t, j.name))
    arrivals.sort()
    return [Arrival(t, name, n) for n, (t, name) in enumerate(arrivals)]


@dataclass
class Record:
    """One request as the client saw it."""

    jurisdiction: str
    at_s: float
    ttft_s: float | None = None
    status: int = 0
    error: str | None = None
    served_in: str | None = None  # x-factory-jurisdiction of the answer


@dataclass
class Occupancy:
    """Replicas (pods, Terminating ones included: still billed) per pool over the run."""

    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    def replica_seconds(self, until_s: float) -> dict[str, float]:
        """Step integral of each pool's replica count from 0 to `until_s`."""
        total: dict[str, float] = {}
        for (t0, counts), (t1, _) in pairwise([*self.samples, (until_s, {})]):
            span = max(0.0, min(t1, until_s) - t0)
            for pool, n in counts.items():
                total[pool] = total.get(pool, 0.0) + n * span
        return total


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def summarise(
    records: list[Record],
    occupancy: Occupancy,
    day_s: float,
    slo_s: float,
    jurisdictions: list[Jurisdiction],
    price_per_replica_hour: Mapping[str, float],
    engine_served: Mapping[str, float],
    scale_events: Mapping[str, float],
    flaps: int,
) -> dict[str, Any]:
    """The figures of one set-up. `engine_served`: requests the engines of each jurisdiction
    counted; `scale_events`: count changes by "pool/direction"."""
    allowed = {j.name for j in jurisdictions}
    ok = [r for r in records if r.status == 200 and r.ttft_s is not None]
    met = [r for r in ok if r.ttft_s is not None and r.ttft_s <= slo_s]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    seconds = occupancy.replica_seconds(day_s)
    # A compressed day: one second of the run is 24 / day_s hours of the day it stands for.
    replica_hours = {pool: s * 24.0 / day_s for pool, s in seconds.items()}
    cost = {pool: h * price_per_replica_hour.get(pool, 0.0) for pool, h in replica_hours.items()}
    sent = Counter(r.jurisdiction for r in records)
    header_violations = sum(1 for r in records if r.served_in not in {None, "none", r.jurisdiction})
    engine_violations = sum(
        max(0.0, engine_served.get(j, 0.0) - sent.get(j, 0)) for j in allowed
    ) + sum(v for j, v in engine_served.items() if j not in allowed)
    per_jurisdiction = {}
    for j in jurisdictions:
        mine = [r for r in records if r.jurisdiction == j.name]
        mine_met = [r for r in met if r.jurisdiction == j.name]
        mine_ttft = [r.ttft_s for r in ok if r.jurisdiction == j.name and r.ttft_s is not None]
        per_jurisdiction[j.name] = {
            "requests": len(mine),
            "slo_attainment": round(len(mine_met) / len(mine), 4) if mine else None,
            "p50_ttft_ms": _ms(_pct(mine_ttft, 0.5)),
            "p99_ttft_ms": _ms(_pct(mine_ttft, 0.99)),
            "replica_hours": round(replica_hours.get(j.pool, 0.0), 2),
        }
    errors = Counter(r.error or str(r.status) for r in records if r.status != 200)
    hourly = []
    for hour in range(24):
        lo, hi = hour * day_s / 24, (hour + 1) * day_s / 24
        sent_then = [r for r in records if lo <= r.at_s < hi]
        met_then = [r for r in met if lo <= r.at_s < hi]
        counts = [c for t, c in occupancy.samples if lo <= t < hi]
        hourly.append({
            "hour_utc": hour,
            "requests": len(sent_then),
            "slo_attainment": round(len(met_then) / len(sent_then), 4) if sent_then else None,
            "replicas": round(statistics.fmean(sum(c.values()) for c in counts), 2)
            if counts else None,
        })  # fmt: skip
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": dict(errors),
        "slo_attainment": round(len(met) / len(records), 4) if records else None,
        "p50_ttft_ms": _ms(_pct(ttfts, 0.5)),
        "p99_ttft_ms": _ms(_pct(ttfts, 0.99)),
        "mean_ttft_ms": _ms(statistics.fmean(ttfts)) if ttfts else None,
        "replica_hours": round(sum(replica_hours.values()), 2),
        "replica_hours_by_pool": {p: round(h, 2) for p, h in replica_hours.items()},
        "cost_usd": round(sum(cost.values()), 2),
        "scale_events": {k: int(v) for k, v in sorted(scale_events.items()) if v},
        "scale_events_total": int(sum(scale_events.values())),
        "flaps": flaps,
        "residency_violations": {"answers": header_violations, "engines": int(engine_violations)},
        "engine_served": dict(engine_served),
        "per_jurisdiction": per_jurisdiction,
        "hourly": hourly,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
