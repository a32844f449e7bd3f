"""Active RTT probes: every `probe_interval` seconds, one `GET /health` per backend region.

The probe goes to one serving, non-ejected endpoint of the region (a different one each
round), carries `x-factory-router-region` like routed requests do, and is sent twice back
to back: the first may pay for a new connection, the second reuses it. The faster of the
two feeds the region's windowed-min RTT estimate (`signals.rtt`). Failures are not errors
here: health is judged by the ejector from real traffic; a failed probe adds no sample.
Probes carry no request data, so probing a region outside a tenant's jurisdictions is not
a residency question.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict

from factory_router.app.state import RouterState
from factory_router.policy.fleet import Backend

log = logging.getLogger("factory_router.probes")


def probe_targets(state: RouterState, round_no: int) -> list[Backend]:
    """One endpoint per region this round: serving, not ejected, rotating by round."""
    by_region: defaultdict[str, list[Backend]] = defaultdict(list)
    now = state.now()
    for b in state.fleet.backends:
        if b.region and b.serving and not b.terminating and not state.ejector.is_ejected(b.id, now):
            by_region[b.region].append(b)
    return [
        sorted(group, key=lambda b: b.id)[round_no % len(group)]
        for _, group in sorted(by_region.items())
    ]


async def probe_once(state: RouterState, round_no: int) -> None:
    """One round of probes, concurrently."""
    headers = {"x-factory-router-region": state.region}
    targets = probe_targets(state, round_no)

    async def twice(backend: Backend) -> float | None:
        first = await state.upstream.probe(backend, headers)
        second = await state.upstream.probe(backend, headers)
        samples = [s for s in (first, second) if s is not None]
        return min(samples) if samples else None

    results = await asyncio.gather(*(twice(b) for b in targets))
    for backend, seconds in zip(targets, results, strict=True):
        if seconds is not None and backend.region:
            state.load.rtt.observe(backend.region, seconds * 1000)
            state.metrics.probe_rtt.labels(backend.region).set(seconds)


async def run_probes(state: RouterState) -> None:
    interval = state.config.probe_interval
    for round_no in itertools.count():
        try:
            await probe_once(state, round_no)
        except Exception:  # one round's surprise must not end probing for the router's life
            log.exception("RTT probe round failed")
        await asyncio.sleep(interval)
