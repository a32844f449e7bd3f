"""Client-observed latency (pure): the windowed estimate, the score's choice between the
engine's figure and the observed one, latency outliers with backoff, and probing, with the
clock passed in."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from factory_router.policy.config import EjectionConfig, LatencyEjectionConfig, ScoringConfig
from factory_router.policy.fleet import Backend, Region, RttMatrix, build_fleet
from factory_router.policy.health import Ejector, LatencyEjector
from factory_router.policy.policies import PolicyName, Ranker, RouteRequest
from factory_router.policy.route import RoutePlan, plan
from factory_router.policy.scoring import LoadSample, Observed, predict
from factory_router.signals.latency import ObservedLatency
from factory_router.signals.load import LoadState
from tests.unit.router.test_policy_routing import View

CFG = ScoringConfig()
LAT = LatencyEjectionConfig(probe_share=0.25)  # a probe every 4 requests at most


def bk(bid: str, region: str, pool: str | None = None) -> Backend:
    return Backend(
        id=bid, model="m", pool=pool or f"p-{region}", region=region, url=f"http://{bid}"
    )


WEST, WEST2, CENTRAL, US = (
    bk("west", "eu-west-1", "eu-w"),
    bk("west2", "eu-west-1", "eu-w"),
    bk("central", "eu-central-1"),
    bk("us", "us-east-1"),
)
FLEET = build_fleet(
    [Region("eu-west-1", "EU"), Region("eu-central-1", "EU"), Region("us-east-1", "US")],
    [WEST, WEST2, CENTRAL, US],
    RttMatrix.from_nested({"eu-west-1": {"eu-central-1": 25, "us-east-1": 80}}),
)
HEALTHY = LoadSample(waiting=0, running=0, ttft_ms=30.0)


def view(**observed: Observed) -> View:
    """Every engine reports a healthy 30 ms TTFT; the client-observed figures are given."""
    samples = {b.id: HEALTHY for b in FLEET.backends}
    return View(samples=samples, observed=observed, router_region="eu-west-1")


def route(
    v: View, latency: LatencyEjector, now: float, *, allowed: str = "EU", explain: bool = False
) -> RoutePlan:
    return plan(
        FLEET,
        RouteRequest("m", frozenset({allowed}), "eu-west-1", None, "rid"),
        ranker=Ranker(PolicyName.SCORE, CFG),
        view=v,
        ejector=Ejector(EjectionConfig()),
        now=now,
        explain=explain,
        latency=latency,
    )


# The windowed estimate


def test_estimate_is_the_median_of_the_last_samples_within_the_window() -> None:
    now = [0.0]
    est = ObservedLatency(window_seconds=10, max_samples=5, min_samples=3, clock=lambda: now[0])
    for ms in (30.0, 31.0):
        est.observe(WEST, ms)
    assert est.replica_ms("west") is None  # two samples are not evidence
    est.observe(WEST, 900.0)  # one slow answer among fast ones moves nothing far
    assert est.replica_ms("west") == 31.0
    for ms in (430.0, 440.0):  # three of the last five are slow: a brownout, at once
        est.observe(WEST, ms)
    assert est.replica_ms("west") == 430.0
    assert est.region_ms("eu-west-1", "m") == 430.0
    assert est.of(WEST) == Observed(
        replica_ms=430.0, pool_ms=430.0, region_ms=430.0, samples=5, pool_samples=5
    )
    est.observe(WEST, 35.0)  # one fast answer is not a recovery ...
    assert est.replica_ms("west") == 430.0
    est.observe(WEST, 36.0)  # ... two in a row are: the slower of them
    assert est.replica_ms("west") == 36.0
    now[0] = 10.5  # nothing recent: no estimate, the engine's figure is used again
    assert est.replica_ms("west") is None and est.of(WEST).samples == 0


def test_only_streamed_first_bytes_count_and_router_waits_are_not_the_backends() -> None:
    state = LoadState(stale_after=5.0, clock=lambda: 0.0)
    for _ in range(3):  # a non-streamed answer's first byte comes after the generation
        state.observe_first_byte(WEST, 2000.0, streamed=False)
    assert state.client_observed(WEST).replica_ms is None
    for _ in range(3):  # 450 ms of which 420 ms waiting for a connection in the router
        state.observe_first_byte(WEST, 450.0, streamed=True, router_wait_ms=420.0)
    assert state.client_observed(WEST).replica_ms == 30.0
    assert state.measured_rtt_ms("eu-west-1") == 30.0


def test_a_region_is_as_slow_as_its_fastest_pool_and_a_replica_falls_back_to_its_pool() -> None:
    """One pool of a region browned out (the fleet bench's eu-central-1 H100 case): its
    samples neither make the region slow nor reach another pool's replicas; a replica
    without samples of its own takes its pool's figure first."""
    h100, h100b, inf2 = (
        bk(i, "eu-central-1", p)
        for i, p in (("h100", "fra-h100"), ("h100b", "fra-h100"), ("inf2", "fra-inf2"))
    )
    est = ObservedLatency(window_seconds=10, max_samples=5, min_samples=3)
    for ms in (440.0, 450.0, 460.0):
        est.observe(h100, ms)
    assert est.pool_ms("fra-h100", "m") == 450.0
    assert est.region_ms("eu-central-1", "m") == 450.0  # the only pool measured
    assert est.of(h100b) == Observed(pool_ms=450.0, region_ms=450.0, pool_samples=3)
    est.observe(inf2, 40.0)  # one fast answer of another pool: the path is not slow
    assert est.region_ms("eu-central-1", "m") == 40.0
    assert est.of(inf2).pool_ms is None and est.of(inf2).pool_samples == 1
    for ms in (41.0, 42.0):
        est.observe(inf2, ms)
    assert est.region_ms("eu-central-1", "m") == 41.0
    assert est.of(h100b).pool_ms == 450.0 and est.of(h100b).region_ms == 41.0


def test_a_browned_out_pool_does_not_drive_traffic_from_its_healthy_neighbours() -> None:
    """The router's own samples mostly from one browned-out pool: its replicas lose the
    traffic to the healthy pool of the same region (nearest), whose replica, with too few
    samples for a figure of its own, keeps its engine's; the region is no latency
    outlier."""
    h100, inf2, dub = (
        bk("h100", "eu-central-1", "fra-h100"),
        bk("inf2", "eu-central-1", "fra-inf2"),
        bk("dub", "eu-west-1", "dub"),
    )
    fleet = build_fleet(
        [Region("eu-west-1", "EU"), Region("eu-central-1", "EU")],
        [h100, inf2, dub],
        RttMatrix.from_nested({"eu-west-1": {"eu-central-1": 25}}),
    )
    est = ObservedLatency(window_seconds=10, max_samples=5, min_samples=3)
    for ms in (30.0, 445.0, 450.0, 455.0):  # the router is in eu-central-1: RTT 1 ms
        est.observe(h100, ms)
    est.observe(inf2, 31.0)  # one sample: no figure of its own yet
    for ms in (60.0, 61.0, 62.0):
        est.observe(dub, ms)
    v = View(
        samples={b.id: HEALTHY for b in (h100, inf2, dub)},
        observed={b.id: est.of(b) for b in (h100, inf2, dub)},
        router_region="eu-central-1",
    )
    latency = LatencyEjector(LAT)

    def route_one() -> RoutePlan:
        return plan(
            fleet,
            RouteRequest("m", frozenset({"EU"}), "eu-central-1", None, "rid"),
            ranker=Ranker(PolicyName.SCORE, CFG),
            view=v,
            ejector=Ejector(EjectionConfig()),
            now=0.0,
            latency=latency,
        )

    probe = route_one()  # the slow replica's probe (the first suspect is probed at once)
    assert probe.probe and probe.ordered[0].backend.id == "h100"
    got = route_one()
    assert not got.probe
    assert [r.backend.id for r in got.ordered] == ["inf2", "dub", "h100"]
    first = got.ordered[0].parts
    assert first.ttft_source == "engine" and first.observed_region_ttft_ms == 30.0
    assert got.ordered[-1].parts.ttft_source == "observed"
    assert not latency.degraded("region:eu-central-1/m", 0.0)


@settings(max_examples=200, deadline=None)
@given(
    normal=st.lists(st.floats(1, 100), min_size=3, max_size=5),
    spikes=st.lists(st.floats(1_000, 60_000), max_size=2),
    order=st.randoms(use_true_random=False),
)
def test_a_minority_of_spikes_never_makes_a_replica_look_slow(
    normal: list[float], spikes: list[float], order: random.Random
) -> None:
    samples = normal + spikes
    order.shuffle(samples)
    est = ObservedLatency(window_seconds=10, max_samples=len(samples), min_samples=3)
    for ms in samples:
        est.observe(WEST, ms)
    got = est.replica_ms("west")
    assert got is not None
    if len(spikes) * 2 < len(samples):
        assert min(normal) <= got <= max(normal)
    assert min(samples) <= got <= max(samples)


# The score: observed wins when materially higher, never to flatter a replica


def test_observed_wins_over_a_healthy_engine_report_when_clients_wait_longer() -> None:
    v = view(west=Observed(replica_ms=432.0, region_ms=432.0, samples=5))
    v.rtts = {"eu-west-1": 2.0}
    parts = predict(WEST, "eu-west-1", FLEET, v, CFG)
    assert parts.ttft_source == "observed" and parts.ttft_ms == 430.0
    assert parts.engine_ttft_ms == 30.0 and parts.observed_ttft_ms == 430.0
    # A small disagreement (a median against a 1-min mean) is not a brownout.
    v.observed = {"west": Observed(replica_ms=72.0, samples=5)}
    assert predict(WEST, "eu-west-1", FLEET, v, CFG).ttft_source == "engine"
    # Without the replica's own samples, its region's figure stands in.
    v.observed = {"west2": Observed(region_ms=502.0)}
    parts = predict(WEST2, "eu-west-1", FLEET, v, CFG)
    assert parts.ttft_source == "observed" and parts.observed_region_ttft_ms == 500.0


@settings(max_examples=300, deadline=None)
@given(
    engine=st.none() | st.floats(0, 5_000),
    seen=st.none() | st.floats(0, 10_000),
    region=st.none() | st.floats(0, 10_000),
    rtt=st.floats(0, 300),
)
def test_the_observed_figure_never_makes_a_replica_look_faster_than_its_engine(
    engine: float | None, seen: float | None, region: float | None, rtt: float
) -> None:
    v = View(
        samples={"west": LoadSample(ttft_ms=engine)},
        observed={"west": Observed(replica_ms=seen, region_ms=region)},
        rtts={"eu-west-1": rtt},
        router_region="eu-west-1",
    )
    parts = predict(WEST, "eu-west-1", FLEET, v, CFG)
    without = View(samples=v.samples, rtts=v.rtts, router_region="eu-west-1")
    no_observed = predict(WEST, "eu-west-1", FLEET, without, CFG)
    assert parts.ttft_ms >= no_observed.ttft_ms
    assert parts.score >= no_observed.score
    if parts.ttft_source == "observed":
        client = seen if seen is not None else region
        assert client is not None and parts.ttft_ms == max(client - rtt, 0.0)
        assert parts.predicted_ttft_ms >= client - 1e-6  # clients wait at least that


# Latency outliers (the state machine)


def test_outlier_degraded_with_growing_backoff_lifted_early_on_recovery() -> None:
    lat = LatencyEjector(LatencyEjectionConfig(base_seconds=2, max_seconds=30))
    lat.judge("west", 100.0, 30.0, now=0.0)  # 3.3x but only +70 ms: not an outlier
    assert not lat.degraded("west", 0.0)
    lat.judge("west", 430.0, 30.0, now=0.0)
    assert lat.degraded("west", 1.9) and not lat.degraded("west", 2.1)
    assert "430ms" in (lat.describe("west", 1.0) or "")
    lat.judge("west", None, 30.0, now=1.0)  # no evidence: no change
    lat.judge("west", 430.0, None, now=1.0)
    assert lat.degraded("west", 1.0)
    lat.judge("west", 430.0, 30.0, now=2.5)  # still slow when its time is up: 4 s
    assert lat.degraded("west", 6.4) and not lat.degraded("west", 6.6)
    lat.judge("west", 200.0, 30.0, now=3.0)  # better, not within half the bounds: stays
    assert lat.degraded("west", 3.0)
    lat.judge("west", 60.0, 30.0, now=3.5)  # the probes say it recovered: lifted now
    assert not lat.degraded("west", 3.5) and lat.describe("west", 3.5) is None
    lat.judge("west", 430.0, 30.0, now=4.0)  # relapse: the backoff goes on growing
    assert lat.degraded("west", 11.9) and not lat.degraded("west", 12.1)
    lat.judge("west", 30.0, 30.0, now=12.0 + 31)  # a long quiet resets the backoff
    lat.judge("west", 430.0, 30.0, now=50.0)
    assert lat.degraded("west", 51.9) and not lat.degraded("west", 52.1)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0, 5), st.none() | st.floats(0, 5_000), st.floats(0, 1_000)),
        max_size=40,
    )
)
def test_only_a_figure_far_above_its_peers_degrades(
    steps: list[tuple[float, float | None, float]],
) -> None:
    lat = LatencyEjector(LAT)
    now = 0.0
    for dt, figure, peers in steps:
        now += dt
        was = lat.degraded("x", now)
        lat.judge("x", figure, peers, now)
        if not was and lat.degraded("x", now):
            assert figure is not None and figure > max(3 * peers, peers + 200)
        if was and not lat.degraded("x", now):  # lifted early: well within the bounds
            assert figure is not None and figure <= max(2 * peers, peers + 100)


def test_probes_are_a_share_of_requests_once_per_interval_at_most() -> None:
    lat = LatencyEjector(LatencyEjectionConfig(probe_interval_seconds=1.0, probe_share=0.01))
    assert lat.probe_due("west", 0.0)  # the credit starts full
    lat.probed("west", 0.0)
    for _ in range(99):
        lat.earn()
    assert not lat.probe_due("central", 5.0)  # 99 requests: not yet one probe's worth
    lat.earn()
    assert lat.probe_due("central", 5.0) and not lat.probe_due("west", 0.99)
    assert lat.probe_due("west", 1.0)
    for _ in range(500):  # the credit is capped: no burst of probes after a quiet spell
        lat.earn()
    lat.probed("central", 5.0)
    assert not lat.probe_due("west", 5.0)


def test_departed_replicas_are_forgotten() -> None:
    lat = LatencyEjector(LatencyEjectionConfig(probe_interval_seconds=1.0, probe_share=1.0))
    lat.probed("west", 0.0)
    lat.earn()
    lat.judge("west", 430.0, 30.0, now=0.0)
    lat.judge("region:eu-west-1/m", 430.0, 30.0, now=0.0)
    assert not lat.probe_due("west", 0.5)
    lat.forget({"central"})
    assert not lat.degraded("west", 0.5) and lat.probe_due("west", 0.5)
    assert lat.degraded("region:eu-west-1/m", 0.5)  # regions are few: kept


# The plan: demoted, probed, never widened


def test_slow_region_loses_its_traffic_but_keeps_a_share_of_probes() -> None:
    lat = LatencyEjector(LAT)
    slow = Observed(replica_ms=430.0, region_ms=430.0, samples=5)
    v = view(west=slow, west2=slow, central=Observed(replica_ms=56.0, region_ms=56.0, samples=5))
    v.rtts = {"eu-west-1": 0.0, "eu-central-1": 25.0}
    firsts = []
    for i in range(40):  # 10 requests a second for 4 s
        p = route(v, lat, now=i / 10)
        firsts.append((p.ordered[0].backend.id, p.probe))
        assert {r.backend.id for r in p.ordered} == {"west", "west2", "central"}
        assert ("latency probe" in p.reason) == p.probe
    probes = [b for b, probe in firsts if probe]
    assert sorted(probes) == ["west"] * 4 + ["west2"] * 4  # one each per second
    assert all(b == "central" for b, probe in firsts if not probe)
    assert firsts[0][1] and not firsts[1][1]  # a probe at once, the next 4 requests later
    assert firsts[4][1]
    rows = {r["backend"]: r for r in route(v, lat, 4.0, explain=True).explanation}
    assert rows["central"]["verdict"] == "chosen"
    assert (rows["west"]["latency_outlier"] or "").startswith("region latency 430ms")
    assert rows["west"]["parts"]["ttft_source"] == "observed"
    assert rows["west"]["parts"]["engine_ttft_ms"] == 30.0
    assert "latency_outlier" not in rows["us"]  # not a candidate: not judged either
    # Recovery, as the probes see it: back at once, no probe needed any more.
    fast = Observed(replica_ms=31.0, region_ms=31.0, samples=5)
    v.observed.update(west=fast, west2=fast)
    p = route(v, lat, now=4.5)
    assert p.ordered[0].backend.id in {"west", "west2"} and not p.probe


def test_one_slow_replica_is_an_outlier_among_its_pool_peers() -> None:
    lat = LatencyEjector(LAT)
    v = view(
        west=Observed(replica_ms=700.0, region_ms=60.0, samples=5),
        west2=Observed(replica_ms=30.0, region_ms=60.0, samples=5),
    )
    v.rtts = {"eu-west-1": 0.0, "eu-central-1": 25.0}
    p = route(v, lat, now=0.0)
    assert p.probe and p.ordered[0].backend.id == "west"  # the first request probes it
    p = route(v, lat, now=0.1)
    assert [r.backend.id for r in p.ordered] == ["west2", "central", "west"]
    assert lat.degraded("west", 0.1) and not lat.degraded("region:eu-west-1/m", 0.1)


def test_no_probe_while_one_is_in_flight_or_the_batch_is_full() -> None:
    lat = LatencyEjector(LAT)
    slow = Observed(replica_ms=430.0, region_ms=430.0, samples=5)
    v = view(west=slow, west2=slow, central=Observed(replica_ms=56.0, region_ms=56.0, samples=5))
    v.rtts = {"eu-west-1": 0.0, "eu-central-1": 25.0}
    v.inflight_now = {"west": 1}  # its last probe has not answered yet
    v.capacities = {"west2": 4.0}
    v.samples["west2"] = LoadSample(waiting=2, running=4, ttft_ms=30.0)  # full: it would queue
    p = route(v, lat, now=0.0)
    assert not p.probe and p.ordered[0].backend.id == "central"
    v.inflight_now = {}
    p = route(v, lat, now=0.1)
    assert p.probe and p.ordered[0].backend.id == "west"


def test_explain_neither_judges_nor_consumes_probes() -> None:
    lat = LatencyEjector(LAT)
    slow = Observed(replica_ms=430.0, region_ms=430.0, samples=5)
    v = view(west=slow, west2=slow, central=Observed(replica_ms=56.0, region_ms=56.0, samples=5))
    route(v, lat, now=0.0, explain=True)
    assert not lat.degraded("region:eu-west-1/m", 0.0) and lat.probe_due("west", 0.0)


@settings(max_examples=200, deadline=None)
@given(
    figures=st.dictionaries(
        st.sampled_from(["west", "west2", "central", "us"]),
        st.tuples(st.none() | st.floats(0, 5_000), st.none() | st.floats(0, 5_000)),
    ),
    times=st.lists(st.floats(0, 60), min_size=1, max_size=30).map(sorted),
    allowed=st.sampled_from(["EU", "US"]),
)
def test_latency_only_reorders_the_compliant_candidates(
    figures: dict[str, tuple[float | None, float | None]], times: list[float], allowed: str
) -> None:
    v = view(**{k: Observed(replica_ms=a, region_ms=b, samples=5) for k, (a, b) in figures.items()})
    lat = LatencyEjector(LAT)
    compliant = {b.id for b in FLEET.compliant("m", frozenset({allowed}))}
    probes: list[tuple[float, str]] = []
    for now in times:
        p = route(v, lat, now, allowed=allowed)
        assert sorted(r.backend.id for r in p.ordered) == sorted(compliant)
        if p.probe:
            probes.append((now, p.ordered[0].backend.id))
    for backend_id in compliant:  # at most one probe per backend per interval
        at = [t for t, b in probes if b == backend_id]
        assert all(b - a >= LAT.probe_interval_seconds for a, b in itertools.pairwise(at))
    assert len(probes) <= 1 + LAT.probe_share * len(times)  # and a share of the requests
