"""The rollout state machine (plan.rollout.next_rollout) across calls: a rollout paused,
resumed, promoted by hand, replaced by a new revision, re-judged or fed odd stamps after a
restart, then a whole rollout driven call by call, fed its own status, to check it never
double-steps and is idempotent. One call's paths: test_rollout_machine.py."""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    at,
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

from factory_operator.api.rollout import RolloutStatus
from factory_operator.plan.rollout import GateReport, PoolDirective, PoolView, next_rollout

# --- pause, resume, promote -----------------------------------------------------------------


def test_pause_freezes_everything_and_resume_restarts_the_step_clock() -> None:
    running = started()
    paused_spec = spec(paused=True)
    paused = decide(A_READY, running.status, now=20, rollout=paused_spec)
    assert paused.status.phase == "Paused"
    assert paused.status.summary == "paused at wave 1/2 step 1/2"
    assert paused.pools == running.pools  # weight kept
    assert reasons(paused) == ["RolloutPaused"]
    assert not paused.gates_due
    later = decide(A_READY, paused.status, now=5000, gates=PASS, rollout=paused_spec)
    assert later.status == paused.status  # no judgement, no deadline
    assert later.events == ()
    assert decide([view("a"), view("b", US)], paused.status, now=5000, rollout=paused_spec).pools[
        "a"
    ] == PoolDirective("hold", 1, 10)
    resumed = decide(A_READY, later.status, now=6000)
    assert resumed.status.phase == "Progressing"
    assert resumed.status.step_started_at == resumed.status.step_entered_at == stamp(6000)
    assert reasons(resumed) == ["RolloutResumed"]
    assert not resumed.gates_due
    assert decide(A_READY, resumed.status, now=6060).gates_due
    assert decide(A_READY, resumed.status, now=6010).events == ()


def test_a_rollout_started_paused_creates_its_canary_without_traffic() -> None:
    paused = decide(OLD, STABLE_R1, rollout=spec(paused=True))
    assert paused.status.phase == "Paused"
    assert reasons(paused) == ["RolloutStarted", "RolloutPaused"]
    assert paused.pools["a"] == PoolDirective("hold", 1, 0)


def test_resume_before_the_canaries_were_ready_restarts_the_readiness_deadline() -> None:
    first = decide(OLD, STABLE_R1, now=0)
    paused = decide(OLD, first.status, now=10, rollout=spec(paused=True))
    resumed = decide(OLD, paused.status, now=3000)
    assert resumed.status.phase == "Progressing"
    assert (resumed.status.step_entered_at, resumed.status.step_started_at) == (stamp(3000), None)
    assert decide(OLD, resumed.status, now=3600).status.phase == "Progressing"
    assert decide(OLD, resumed.status, now=3601).failed_check == "CanaryReady"


def test_pause_is_ignored_while_promoting() -> None:
    promoting = last_step_passed(OLD)
    rolled = [view("a", stable="p2", canary="p2", ready=2), view("b", US)]
    on = decide(rolled, promoting.status, now=160, rollout=spec(paused=True))
    assert (on.status.phase, on.status.wave) == ("Progressing", 1)


def test_manual_promote_rolls_every_pool_then_is_stable() -> None:
    running = started()
    promote = spec(promote="r2")
    promoting = decide(A_READY, running.status, now=20, rollout=promote)
    assert promoting.status.phase == "Promoting"
    assert promoting.status.summary == "promoting everywhere"
    assert promoting.status.regions == [EU, US]
    assert promoting.pools == {"a": PoolDirective("target", 1, 10), "b": TARGET}
    assert not promoting.gates_due
    rolled = [view("a", stable="p2", canary="p2", ready=1), view("b", US, stable="p2")]
    done = decide(rolled, promoting.status, now=60, rollout=promote)
    assert (done.status.phase, done.status.stable_revision) == ("Stable", "r2")
    [(_, reason, message)] = done.events
    assert reason == "RolloutPromoted"
    assert "manual" in message


@pytest.mark.parametrize("paused", [False, True])
def test_manual_promote_wins_over_pause_and_works_from_the_start(paused: bool) -> None:
    promote = spec(promote="r2", paused=paused)
    at_start = decide(OLD, STABLE_R1, rollout=promote)
    assert at_start.status.phase == "Promoting"
    assert at_start.pools == {"a": TARGET, "b": TARGET}  # canary without traffic: removed
    assert reasons(at_start) == ["RolloutStarted"]
    held = decide(A_READY, started().status, now=20, rollout=spec(paused=True))
    from_pause = decide(A_READY, held.status, now=30, rollout=promote)
    assert from_pause.status.phase == "Promoting"
    assert from_pause.pools["a"] == PoolDirective("target", 1, 10)


def test_manual_promote_of_a_rolled_back_revision() -> None:
    rolled_back = rollback_at_step_one()
    promoting = decide(A_READY, rolled_back.status, now=100, rollout=spec(promote="r2"))
    assert promoting.status.phase == "Promoting"
    assert promoting.status.failed_revision is None
    assert promoting.failed_check is None
    assert promoting.pools == {"a": TARGET, "b": TARGET}  # its canary stays removed


def test_a_promote_of_another_revision_is_ignored() -> None:
    running = started()
    stale = decide(A_READY, running.status, now=20, rollout=spec(promote="r1"))
    assert stale.status == decide(A_READY, running.status, now=20).status
    rolled_back = rollback_at_step_one()
    assert decide(A_READY, rolled_back.status, rollout=spec(promote="r1")).status == (
        rolled_back.status
    )


# --- revisions changing, restarts -----------------------------------------------------------


def test_a_new_revision_mid_rollout_replaces_it_from_wave_one() -> None:
    previous = RolloutStatus(
        revision="r2",
        stable_revision="r1",
        phase="Progressing",
        wave=1,
        step=0,
        started_at=stamp(0),
        step_entered_at=stamp(300),
        step_started_at=stamp(310),
        gates=list(PASS.results),
    )
    pools = [view("a", target="p3", stable="p2"), view("b", US, target="p3", canary="p2", ready=1)]
    fresh = decide(pools, previous, now=400, revision="r3")
    status = fresh.status
    assert (status.phase, status.revision, status.wave, status.step) == ("Progressing", "r3", 0, 0)
    assert (status.started_at, status.gates) == (stamp(400), [])
    assert fresh.pools == {"a": PoolDirective("hold", 1, 0), "b": HOLD}
    [(_, reason, message)] = fresh.events
    assert reason == "RolloutStarted"
    assert "replaces the rollout of r2" in message


def test_a_new_revision_with_nothing_to_canary_abandons_the_rollout() -> None:
    pools = [view("a", target="p1", stable="p1", canary="p2", ready=1), view("b", US, target="p1")]
    pools[1] = view("b", US, target="p1", stable="p1")
    calm = decide(pools, started().status, now=20, revision="r9")
    assert (calm.status.phase, calm.status.stable_revision) == ("Stable", "r9")
    assert calm.pools == {"a": TARGET, "b": TARGET}
    assert reasons(calm) == ["RolloutAbandoned"]


def test_judging_twice_never_skips_a_step() -> None:
    running = started()
    once = decide(A_READY, running.status, now=70, gates=PASS)
    again = decide(A_READY, running.status, now=75, gates=PASS)  # status write lost: re-judged
    assert (once.status.wave, once.status.step) == (again.status.wave, again.status.step) == (0, 1)
    twice = decide(A_READY, once.status, now=75, gates=PASS)  # status written, judged again
    assert twice.status == once.status
    assert twice.events == ()


def test_a_call_with_gates_not_due_changes_nothing() -> None:
    running = started()
    for gates in (None, PASS, GateReport((result("TtftP95", passed=False),))):
        same = decide(A_READY, running.status, now=30, gates=gates)
        assert same.status == running.status
        assert same.events == ()


def test_unparsable_timestamps_read_as_absent() -> None:
    running = started()
    broken = running.status.model_copy(
        update={"step_entered_at": "yesterday", "step_started_at": "soon"}
    )
    repaired = decide(A_READY, broken, now=40)
    assert repaired.status.step_entered_at == repaired.status.step_started_at == stamp(40)
    lenient = running.status.model_copy(update={"step_started_at": "2026-01-01T00:00:10+00:00"})
    assert decide(A_READY, lenient, now=70).gates_due


def test_steps_removed_mid_rollout_are_clamped() -> None:
    running = started()
    ahead = running.status.model_copy(update={"step": 5, "wave": 7})
    clamped = decide(A_READY, ahead, now=20, rollout=spec(steps=[{"weight": 20}]))
    assert (clamped.status.wave, clamped.status.step) == (1, 0)


# --- a whole rollout ------------------------------------------------------------------------


@dataclass
class SimPool:
    """A pool in a simulated cluster: what is applied shows one call later, ready one more."""

    name: str
    region: str
    target: str
    stable: str | None
    desired: int = 3
    rolled: bool = True
    canary: str | None = None
    canary_ready: int = 0

    def view(self) -> PoolView:
        return PoolView(
            self.name,
            self.region,
            self.target,
            self.stable,
            self.desired,
            self.desired if self.rolled else 0,
            self.rolled,
            self.canary,
            self.canary_ready,
        )

    def apply(self, directive: PoolDirective) -> None:
        if directive.stable == "target" and self.stable != self.target:
            self.stable, self.rolled = self.target, False
        else:
            self.rolled = True
        if directive.canary_replicas == 0:
            self.canary, self.canary_ready = None, 0
        elif self.canary != self.target:
            self.canary, self.canary_ready = self.target, 0
        else:
            self.canary_ready = directive.canary_replicas


def test_a_whole_rollout_is_idempotent_and_never_double_steps() -> None:
    rollout = spec(waveSize=1)
    cluster = [
        SimPool("a", EU, "p2", "p1"),
        SimPool("b", US, "p2", "p1"),
        SimPool("c", AP, "p2", "p1", desired=10),
        SimPool("new", AP, "p2", None),
    ]
    status: RolloutStatus | None = STABLE_R1
    phases: list[str] = []
    positions: list[tuple[int, int]] = []
    events: list[str] = []
    now = 0
    for _ in range(500):
        pools = [p.view() for p in cluster]
        decision = next_rollout(rollout, "r2", pools, status, None, at(now))
        if decision.gates_due:
            report = GateReport(tuple(result("ErrorRatio", pool=p.name) for p in cluster))
            judged = next_rollout(rollout, "r2", pools, status, report, at(now))
            rejudged = next_rollout(rollout, "r2", pools, judged.status, report, at(now))
            assert rejudged.status == judged.status  # a second judgement is ignored
            assert rejudged.events == ()
            decision = replace(judged, events=decision.events + judged.events)
        again = next_rollout(rollout, "r2", pools, decision.status, None, at(now))
        assert again.status == decision.status
        assert again.events == ()
        assert again.pools == decision.pools
        status = decision.status
        events += reasons(decision)
        if not phases or phases[-1] != status.phase:
            phases.append(status.phase)
        if status.phase == "Progressing" and (status.wave, status.step) not in positions:
            positions.append((status.wave, status.step))
        for p in cluster:
            p.apply(decision.pools[p.name])
        if status.phase == "Stable":
            break
        now += 10
    assert status is not None
    assert (status.phase, status.stable_revision) == ("Stable", "r2")
    assert phases == ["Progressing", "Promoting"] * 3 + ["Stable"]
    assert positions == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert events == [
        "RolloutStarted",
        *(["RolloutStepPassed"] * 2 + ["RolloutWavePromoted"]) * 2,
        *["RolloutStepPassed"] * 2,
        "RolloutPromoted",
    ]
    assert all(p.stable == "p2" and p.canary is None for p in cluster)


def test_timestamps_in_the_future_count_from_now() -> None:
    """A step's stamps ahead of the operator's clock (another replica's clock was ahead, a
    hand edit): counted from now, so the step is judged and its deadline runs, instead of
    the rollout waiting (unalerted) until the clock reaches them."""
    skewed = started().status.model_copy(
        update={"step_entered_at": stamp(86_400), "step_started_at": stamp(86_400)}
    )
    now = decide(A_READY, skewed, now=20)
    assert now.status.step_started_at == stamp(20)
    assert now.status.step_entered_at == stamp(20)
    assert decide(A_READY, now.status, now=80).gates_due
    # Canaries never ready: rolled back at the deadline from now.
    waiting = skewed.model_copy(update={"step_started_at": None})
    later = decide(OLD, decide(OLD, waiting, now=20).status, now=20 + 601)
    assert later.status.phase == "RolledBack"
