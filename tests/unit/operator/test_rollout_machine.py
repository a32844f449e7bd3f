"""The rollout state machine (plan.rollout.next_rollout), path by path: what one call decides
from the spec, the pools and the previous status (Rolling, a canary step by step, failures
and rollbacks, waves). Interruptions and whole rollouts: test_rollout_machine_sequences.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from rollout_machine_kit import (
    A_READY,
    AP,
    EU,
    HOLD,
    OLD,
    PASS,
    STABLE_R1,
    TARGET,
    US,
    decide,
    last_step_passed,
    reasons,
    result,
    rollback_at_step_one,
    spec,
    stamp,
    started,
    view,
)

from factory_operator.api.rollout import GateResult, Rollout, RolloutStatus, RolloutStep
from factory_operator.plan.rollout import (
    GateReport,
    PoolDirective,
    canary_replicas,
    factory_revision,
    waves,
)

# --- the pieces -----------------------------------------------------------------------------


def test_factory_revision_is_a_short_hash_of_the_sorted_pairs() -> None:
    one = factory_revision({"a": "p1", "b": "p2"})
    assert one == factory_revision({"b": "p2", "a": "p1"})
    assert len(one) == 10
    assert all(c in "0123456789abcdef" for c in one)
    assert one != factory_revision({"a": "p1", "b": "p3"})
    assert one != factory_revision({"a": "p1", "c": "p2"})


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ((), True),
        ((True, True), True),
        ((True, None), None),
        ((None, False), False),
        ((True, False), False),
    ],
)
def test_gate_report_verdict(verdicts: tuple[bool | None, ...], expected: bool | None) -> None:
    report = GateReport(tuple(result("TtftP95", passed=v) for v in verdicts))
    assert report.passed is expected


@pytest.mark.parametrize(
    ("weight", "replicas", "desired", "expected"),
    [
        (10, None, 4, 1),
        (50, None, 4, 2),
        (50, None, 3, 2),
        (25, None, 10, 3),
        (10, None, 0, 1),
        (1, None, 100, 1),
        (1, None, 101, 2),
        (99, None, 100, 99),
        (10, 3, 4, 3),
    ],
)
def test_canary_replicas_round_up_at_least_one(
    weight: int, replicas: int | None, desired: int, expected: int
) -> None:
    assert canary_replicas(RolloutStep(weight=weight, replicas=replicas), desired) == expected


@pytest.mark.parametrize(
    ("fields", "regions", "expected"),
    [
        ({}, [EU, US, AP], [[EU], [US, AP]]),
        ({}, [EU, EU, US], [[EU], [US]]),
        ({"waveSize": 1}, [EU, US, AP], [[EU], [US], [AP]]),
        ({}, [], []),
        ({"waves": [[US], [EU, AP]]}, [EU, US, AP], [[US], [EU, AP]]),
        ({"waves": [[US, US], [US, EU]]}, [EU, US], [[US], [EU]]),  # repeated: first wave
        ({"waves": [[US]]}, [EU, US, AP], [[US], [EU, AP]]),  # omitted: a last wave
    ],
)
def test_waves(fields: dict[str, Any], regions: list[str], expected: list[list[str]]) -> None:
    assert waves(spec(**fields), regions) == expected


# --- Rolling and no canary ------------------------------------------------------------------


@pytest.mark.parametrize("rollout", [None, spec(strategy="Rolling")])
def test_rolling_applies_every_pool_and_is_stable_once_rolled(rollout: Rollout | None) -> None:
    previous = RolloutStatus(revision="r2", stable_revision="r1", failed_revision="r2")
    pools = [view("a", stable="p2", rolled=False, canary="p2", ready=1), view("b", US)]
    rolling = decide(pools, previous, rollout=rollout)
    assert rolling.pools == {"a": TARGET, "b": TARGET}
    assert rolling.status.phase == "Progressing"
    assert rolling.status.stable_revision == "r1"
    assert rolling.status.failed_revision is None
    assert rolling.events == ()
    assert not rolling.gates_due
    done = decide([view("a", stable="p2"), view("b", US, stable="p2")], rolling.status)
    assert (done.status.phase, done.status.stable_revision, done.status.summary) == (
        "Stable",
        "r2",
        "Stable",
    )
    assert done.events == ()


def test_first_deploy_is_stable_once_rolled_without_canary() -> None:
    fresh = [view("a", stable=None, rolled=False), view("b", US, stable=None, rolled=False)]
    deploying = decide(fresh, None)
    assert deploying.pools == {"a": TARGET, "b": TARGET}
    assert (deploying.status.phase, deploying.status.summary) == ("Progressing", "Progressing")
    assert deploying.events == ()
    rolled = [view("a", stable="p2"), view("b", US, stable="p2")]
    stable = decide(rolled, deploying.status, now=30)
    assert (stable.status.phase, stable.status.stable_revision) == ("Stable", "r2")
    assert stable.events == ()


def test_a_change_that_keeps_the_revision_stays_stable() -> None:
    pools = [view("a", stable="p1", target="p1"), view("b", US, stable="p1", target="p1")]
    decision = decide(pools, STABLE_R1, revision="r1")
    assert decision.status.phase == "Stable"
    assert decision.pools == {"a": TARGET, "b": TARGET}
    assert decision.events == ()


def test_a_new_pool_is_deployed_at_once_never_canaried() -> None:
    pools = [view("a", target="p1", stable="p1"), view("new", US, stable=None, rolled=False)]
    decision = decide(pools, STABLE_R1)
    assert decision.status.phase == "Progressing"
    assert decision.pools == {"a": TARGET, "new": TARGET}
    assert decision.events == ()


def test_blocked_pools_are_ignored() -> None:
    pools = [view("a", target="p1", stable="p1"), view("blocked", US, target=None)]
    decision = decide(pools, STABLE_R1, revision="r1")
    assert decision.status.phase == "Stable"
    assert set(decision.pools) == {"a"}


# --- a canary rollout, step by step ---------------------------------------------------------


def test_a_new_revision_starts_at_wave_one_with_a_canary_without_traffic() -> None:
    decision = decide(OLD, STABLE_R1, now=0)
    status = decision.status
    assert (status.phase, status.wave, status.step) == ("Progressing", 0, 0)
    assert status.started_at == status.step_entered_at == stamp(0)
    assert status.step_started_at is None
    assert (status.regions, status.stable_revision) == ([EU], "r1")
    assert status.summary == "wave 1/2 step 1/2 starting"
    assert decision.pools == {"a": PoolDirective("hold", 1, 0), "b": HOLD}
    assert reasons(decision) == ["RolloutStarted"]
    assert not decision.gates_due


def test_canaries_get_weight_once_all_of_the_wave_are_ready() -> None:
    pools = [view("a", canary="p2", ready=1), view("c", EU, canary="p2", ready=0), view("b", US)]
    first = decide(pools, STABLE_R1, now=0)
    waiting = decide(pools, first.status, now=10)
    assert waiting.status.step_started_at is None
    assert waiting.pools["a"] == PoolDirective("hold", 1, 0)
    assert "a 1/1, c 0/1 ready" in waiting.status.message
    ready = [replace(p, canary_ready=1) for p in pools]
    going = decide(ready, waiting.status, now=20)
    assert going.status.step_started_at == stamp(20)
    assert going.pools["a"] == going.pools["c"] == PoolDirective("hold", 1, 10)
    assert going.status.summary == "wave 1/2 step 1/2 weight 10"
    assert going.events == ()


def test_a_canary_of_an_old_revision_does_not_count_as_ready() -> None:
    first = decide(OLD, STABLE_R1)
    stale = decide([view("a", canary="p0", ready=1), view("b", US)], first.status, now=10)
    assert stale.status.step_started_at is None
    assert stale.pools["a"].canary_weight == 0


def test_a_canary_never_ready_rolls_back_after_the_progress_deadline() -> None:
    first = decide(OLD, STABLE_R1, now=0)
    slow = [view("a", canary="p2", ready=0), view("b", US)]
    at_deadline = decide(slow, first.status, now=600)
    assert at_deadline.status.phase == "Progressing"
    late = decide(slow, at_deadline.status, now=601)
    assert late.status.phase == "RolledBack"
    assert late.failed_check == "CanaryReady"
    assert late.status.failed_revision == "r2"
    assert late.status.summary == "rolled back: CanaryReady"
    assert late.pools == {"a": HOLD, "b": HOLD}
    (gate,) = late.status.gates
    assert (gate.pool, gate.passed, gate.value, gate.threshold) == ("a", False, 0, 1)
    [(kind, reason, message)] = late.events
    assert (kind, reason) == ("Warning", "RolledBack")
    assert "CanaryReady on a" in message
    assert "0/1 canary replicas ready" in message


def test_gates_are_due_pause_seconds_after_the_canaries_were_ready() -> None:
    running = started()
    assert running.status.step_started_at == stamp(10)
    assert not decide(A_READY, running.status, now=69).gates_due
    assert decide(A_READY, running.status, now=70).gates_due


def test_a_passed_step_moves_to_the_next_one_and_says_the_figures() -> None:
    running = started()
    passed = decide(A_READY, running.status, now=70, gates=PASS)
    status = passed.status
    assert (status.phase, status.wave, status.step) == ("Progressing", 0, 1)
    assert status.step_entered_at == stamp(70)
    assert status.step_started_at is None  # 50% of 4: 2 replicas, 1 ready
    assert passed.pools["a"] == PoolDirective("hold", 2, 0)
    assert status.gates == list(PASS.results)
    [(kind, reason, message)] = passed.events
    assert (kind, reason) == ("Normal", "RolloutStepPassed")
    assert "step 1/2 (weight 10)" in message
    assert "ErrorRatio on a (value 0.001, stable 0.002, threshold 0.01)" in message
    assert not passed.gates_due


def test_a_passed_step_whose_canaries_are_already_big_enough_starts_at_once() -> None:
    small = [view("a", desired=1, canary="p2", ready=1), view("b", US, desired=1)]
    first = decide(small, STABLE_R1, now=0)
    running = decide(small, first.status, now=10)
    passed = decide(small, running.status, now=70, gates=PASS)
    assert passed.status.step_started_at == stamp(70)
    assert passed.pools["a"] == PoolDirective("hold", 1, 50)


def test_the_last_step_promotes_the_wave_canaries_kept_until_its_stables_rolled() -> None:
    promoting = last_step_passed(OLD)
    status = promoting.status
    assert (status.phase, status.wave, status.step) == ("Promoting", 0, 1)
    assert status.summary == "promoting wave 1/2"
    assert promoting.pools == {"a": PoolDirective("target", 2, 50), "b": HOLD}
    assert reasons(promoting) == ["RolloutStepPassed"]
    rolling = [view("a", stable="p2", rolled=False, canary="p2", ready=2), view("b", US)]
    still = decide(rolling, status, now=150)
    assert still.status == status
    assert still.pools["a"] == PoolDirective("target", 2, 50)
    rolled = [view("a", stable="p2", canary="p2", ready=2), view("b", US)]
    next_wave = decide(rolled, status, now=160)
    assert (next_wave.status.phase, next_wave.status.wave, next_wave.status.step) == (
        "Progressing",
        1,
        0,
    )
    assert next_wave.status.regions == [US]
    assert next_wave.status.step_entered_at == stamp(160)
    assert next_wave.pools == {"a": TARGET, "b": PoolDirective("hold", 1, 0)}
    assert reasons(next_wave) == ["RolloutWavePromoted"]


def test_the_last_wave_promoted_is_stable() -> None:
    previous = RolloutStatus(
        revision="r2",
        stable_revision="r1",
        phase="Promoting",
        wave=1,
        step=1,
        started_at=stamp(0),
        step_entered_at=stamp(300),
        step_started_at=stamp(310),
        gates=list(PASS.results),
    )
    both = [view("a", stable="p2"), view("b", US, stable="p2", canary="p2", ready=2)]
    stable = decide(both, previous, now=400)
    status = stable.status
    assert (status.phase, status.stable_revision, status.summary) == ("Stable", "r2", "Stable")
    assert (status.wave, status.step, status.regions) == (0, 0, [])
    assert status.step_started_at is None
    assert stable.pools == {"a": TARGET, "b": TARGET}
    [(_, reason, message)] = stable.events
    assert reason == "RolloutPromoted"
    assert "every wave passed" in message


# --- failures -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failed", "words"),
    [
        (
            result("GoldenPrompt", passed=False, message="capital-of-france: regex Paris"),
            ["GoldenPrompt on a", "regex Paris"],
        ),
        (
            result("TtftP95", passed=False, value=0.9, baseline=0.4, threshold=1.5),
            ["TtftP95 on a", "value 0.9", "stable 0.4", "threshold 1.5"],
        ),
        (
            result("ErrorRatio", passed=False, value=0.08, baseline=0.01, threshold=0.01),
            ["ErrorRatio on a", "value 0.08", "stable 0.01"],
        ),
        (
            result("ItlP95", passed=False, value=0.2, baseline=0.05, threshold=1.5),
            ["ItlP95 on a", "value 0.2"],
        ),
        (
            result("Throughput", passed=False, value=20, baseline=50, threshold=0.7),
            ["Throughput on a", "value 20", "stable 50", "threshold 0.7"],
        ),
    ],
)
def test_a_failed_gate_rolls_back_at_once_naming_the_numbers(
    failed: GateResult, words: list[str]
) -> None:
    running = started()
    report = GateReport((result("ErrorRatio"), result("TtftP95", passed=None), failed))
    rolled_back = decide(A_READY, running.status, now=70, gates=report)
    status = rolled_back.status
    assert (status.phase, status.failed_revision, status.stable_revision) == (
        "RolledBack",
        "r2",
        "r1",
    )
    assert rolled_back.failed_check == failed.check
    assert status.gates[0] == failed  # failed first, then inconclusive, then passed
    assert [g.passed for g in status.gates] == [False, None, True]
    assert status.summary == f"rolled back: {failed.check}"
    assert rolled_back.pools == {"a": HOLD, "b": HOLD}  # canary gone, weight 0
    [(kind, reason, message)] = rolled_back.events
    assert (kind, reason) == ("Warning", "RolledBack")
    for word in words:
        assert word in message
    assert "wave 1/2" in message
    assert "step 1/2" in message


def test_a_rolled_back_revision_is_not_tried_again() -> None:
    rolled_back = rollback_at_step_one()
    for now, gates in ((80, None), (5000, PASS)):
        again = decide(A_READY, rolled_back.status, now=now, gates=gates)
        assert again.status == rolled_back.status
        assert again.events == ()
        assert again.failed_check == "TtftP95"
        assert again.pools == {"a": HOLD, "b": HOLD}


def test_a_rollback_keeps_promoted_waves_and_new_pools_on_the_target() -> None:
    previous = rollback_at_step_one().status.model_copy(update={"wave": 1})
    pools = [view("a", stable="p2"), view("b", US), view("new", US, stable=None)]
    held = decide(pools, previous, now=100)
    assert held.pools == {"a": TARGET, "b": HOLD, "new": TARGET}


def test_a_new_spec_after_a_rollback_starts_a_new_rollout() -> None:
    rolled_back = rollback_at_step_one()
    pools = [view("a", target="p3"), view("b", US, target="p3")]
    fresh = decide(pools, rolled_back.status, now=200, revision="r3")
    assert (fresh.status.phase, fresh.status.revision, fresh.status.failed_revision) == (
        "Progressing",
        "r3",
        None,
    )
    assert fresh.status.gates == []
    assert reasons(fresh) == ["RolloutStarted"]


def test_reverting_to_the_stable_revision_is_stable_at_once() -> None:
    back = [view("a", target="p1", canary="p2", ready=1), view("b", US, target="p1")]
    after_rollback = decide(back, rollback_at_step_one().status, now=200, revision="r1")
    assert after_rollback.status.phase == "Stable"
    assert after_rollback.status.failed_revision is None
    assert after_rollback.pools == {"a": TARGET, "b": TARGET}
    assert after_rollback.events == ()
    mid_rollout = decide(back, started().status, now=20, revision="r1")
    assert mid_rollout.status.phase == "Stable"
    assert mid_rollout.pools == {"a": TARGET, "b": TARGET}
    assert reasons(mid_rollout) == ["RolloutAbandoned"]


def test_inconclusive_gates_wait_then_roll_back_at_the_deadline() -> None:
    running = started()  # due at 70
    unknown = GateReport(
        (result("ErrorRatio"), result("TtftP95", passed=None, message="3 requests < 20"))
    )
    waiting = decide(A_READY, running.status, now=70, gates=unknown)
    assert (waiting.status.phase, waiting.status.step) == ("Progressing", 0)
    assert [g.passed for g in waiting.status.gates] == [None, True]
    assert waiting.events == ()
    assert waiting.gates_due
    assert "inconclusive" in waiting.status.message
    assert decide(A_READY, waiting.status, now=670, gates=unknown).status.phase == "Progressing"
    late = decide(A_READY, waiting.status, now=671, gates=unknown)
    assert late.status.phase == "RolledBack"
    assert late.failed_check == "Deadline"
    assert late.status.gates[0].check == "Deadline"
    [(kind, reason, message)] = late.events
    assert (kind, reason) == ("Warning", "RolledBack")
    assert "3 requests < 20" in message
    conclusive = decide(A_READY, waiting.status, now=300, gates=PASS)
    assert conclusive.status.step == 1


# --- waves ----------------------------------------------------------------------------------


def test_waves_with_nothing_to_canary_are_passed_through() -> None:
    pools = [
        view("a", target="p1", stable="p1"),
        view("b", US),
        view("c", AP, target="p1", stable="p1"),
    ]
    three = spec(waveSize=1)
    first = decide(pools, STABLE_R1, rollout=three)
    assert (first.status.wave, first.status.regions) == (1, [US])
    assert first.pools == {"a": TARGET, "b": PoolDirective("hold", 1, 0), "c": TARGET}
    promoting = first.status.model_copy(update={"phase": "Promoting", "step": 1})
    rolled = [*pools[:1], view("b", US, stable="p2"), pools[2]]
    done = decide(rolled, promoting, now=500, rollout=three)
    assert done.status.phase == "Stable"
    assert reasons(done) == ["RolloutWavePromoted", "RolloutPromoted"]


def test_explicit_waves_order_the_regions() -> None:
    pools = [view("a"), view("b", US)]
    us_first = spec(waves=[[US], [EU]])
    first = decide(pools, STABLE_R1, rollout=us_first)
    assert first.status.regions == [US]
    assert first.pools == {"a": HOLD, "b": PoolDirective("hold", 1, 0)}
