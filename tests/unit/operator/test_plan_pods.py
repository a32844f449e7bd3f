"""Pods that behave on real clusters: drain (--shutdown-timeout), Neuron start-up flags and
scheduler, rollout deadline, spread, disruption budget, Karpenter, PodMonitor labels."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import NODES, NOW, REGIONS, factory, pool
from pydantic import ValidationError

from factory_operator.api import FleetRegion
from factory_operator.main import parse_args
from factory_operator.plan import Observed, OperatorSettings, plan_factory


def _kids(f: Any, settings: OperatorSettings, regions: Any = REGIONS, **observed: Any) -> Any:
    plan = plan_factory(f, regions, Observed(now=NOW, nodes=NODES, **observed), settings)
    return {(c["kind"], c["metadata"]["name"]): c for c in plan.apply}


def _dep(f: Any, settings: OperatorSettings, name: str = "llama-a", **kw: Any) -> Any:
    return _kids(f, settings, **kw)[("Deployment", name)]


def _args(dep: dict[str, Any]) -> list[str]:
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]  # type: ignore[no-any-return]


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_shutdown_timeout_fits_in_the_grace_period_after_the_prestop() -> None:
    settings = OperatorSettings(termination_grace_seconds=300, prestop_sleep_seconds=30)
    dep = _dep(factory([pool("a", "eu-west-1")]), settings)
    timeout = int(_value(_args(dep), "--shutdown-timeout"))
    pod = dep["spec"]["template"]["spec"]
    prestop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] == 300 and prestop == 30
    # SIGTERM comes after the preStop sleep; vLLM must have drained and exited before SIGKILL.
    assert 0 < timeout < 300 - 30
    assert timeout >= 300 - 30 - 15


def test_shutdown_timeout_default_and_user_override(settings: OperatorSettings) -> None:
    args = _args(_dep(factory([pool("a", "eu-west-1")]), settings))
    assert _value(args, "--shutdown-timeout") == "150"  # 180 - 20 - 10
    own = factory([pool("a", "eu-west-1")], engine={"extraArgs": ["--shutdown-timeout=5"]})
    args = _args(_dep(own, settings))
    assert [a for a in args if a.startswith("--shutdown-timeout")] == ["--shutdown-timeout=5"]


def test_shutdown_timeout_not_given_to_the_vllm_016_neuron_image(
    settings: OperatorSettings,
) -> None:
    inf2 = _dep(factory([pool("a", "eu-west-1", "neuron", "inf2")]), settings)
    assert "--shutdown-timeout" not in _args(inf2)  # vLLM 0.16 does not know the flag
    trn2 = _dep(factory([pool("a", "eu-west-1", "neuron", "trn2")]), settings)
    assert "--shutdown-timeout" in _args(trn2)


def test_grace_period_must_leave_time_to_drain() -> None:
    with pytest.raises(ValidationError, match="termination_grace_seconds"):
        OperatorSettings(termination_grace_seconds=25, prestop_sleep_seconds=20)


@pytest.mark.parametrize("type_", ["inf2", "trn2"])
def test_neuron_prefix_caching_is_always_explicit(settings: OperatorSettings, type_: str) -> None:
    unset = factory([pool("a", "eu-west-1", "neuron", type_)],
                    engine={"args": {"maxNumSeqs": 8, "maxModelLen": 4096}})  # fmt: skip
    args = _args(_dep(unset, settings))
    assert "--no-enable-prefix-caching" in args and "--enable-prefix-caching" not in args
    assert "--block-size" not in args
    on = factory([pool("a", "eu-west-1", "neuron", type_)],
                 engine={"args": {"enablePrefixCaching": True}})  # fmt: skip
    args = _args(_dep(on, settings))
    assert "--enable-prefix-caching" in args and "--no-enable-prefix-caching" not in args
    assert _value(args, "--block-size") == "32"


def test_nvidia_prefix_caching_left_to_vllm_when_unset(settings: OperatorSettings) -> None:
    args = _args(_dep(factory([pool("a", "eu-west-1")]), settings))
    assert not [a for a in args if "prefix-caching" in a]


def test_multi_device_neuron_pods_use_the_neuron_scheduler() -> None:
    def scheduler(count: int, settings: OperatorSettings) -> str | None:
        f = factory([pool("a", "eu-west-1", "neuron", "inf2", count=count)])
        return _dep(f, settings)["spec"]["template"]["spec"].get("schedulerName")  # type: ignore[no-any-return]

    assert scheduler(2, OperatorSettings()) == "my-scheduler"
    assert scheduler(1, OperatorSettings()) is None
    assert scheduler(2, OperatorSettings(neuron_scheduler_name="neuron-scheduler")) == (
        "neuron-scheduler"
    )
    assert scheduler(2, OperatorSettings(neuron_scheduler_name=None)) is None
    gpu = _dep(factory([pool("a", "eu-west-1", count=8)]), OperatorSettings())
    assert "schedulerName" not in gpu["spec"]["template"]["spec"]


def test_progress_deadline_above_the_startup_budget(settings: OperatorSettings) -> None:
    gpu = _dep(factory([pool("a", "eu-west-1")]), settings)
    neuron = _dep(factory([pool("a", "eu-west-1", "neuron", "inf2")]), settings)
    for dep, budget in ((gpu, settings.nvidia_startup_seconds),
                        (neuron, settings.neuron_startup_seconds)):  # fmt: skip
        probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] == budget
        assert dep["spec"]["progressDeadlineSeconds"] > budget


def test_replicas_spread_over_zones_and_nodes_without_blocking(
    settings: OperatorSettings,
) -> None:
    dep = _dep(factory([pool("a", "eu-west-1", replicas=3)]), settings)
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    for constraint in spread:
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


def test_disruption_budget_never_blocks_a_single_replica(settings: OperatorSettings) -> None:
    pdb = _kids(factory([pool("a", "eu-west-1", replicas=1)]), settings)[
        ("PodDisruptionBudget", "llama-a")
    ]
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_karpenter_do_not_disrupt_only_in_karpenter_regions() -> None:
    regions = {
        name: FleetRegion.model_validate(
            {"metadata": {"name": name}, "spec": {"jurisdiction": "US", "nodeLabelScheme": s}}
        )
        for name, s in (("kar", "karpenter"), ("auto", "eks-auto"), ("gfd", "gfd"))
    }
    f = factory([pool("k", "kar"), pool("e", "auto"), pool("g", "gfd")])

    def annotations(settings: OperatorSettings, name: str) -> dict[str, str]:
        dep = _kids(f, settings, regions)[("Deployment", name)]
        return dep["spec"]["template"]["metadata"].get("annotations", {})  # type: ignore[no-any-return]

    on = OperatorSettings()
    assert annotations(on, "llama-k") == {"karpenter.sh/do-not-disrupt": "true"}
    assert annotations(on, "llama-e") == {"karpenter.sh/do-not-disrupt": "true"}
    assert annotations(on, "llama-g") == {}
    assert annotations(OperatorSettings(karpenter_do_not_disrupt=False), "llama-k") == {}


def test_podmonitor_labels_from_settings() -> None:
    settings = OperatorSettings(podmonitor_labels={"release": "kube-prometheus-stack"})
    monitor = _kids(factory([pool("a", "eu-west-1")]), settings, podmonitor_crd=True)[
        ("PodMonitor", "llama-a")
    ]
    labels = monitor["metadata"]["labels"]
    assert labels["release"] == "kube-prometheus-stack"
    assert labels["inference.factory.dev/factory"] == "llama"


def test_command_line_sets_the_new_settings() -> None:
    settings = parse_args(
        ["--podmonitor-label", "release=prom", "--podmonitor-label", "a=b",
         "--neuron-scheduler-name", "", "--node-label-scheme", "gke"]
    )  # fmt: skip
    assert settings.podmonitor_labels == {"release": "prom", "a": "b"}
    assert settings.neuron_scheduler_name is None
    assert settings.node_label_scheme == "gke"
    with pytest.raises(SystemExit):
        parse_args(["--podmonitor-label", "release"])
    with pytest.raises(SystemExit):
        parse_args(["--node-label-scheme", "gfd2"])


def test_s3_model_through_a_service_account_needs_no_static_keys(
    settings: OperatorSettings,
) -> None:
    from factory_operator.api import InferenceFactory  # noqa: PLC0415

    body = factory([pool("a", "eu-west-1")], uri="s3://models/llama/8b").to_wire()
    body["metadata"] = {"name": "llama", "namespace": "ml", "uid": "u-1"}
    body["spec"]["serviceAccountName"] = "llama-s3-reader"
    dep = _dep(InferenceFactory.model_validate(body), settings)
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "llama-s3-reader"
    container = pod["containers"][0]
    assert "envFrom" not in container
    assert _value(container["args"], "--load-format") == "runai_streamer"
    default = _dep(factory([pool("a", "eu-west-1")]), settings)["spec"]["template"]["spec"]
    assert "serviceAccountName" not in default


def _with_spec(f: Any, **spec: Any) -> Any:
    from factory_operator.api import InferenceFactory  # noqa: PLC0415

    body = f.to_wire()
    body["metadata"] = {"name": "llama", "namespace": "ml", "uid": "u-1"}
    body["spec"].update(spec)
    return InferenceFactory.model_validate(body)


def test_caches_are_bounded_and_requested_on_node_disk(settings: OperatorSettings) -> None:
    dep = _dep(factory([pool("a", "eu-west-1", "neuron", "inf2")]), settings)
    pod = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["emptyDir"] == {"sizeLimit": "64Gi"}
    assert volumes["neuron-cache"]["emptyDir"] == {"sizeLimit": "32Gi"}
    requests = pod["containers"][0]["resources"]["requests"]
    assert requests["ephemeral-storage"] == "96Gi"
    gpu = _dep(factory([pool("a", "eu-west-1")]), settings)["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["requests"]["ephemeral-storage"] == "64Gi"


@pytest.mark.parametrize(
    ("cache", "source"),
    [
        ({"persistentVolumeClaim": "llama-cache"},
         {"persistentVolumeClaim": {"claimName": "llama-cache"}}),
        ({"hostPath": "/mnt/k8s-disks/0/cache"},
         {"hostPath": {"path": "/mnt/k8s-disks/0/cache", "type": "DirectoryOrCreate"}}),
    ],
)  # fmt: skip
def test_a_cache_volume_keeps_weights_and_compiled_graphs(
    settings: OperatorSettings, cache: dict[str, str], source: dict[str, Any]
) -> None:
    f = _with_spec(factory([pool("a", "eu-west-1", "neuron", "inf2")]), cache=cache)
    pod = _dep(f, settings)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {k: v for k, v in volumes["cache"].items() if k != "name"} == source
    assert "neuron-cache" not in volumes
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/root/.cache"]["name"] == "cache"
    assert mounts["/var/cache/neuron"] == {
        "name": "cache",
        "mountPath": "/var/cache/neuron",
        "subPath": "neuron",
    }
    assert "ephemeral-storage" not in pod["containers"][0]["resources"]["requests"]


def test_cache_takes_exactly_one_source() -> None:
    with pytest.raises(ValidationError):
        _with_spec(factory([pool("a", "eu-west-1")]), cache={"hostPath": "relative/dir"})


def test_startup_budget_per_pool(settings: OperatorSettings) -> None:
    dep = _dep(factory([pool("a", "eu-west-1", "neuron", "inf2", startupSeconds=5400)]), settings)
    probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == 5400
    assert dep["spec"]["progressDeadlineSeconds"] > 5400
