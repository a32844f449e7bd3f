"""The write-avoidance rule that makes a converged operator send nothing."""

from __future__ import annotations

import copy

from factory_operator.k8s.diff import merge_patch, needs_apply, with_hash

KEY = "inference.factory.dev/applied-hash"
DESIRED = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "a", "namespace": "ml", "labels": {"x": "1"}},
    "spec": {"ports": [{"name": "http", "port": 8000}]},
}


def _live() -> dict:  # type: ignore[type-arg]
    live = copy.deepcopy(with_hash(DESIRED, KEY))
    live["metadata"]["resourceVersion"] = "7"  # server-added fields do not matter
    live["spec"]["clusterIP"] = "10.0.0.1"
    live["spec"]["ports"][0]["protocol"] = "TCP"
    return live


def test_converged_child_is_not_written() -> None:
    assert not needs_apply(DESIRED, _live(), KEY)


def test_missing_changed_or_drifted_child_is_written() -> None:
    assert needs_apply(DESIRED, None, KEY)
    changed = copy.deepcopy(DESIRED)
    changed["spec"]["ports"][0]["port"] = 9000
    assert needs_apply(changed, _live(), KEY)
    drifted = _live()
    drifted["metadata"]["labels"]["x"] = "2"
    assert needs_apply(DESIRED, drifted, KEY)


def test_merge_patch_nulls_what_the_desired_state_dropped() -> None:
    """A merge patch keeps what it does not mention: a dropped status field is sent as null
    (a rollout's stepStartedAt outlived its rollout in the API server without it)."""
    current = {
        "rollout": {"phase": "RolledBack", "stepStartedAt": "t1", "failedRevision": "a"},
        "costs": "dub=0.4",
        "pools": [{"name": "dub", "canary": {"weight": 10}}],
    }
    desired = {
        "rollout": {"phase": "Progressing", "failedRevision": "a"},
        "pools": [{"name": "dub"}],
    }
    assert merge_patch(current, desired) == {
        "rollout": {"phase": "Progressing", "failedRevision": "a", "stepStartedAt": None},
        "costs": None,
        "pools": [{"name": "dub"}],  # lists are replaced whole
    }
    assert merge_patch({}, desired) == desired
    assert merge_patch({"rollout": "x"}, desired) == desired
