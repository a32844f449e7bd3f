"""The write-avoidance rule that makes a converged operator send nothing."""

from __future__ import annotations

import copy

from factory_operator.k8s.diff import needs_apply, with_hash

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
