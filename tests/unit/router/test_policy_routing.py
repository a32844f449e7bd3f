"""Residency filter, scoring, baseline policies, affinity, health state machines (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from factory_router.policy.affinity import preferred, prefix_key
from factory_router.policy.config import EjectionConfig, RetryBudgetConfig, ScoringConfig
from factory_router.policy.errors import ModelNotFound, NoCompliantBackend
from factory_router.policy.fleet import Backend, Fleet, Region, RttMatrix, build_fleet
from factory_router.policy.health import Ejector, RetryBudget
from factory_router.policy.policies import PolicyName, Ranker, RouteRequest
from factory_router.policy.route import plan
from factory_router.policy.scoring import LoadSample, Observed, predict

CFG = ScoringConfig()


@dataclass
class View:
    samples: dict[str, LoadSample] = field(default_factory=dict)
    inflight_now: dict[str, int] = field(default_factory=dict)
    at_snapshot: dict[str, int] = field(default_factory=dict)
    ttft: dict[str, float] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    capacities: dict[str, float] = field(default_factory=dict)
    rtts: dict[str, float] = field(default_factory=dict)  # measured, by backend region
    observed: dict[str, Observed] = field(default_factory=dict)  # client-observed
    router_region: str | None = None

    def sample(self, backend: Backend) -> LoadSample | None:
        return self.samples.get(backend.id)

    def inflight(self, backend_id: str) -> int:
        return self.inflight_now.get(backend_id, 0)

    def inflight_at_snapshot(self, backend_id: str) -> int:
        return self.at_snapshot.get(backend_id, 0)

    def observed_ttft_ms(self, backend_id: str) -> float | None:
        return self.ttft.get(backend_id)

    def observed_duration_ms(self, backend_id: str) -> float | None:
        return self.durations.get(backend_id)

    def capacity(self, backend: Backend) -> float | None:
        return self.capacities.get(backend.id)

    def measured_rtt_ms(self, region: str) -> float | None:
        return self.rtts.get(region)

    def client_observed(self, backend: Backend) -> Observed:
        return self.observed.get(backend.id, Observed())


def b(bid: str, region: str | None, model: str = "m", pool: str | None = None) -> Backend:
    return Backend(
        id=bid, model=model, pool=pool or f"p-{region}", region=region, url=f"http://{bid}"
    )


def fleet(*backends: Backend) -> Fleet:
    return build_fleet(
        [
            Region("eu-west-1", "EU"),
            Region("eu-central-1", "EU"),
            Region("us-east-1", "US"),
            Region("ap-south-1", "IN"),
            Region("nowhere-1", None),
        ],
        backends,
        RttMatrix.from_nested({"eu-west-1": {"eu-central-1": 25, "us-east-1": 80}}),
    )


def route(
    f: Fleet,
    allowed: set[str],
    *,
    policy: PolicyName = PolicyName.SCORE,
    view: View | None = None,
    ejector: Ejector | None = None,
    model: str = "m",
    prefix: str | None = None,
    explain: bool = False,
    client: str = "eu-west-1",
) -> list[str]:
    p = plan(
        f,
        RouteRequest(model, frozenset(allowed), client, prefix, "rid"),
        ranker=Ranker(policy, CFG),
        view=view or View(),
        ejector=ejector or Ejector(EjectionConfig()),
        now=100.0,
        explain=explain,
    )
    return [r.backend.id for r in p.ordered]


def test_residency_filter_fails_closed() -> None:
    f = fleet(
        b("eu", "eu-west-1"),
        b("us", "us-east-1"),
        b("noregion", None),
        b("unknown", "mars-1"),
        b("nojur", "nowhere-1"),
    )
    assert route(f, {"EU"}) == ["eu"]
    assert route(f, {"US"}) == ["us"]
    assert set(route(f, {"EU", "US"})) == {"eu", "us"}
    reasons = {x.id: f.exclusion_reason(x, frozenset({"EU", "US"})) for x in f.backends}
    assert reasons["noregion"] == "backend has no region"
    assert "unknown" in (reasons["unknown"] or "")
    assert "no jurisdiction" in (reasons["nojur"] or "")


def test_model_elsewhere_is_404_not_503() -> None:
    f = fleet(b("us", "us-east-1", model="only-us"), b("eu", "eu-west-1"))
    with pytest.raises(ModelNotFound) as info:
        route(f, {"EU"}, model="only-us")
    assert "exist" in info.value.message and "us-east" not in info.value.message
    with pytest.raises(ModelNotFound):
        route(f, {"EU"}, model="never-heard-of")
    assert f.models_for(frozenset({"EU"})) == ["m"]
    assert f.models_for(frozenset({"EU", "US"})) == ["m", "only-us"]


def test_all_compliant_ejected_is_503_even_if_others_healthy() -> None:
    f = fleet(b("eu", "eu-west-1"), b("us", "us-east-1"))
    ej = Ejector(EjectionConfig(consecutive_failures=1))
    ej.record_failure("eu", 99.5)
    with pytest.raises(NoCompliantBackend):
        route(f, {"EU"}, ejector=ej)
    assert route(f, {"US"}, ejector=ej) == ["us"]


def test_terminating_endpoints_only_as_last_resort() -> None:
    live = b("live", "eu-west-1")
    going = Backend(
        id="going", model="m", pool="p", region="eu-west-1", url="http://g", terminating=True
    )
    gone = Backend(
        id="gone", model="m", pool="p", region="eu-west-1", url="http://x", serving=False
    )
    assert route(fleet(live, going, gone), {"EU"}) == ["live"]
    assert route(fleet(going, gone), {"EU"}) == ["going"]
    with pytest.raises(NoCompliantBackend):
        route(fleet(gone), {"EU"})


def test_score_prefers_near_then_unloaded() -> None:
    near, far = b("near", "eu-west-1"), b("far", "eu-central-1")
    f = fleet(near, far)
    assert route(f, {"EU"}) == ["near", "far"]
    busy = View(samples={"near": LoadSample(waiting=5, running=30, ttft_ms=200)})
    assert route(f, {"EU"}, view=busy) == ["far", "near"]
    kv_full = View(samples={"near": LoadSample(kv_usage=1.0)})
    parts = predict(near, "eu-west-1", f, kv_full, CFG)
    assert parts.kv_penalty_ms == pytest.approx(CFG.kv_penalty_ms)


def test_inflight_blend_prevents_herding_on_stale_snapshot() -> None:
    a, c = b("a", "eu-west-1", pool="p"), b("c", "eu-west-1", pool="p")
    f = fleet(a, c)
    # Snapshot says `a` is idle, but this router has since sent it 20 requests.
    view = View(
        samples={"a": LoadSample(running=0), "c": LoadSample(running=5)},
        inflight_now={"a": 20},
        at_snapshot={"a": 0},
    )
    assert route(f, {"EU"}, view=view)[0] == "c"
    parts = predict(a, "eu-west-1", f, view, CFG)
    assert parts.outstanding == 20 and parts.load_source == "prometheus+inflight"
    # Without a snapshot, the router's own in-flight counts still spread the load.
    passive = View(inflight_now={"a": 3})
    assert route(f, {"EU"}, view=passive)[0] == "c"
    assert predict(a, "eu-west-1", f, passive, CFG).load_source == "inflight-only"


def test_observed_ttft_excludes_network_rtt() -> None:
    far = b("far", "us-east-1")
    parts = predict(far, "eu-west-1", fleet(far), View(ttft={"far": 130.0}), CFG)
    assert parts.rtt_ms == 80 and parts.ttft_ms == pytest.approx(50.0)


def test_prefix_affinity_within_pool_unless_overloaded() -> None:
    reps = [b(f"r{i}", "eu-west-1", pool="p") for i in range(4)]
    f = fleet(*reps)
    key = prefix_key({"messages": [{"role": "system", "content": "You are helpful."}]}, 512)
    assert key is not None
    owner = preferred(key, [r.id for r in reps])
    assert route(f, {"EU"}, prefix=key)[0] == owner
    overloaded = View(inflight_now={owner or "": CFG.affinity_max_outstanding})
    assert route(f, {"EU"}, prefix=key, view=overloaded)[0] != owner
    # Same prefix, same owner; removing another replica does not move it.
    others = [r.id for r in reps if r.id != owner][1:]
    assert preferred(key, [owner or "", *others]) == owner


def test_prefix_key_never_contains_the_prompt() -> None:
    k = prefix_key({"prompt": "secret patient data"}, 512)
    assert k is not None and "secret" not in k
    assert prefix_key({"model": "m"}, 512) is None


def test_baselines_stay_inside_the_filter() -> None:
    f = fleet(b("e1", "eu-west-1"), b("e2", "eu-central-1"), b("u", "us-east-1"))
    ranker = Ranker(PolicyName.ROUND_ROBIN, CFG)
    firsts = []
    for _ in range(4):
        p = plan(
            f,
            RouteRequest("m", frozenset({"EU"}), None),
            ranker=ranker,
            view=View(),
            ejector=Ejector(EjectionConfig()),
            now=0.0,
        )
        firsts.append(p.ordered[0].backend.id)
    assert firsts == ["e1", "e2", "e1", "e2"]
    view = View(inflight_now={"e1": 4, "e2": 1})
    assert route(f, {"EU"}, policy=PolicyName.LEAST_REQUEST, view=view) == ["e2", "e1"]


def test_explain_lists_every_backend_with_a_verdict() -> None:
    f = fleet(
        b("near", "eu-west-1"), b("far", "eu-central-1"), b("us", "us-east-1"), b("noregion", None)
    )
    p = plan(
        f,
        RouteRequest("m", frozenset({"EU"}), "eu-west-1"),
        ranker=Ranker(PolicyName.SCORE, CFG),
        view=View(),
        ejector=Ejector(EjectionConfig()),
        now=0.0,
        explain=True,
    )
    rows = {r["backend"]: r for r in p.explanation}
    assert rows["near"]["verdict"] == "chosen"
    assert rows["far"]["verdict"] == "failover #1"
    assert rows["us"]["verdict"] == "excluded: jurisdiction US not allowed"
    assert rows["noregion"]["verdict"] == "excluded: backend has no region"
    assert set(rows["near"]["parts"]) >= {
        "rtt_ms",
        "queue_ms",
        "kv_penalty_ms",
        "affinity_bonus_ms",
        "cost_ms",
        "score",
    }


def test_cost_weight() -> None:
    cheap = Backend(id="cheap", model="m", pool="a", region="eu-central-1", url="u", cost=1.0)
    dear = Backend(id="dear", model="m", pool="b", region="eu-west-1", url="v", cost=10.0)
    f = fleet(cheap, dear)
    assert route(f, {"EU"}) == ["dear", "cheap"]
    p = plan(
        f,
        RouteRequest("m", frozenset({"EU"}), "eu-west-1"),
        ranker=Ranker(PolicyName.SCORE, ScoringConfig(cost_weight_ms=5.0)),
        view=View(),
        ejector=Ejector(EjectionConfig()),
        now=0.0,
    )
    assert p.ordered[0].backend.id == "cheap"


def test_ejection_backoff_grows_and_decays() -> None:
    ej = Ejector(EjectionConfig(consecutive_failures=2, base_seconds=1, max_seconds=5))
    assert not ej.record_failure("x", 0.0)
    assert ej.record_failure("x", 0.0)
    assert ej.is_ejected("x", 0.5) and not ej.is_ejected("x", 1.0)
    assert ej.record_failure("x", 1.0)  # probation: one failure re-ejects, for longer
    assert ej.ejected_until("x") == 3.0
    assert ej.record_failure("x", 3.0) and ej.ejected_until("x") == 7.0
    assert ej.record_failure("x", 7.0) and ej.ejected_until("x") == 12.0  # capped at 5 s
    for _ in range(4):
        ej.record_success("x")
    assert not ej.is_ejected("x", 12.0)
    assert not ej.record_failure("x", 12.0)  # healthy again: needs 2 in a row


def test_retry_budget() -> None:
    budget = RetryBudget(RetryBudgetConfig(ratio=0.5, min_per_second=0.0, window_seconds=10))
    for _ in range(4):
        budget.record_request(0.0)
    assert budget.try_withdraw(0.0) and budget.try_withdraw(0.0)
    assert not budget.try_withdraw(0.0)
    assert not budget.try_withdraw(11.0)  # the window slid: no requests, no retries
    floor = RetryBudget(RetryBudgetConfig(ratio=0.0, min_per_second=0.2, window_seconds=10))
    assert floor.try_withdraw(0.0) and floor.try_withdraw(0.0) and not floor.try_withdraw(0.0)


def test_full_batch_sends_the_next_request_to_a_farther_replica_with_a_free_slot() -> None:
    near, far = b("near", "eu-west-1"), b("far", "eu-central-1")
    f = fleet(near, far)
    view = View(
        capacities={"near": 2, "far": 64},
        durations={"near": 400.0, "far": 400.0},
        router_region="eu-west-1",
    )
    assert route(f, {"EU"}, view=view)[0] == "near"  # idle: 1 ms away beats 25 ms
    view.inflight_now = {"near": 1}  # one of two slots busy: a 1/4 chance the other goes
    parts = predict(near, "eu-west-1", f, view, CFG)
    assert parts.slot_wait_ms == pytest.approx(0.25 * 400 / 2) and parts.capacity == 2
    view.inflight_now = {"near": 2}  # full: the next waits for a slot (+ the contention)
    parts = predict(near, "eu-west-1", f, view, CFG)
    assert parts.slot_wait_ms == pytest.approx((1 + 1) * 400 / 2)
    assert route(f, {"EU"}, view=view)[0] == "far"
    view.inflight_now = {"far": 32}  # half of a big batch busy: no contention to speak of
    assert predict(far, "eu-west-1", f, view, CFG).slot_wait_ms == pytest.approx(0.5**64 * 400 / 64)


def test_measured_rtt_replaces_the_matrix_for_clients_in_the_routers_region() -> None:
    west, central = b("west", "eu-west-1"), b("central", "eu-central-1")
    f = fleet(west, central)
    view = View(rtts={"eu-central-1": 4.0}, router_region="eu-west-1")
    parts = predict(central, "eu-west-1", f, view, CFG)
    assert (parts.rtt_ms, parts.rtt_source) == (4.0, "measured")
    parts = predict(central, None, f, view, CFG)  # no client region: the router's own
    assert (parts.rtt_ms, parts.rtt_source) == (4.0, "measured")
    # A client elsewhere: this router's measurements say nothing about its path.
    parts = predict(west, "us-east-1", f, view, CFG)
    assert (parts.rtt_ms, parts.rtt_source) == (80.0, "matrix")


def test_engine_ttft_measured_at_the_current_batch_is_not_charged_again() -> None:
    # A replica next door whose engine reports a 100 ms mean TTFT while running 12 requests,
    # against one 190 ms away that answers in 10 ms: the near one is faster (102 vs 200 ms)
    # as long as nothing is added to the batch its TTFT was measured with.
    near, far = b("near", "ap-south-1"), b("far", "us-east-1")
    f = fleet(near, far)
    view = View(
        samples={
            "near": LoadSample(running=12, ttft_ms=100.0),
            "far": LoadSample(running=1, ttft_ms=10.0),
        },
        rtts={"ap-south-1": 2.0, "us-east-1": 190.0},
        router_region="ap-south-1",
    )
    parts = predict(near, "ap-south-1", f, view, CFG)
    assert parts.queue_ms == 0.0 and parts.outstanding == 12
    assert route(f, {"IN", "US"}, client="ap-south-1", view=view)[0] == "near"
    # Requests this router sent since the snapshot do slow it further.
    view.inflight_now, view.at_snapshot = {"near": 3}, {"near": 0}
    assert predict(near, "ap-south-1", f, view, CFG).queue_ms == 3 * CFG.per_outstanding_ms
    # Capacity known: the same, counted within the batch.
    view.capacities = {"near": 64.0}
    assert predict(near, "ap-south-1", f, view, CFG).queue_ms == 3 * CFG.per_outstanding_ms
