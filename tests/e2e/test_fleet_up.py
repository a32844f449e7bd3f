"""`factoryctl dev up` on a running fleet whose sample factories the user has changed."""

from __future__ import annotations

import json

from tests.e2e.conftest import Fleet


def _max_replicas(fleet: Fleet) -> int:
    doc = json.loads(fleet.cluster.kubectl("get", "inferencefactory", "llama-8b", "-n",
                                           "inference", "-o", "json"))  # fmt: skip
    pool = next(p for p in doc["spec"]["pools"] if p["name"] == "h100-dub")
    return int(pool["replicas"]["max"])


def test_up_again_keeps_a_changed_sample_factory(fleet: Fleet) -> None:
    before = _max_replicas(fleet)
    doc = json.loads(fleet.cluster.kubectl("get", "inferencefactory", "llama-8b", "-n",
                                           "inference", "-o", "json"))  # fmt: skip
    index = next(i for i, p in enumerate(doc["spec"]["pools"]) if p["name"] == "h100-dub")
    path = f"/spec/pools/{index}/replicas/max"

    def patch(value: int) -> None:
        ops = json.dumps([{"op": "replace", "path": path, "value": value}])
        fleet.cluster.kubectl("patch", "inferencefactory", "llama-8b", "-n", "inference",
                              "--type=json", "-p", ops)  # fmt: skip

    patch(before + 1)  # `replicas.max` bounds scaling only: the running pods are untouched
    try:
        again = fleet.factoryctl("dev", "up", "--only", "samples")
        assert again.returncode == 0, again.stderr[-3000:]
        assert "kept as they are" in again.stderr + again.stdout
        assert _max_replicas(fleet) == before + 1
    finally:
        patch(before)
