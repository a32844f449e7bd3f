"""The rollout inside plan_factory: the state machine's directives as children and status.

A factory whose stables run an older revision gets, in its canary region, a canary
Deployment (track label, own selector) next to a stable it leaves as it runs (neither
applied nor deleted), the router's split in status.pools[].canary, and nothing in the
regions of later waves; a rolled-back or unwanted canary is deleted.
"""

from __future__ import annotations

from typing import Any

from conftest import NODES, NOW, REGIONS, factory, pool

from factory_operator.api import InferenceFactory
from factory_operator.api.rollout import GateResult
from factory_operator.plan import Observed, OperatorSettings, Plan, plan_factory
from factory_operator.plan.observed import ChildRef, DeploymentInfo
from factory_operator.plan.rollout import GateReport

TRACK = "inference.factory.dev/track"
ROLLOUT = {"steps": [{"weight": 10, "pauseSeconds": 30}, {"weight": 50, "pauseSeconds": 30}]}
POOLS = [pool("dub", "eu-west-1", replicas=2), pool("fra", "eu-central-1", replicas=2)]


def _factory(status: dict[str, Any] | None = None, **rollout: Any) -> InferenceFactory:
    data = factory(POOLS, status=status).model_dump(by_alias=True, exclude_none=True)
    data["spec"]["rollout"] = {**ROLLOUT, **rollout}
    return InferenceFactory.model_validate(data)


def _stable(name: str, revision: str, replicas: int = 2) -> DeploymentInfo:
    return DeploymentInfo(
        name=f"llama-{name}",
        pool=name,
        spec_replicas=replicas,
        ready_replicas=replicas,
        updated_replicas=replicas,
        generation=1,
        observed_generation=1,
        revision=revision,
    )


def _children(*names: str) -> list[ChildRef]:
    return [ChildRef("apps/v1", "Deployment", f"llama-{n}", n.removesuffix("-canary"))
            for n in names]  # fmt: skip


def _world(canary: DeploymentInfo | None = None, now: str = NOW) -> Observed:
    deployments = {"dub": _stable("dub", "old1"), "fra": _stable("fra", "old2")}
    names = ["dub", "fra"] + (["dub-canary"] if canary else [])
    return Observed(
        now=now,
        nodes=NODES,
        deployments=deployments,
        canaries={"dub": canary} if canary else {},
        children=_children(*names),
    )


def _plan(f: InferenceFactory, world: Observed, gates: GateReport | None = None) -> Plan:
    return plan_factory(f, REGIONS, world, OperatorSettings(), gates=gates)


def _deployments(plan: Plan) -> dict[str, dict[str, Any]]:
    return {c["metadata"]["name"]: c for c in plan.apply if c["kind"] == "Deployment"}


def _status(plan: Plan) -> dict[str, Any]:
    return plan.status.to_wire()


def test_a_new_revision_starts_a_canary_in_the_first_region_only() -> None:
    plan = _plan(_factory(), _world())
    deps = _deployments(plan)
    assert set(deps) == {"llama-dub-canary"}  # both stables held: not applied
    assert not [c for c in plan.delete if c.kind == "Deployment"]  # and not deleted
    canary = deps["llama-dub-canary"]
    assert canary["metadata"]["labels"][TRACK] == "canary"
    assert canary["spec"]["selector"]["matchLabels"][TRACK] == "canary"
    assert canary["spec"]["template"]["metadata"]["labels"][TRACK] == "canary"
    assert canary["spec"]["replicas"] == 1  # ceil(2 x 10%)
    status = _status(plan)
    pools = {p["name"]: p for p in status["pools"]}
    assert pools["dub"]["canary"] == {
        "revision": canary["spec"]["template"]["metadata"]["labels"][
            "inference.factory.dev/revision"
        ],
        "weight": 0,  # not ready yet: no traffic
        "desiredReplicas": 1,
        "readyReplicas": 0,
    }
    assert "canary" not in pools["fra"]
    # A held stable reports what it runs.
    assert pools["dub"]["revision"] == "old1"
    assert pools["dub"]["readyReplicas"] == 2
    assert status["rollout"]["phase"] == "Progressing"
    assert status["rollout"]["regions"] == ["eu-west-1"]
    assert [e.reason for e in plan.events] == ["RolloutStarted"]


def _ready_canary(plan: Plan, replicas: int = 1) -> DeploymentInfo:
    revision = _status(plan)["pools"][0]["canary"]["revision"]
    return DeploymentInfo(
        name="llama-dub-canary",
        pool="dub",
        spec_replicas=replicas,
        ready_replicas=replicas,
        updated_replicas=replicas,
        generation=1,
        observed_generation=1,
        revision=revision,
    )


def test_a_ready_canary_gets_its_weight_then_its_gates_are_due() -> None:
    first = _plan(_factory(), _world())
    canary = _ready_canary(first)
    second = _plan(_factory(status=_status(first)), _world(canary))
    pools = {p["name"]: p for p in _status(second)["pools"]}
    assert pools["dub"]["canary"]["weight"] == 10
    assert pools["dub"]["canary"]["readyReplicas"] == 1
    assert _status(second)["rollout"]["stepStartedAt"] == NOW
    assert second.gates is None  # pauseSeconds not over
    later = _plan(_factory(status=_status(second)), _world(canary, now="2026-01-01T00:00:31Z"))
    assert later.gates is not None
    assert later.gates.step.weight == 10
    assert later.gates.pools == ((
        "dub", pools["dub"]["canary"]["revision"], "old1"),)  # fmt: skip


def test_a_failed_gate_rolls_back_and_deletes_the_canary() -> None:
    first = _plan(_factory(), _world())
    canary = _ready_canary(first)
    second = _plan(_factory(status=_status(first)), _world(canary))
    failed = GateReport(
        (
            GateResult(
                check="TtftP95",
                pool="dub",
                passed=False,
                value=0.9,
                baseline=0.3,
                threshold=1.5,
                message="TTFT p95 3.0x the stable's",
            ),
        )
    )
    late = "2026-01-01T00:00:31Z"
    third = _plan(_factory(status=_status(second)), _world(canary, now=late), failed)
    assert "llama-dub-canary" not in _deployments(third)
    assert ("Deployment", "llama-dub-canary") in {(c.kind, c.name) for c in third.delete}
    assert not {("Deployment", "llama-dub"), ("Deployment", "llama-fra")} & {
        (c.kind, c.name) for c in third.delete
    }
    status = _status(third)
    assert status["rollout"]["phase"] == "RolledBack"
    assert all("canary" not in p for p in status["pools"])
    rolled = next(c for c in status["conditions"] if c["type"] == "RolledBack")
    assert (rolled["status"], rolled["reason"]) == ("True", "TtftP95")
    warning = next(e for e in third.events if e.reason == "RolledBack")
    assert warning.type == "Warning"
    assert "TtftP95" in warning.message


def test_without_spec_rollout_every_deployment_rolls_at_once() -> None:
    f = factory(POOLS)
    plan = _plan(f, _world())
    assert set(_deployments(plan)) == {"llama-dub", "llama-fra"}
    status = _status(plan)
    assert status["rollout"]["revision"]
    assert not any(c["type"] == "RolledBack" for c in status["conditions"])


def test_an_orphaned_canary_is_deleted() -> None:
    """A canary Deployment the status does not want (e.g. left by a killed operator after
    a rollback it had not yet recorded) goes with the other unwanted children."""
    f = factory(POOLS)
    stray = _stable("dub-canary", "new1", replicas=1)
    plan = _plan(f, _world(stray))
    assert ("Deployment", "llama-dub-canary") in {(c.kind, c.name) for c in plan.delete}


def _rolled_back() -> Plan:
    first = _plan(_factory(), _world())
    canary = _ready_canary(first)
    second = _plan(_factory(status=_status(first)), _world(canary))
    failed = GateReport((GateResult(check="TtftP95", pool="dub", passed=False, message="slow"),))
    late = "2026-01-01T00:00:31Z"
    return _plan(_factory(status=_status(second)), _world(canary, now=late), failed)


def test_a_blocked_pool_does_not_make_a_rolled_back_revision_new() -> None:
    """The FleetRegion of another pool deleted (or residency narrowed): the engines did not
    change, so the factory revision stays, and the rolled-back revision is not tried again."""
    back = _status(_rolled_back())
    rolled_back = back["rollout"]
    regions = {k: v for k, v in REGIONS.items() if k != "eu-central-1"}
    world = _world(now="2026-01-01T00:01:00Z")
    plan = plan_factory(_factory(status=back), regions, world, OperatorSettings())
    status = _status(plan)["rollout"]
    assert status["revision"] == rolled_back["revision"]
    assert status["phase"] == "RolledBack"
    assert "llama-dub-canary" not in _deployments(plan)
    assert "RolloutStarted" not in [e.reason for e in plan.events]


def test_a_blocked_pool_does_not_restart_a_rollout_in_progress() -> None:
    first = _plan(_factory(), _world())
    canary = _ready_canary(first)
    second = _plan(_factory(status=_status(first)), _world(canary))
    regions = {k: v for k, v in REGIONS.items() if k != "eu-central-1"}
    world = _world(canary, now="2026-01-01T00:00:10Z")
    plan = plan_factory(_factory(status=_status(second)), regions, world, OperatorSettings())
    before, after = _status(second)["rollout"], _status(plan)["rollout"]
    assert after["revision"] == before["revision"]
    assert after["stepStartedAt"] == before["stepStartedAt"]  # the step's clock runs on
    assert [e.reason for e in plan.events] == ["PoolStopped"]
