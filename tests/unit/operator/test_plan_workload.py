"""Plan outputs: names, labels, args, resources, tolerations, probes, revision stability."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

from conftest import NODES, NOW, REGIONS, factory, pool

from factory_operator.plan import Observed, OperatorSettings, plan_factory


def _children(f: Any, settings: OperatorSettings, **observed: Any) -> dict[tuple[str, str], Any]:
    plan = plan_factory(f, REGIONS, Observed(now=NOW, nodes=NODES, **observed), settings)
    return {(c["kind"], c["metadata"]["name"]): c for c in plan.apply}


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    return dep["spec"]["template"]["spec"]["containers"][0]


def test_children_named_labelled_and_owned(settings: OperatorSettings) -> None:
    kids = _children(factory([pool("h100", "eu-west-1")]), settings)
    assert set(kids) == {
        ("Deployment", "llama-h100"),
        ("Service", "llama-h100"),
        ("PodDisruptionBudget", "llama-h100"),
    }
    dep = kids[("Deployment", "llama-h100")]
    labels = dep["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "inference-factory"
    assert labels["inference.factory.dev/factory"] == "llama"
    assert labels["inference.factory.dev/pool"] == "h100"
    assert labels["inference.factory.dev/region"] == "eu-west-1"
    assert labels["inference.factory.dev/jurisdiction"] == "EU"
    assert dep["spec"]["template"]["metadata"]["labels"] == labels
    assert "inference.factory.dev/revision" not in dep["spec"]["selector"]["matchLabels"]
    owner = dep["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "u-1" and owner["controller"] is True


def test_podmonitor_only_when_crd_exists(settings: OperatorSettings) -> None:
    f = factory([pool("h100", "eu-west-1")])
    assert ("PodMonitor", "llama-h100") not in _children(f, settings)
    monitor = _children(f, settings, podmonitor_crd=True)[("PodMonitor", "llama-h100")]
    targets = {r["targetLabel"] for r in monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]}
    assert targets == {"factory", "pool", "region", "jurisdiction"}


def test_nvidia_deployment(settings: OperatorSettings) -> None:
    f = factory(
        [pool("h100", "eu-west-1", count=4, replicas=2)],
        revision="abc123",
        engine={
            "args": {
                "maxModelLen": 8192,
                "gpuMemoryUtilization": 0.9,
                "enablePrefixCaching": False,
                "kvCacheDtype": "fp8",
                "quantization": "fp8",
            },
            "speculative": {"method": "ngram", "numSpeculativeTokens": 4},
            "extraArgs": ["--enable-chunked-prefill"],
        },
    )
    dep = _children(f, settings)[("Deployment", "llama-h100")]
    c = _container(dep)
    args = c["args"]
    pairs = dict(pairwise(args))
    assert c["command"] == ["vllm", "serve"]
    assert args[0] == "meta-llama/Llama-3.1-8B-Instruct"  # the model, positional
    assert pairs["--served-model-name"] == "llama-3.1-8b"
    assert pairs["--revision"] == "abc123"
    assert pairs["--tensor-parallel-size"] == "4"
    assert pairs["--max-model-len"] == "8192"
    assert pairs["--gpu-memory-utilization"] == "0.9"
    assert pairs["--kv-cache-dtype"] == "fp8" and pairs["--quantization"] == "fp8"
    assert "--no-enable-prefix-caching" in args
    assert json.loads(pairs["--speculative-config"]) == {
        "method": "ngram",
        "num_speculative_tokens": 4,
    }
    assert args[-1] == "--enable-chunked-prefill"
    assert c["image"].startswith("vllm/vllm-openai:")
    assert c["ports"][0]["containerPort"] == 8000
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1200
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    spec = dep["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    pod = spec["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"topology.kubernetes.io/region": "eu-west-1"}
    assert pod["terminationGracePeriodSeconds"] >= 60
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_neuron_inf2_pool(settings: OperatorSettings) -> None:
    f = factory(
        [
            pool(
                "inf2",
                "eu-west-1",
                "neuron",
                "inf2",
                count=2,
                nodeSelector={"node.kubernetes.io/instance-type": "inf2.24xlarge"},
                engine={
                    "args": {"enablePrefixCaching": True, "maxModelLen": 4096, "maxNumSeqs": 4}
                },
            )
        ]
    )
    dep = _children(f, settings)[("Deployment", "llama-inf2")]
    c = _container(dep)
    args = c["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == "4"  # 2 devices x 2 cores
    assert args[args.index("--block-size") + 1] == "32"
    extra = json.loads(args[args.index("--additional-config") + 1])
    assert extra["override_neuron_config"]["is_prefix_caching"] is True
    assert extra["override_neuron_config"]["pa_block_size"] == 32
    assert "--gpu-memory-utilization" not in args
    assert c["ports"][0]["containerPort"] == 8080
    assert c["resources"]["limits"]["aws.amazon.com/neuron"] == "2"
    envs = {e["name"] for e in c["env"]}
    assert "NEURON_COMPILED_ARTIFACTS" in envs
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/var/cache/neuron" in mounts
    assert c["startupProbe"]["failureThreshold"] * 10 > 1800  # compile takes longer
    pod = dep["spec"]["template"]["spec"]
    assert {"key": "aws.amazon.com/neuron", "operator": "Exists"} in pod["tolerations"]
    assert pod["nodeSelector"]["node.kubernetes.io/instance-type"] == "inf2.24xlarge"


def test_trn2_uses_current_plugin_config(settings: OperatorSettings) -> None:
    # The current plugin sizes prefix caching with vLLM's own flags, not neuron_config keys
    # (vllm-neuron features guide, "Prefix caching"): behaviour changed with issue 15.
    f = factory(
        [
            pool(
                "trn2",
                "eu-west-1",
                "neuron",
                "trn2",
                count=1,
                engine={
                    "args": {"enablePrefixCaching": True, "maxModelLen": 4096, "maxNumSeqs": 8}
                },
            )
        ]
    )
    c = _container(_children(f, settings)[("Deployment", "llama-trn2")])
    args = c["args"]
    assert "--additional-config" not in args
    assert args[args.index("--block-size") + 1] == "32"
    assert args[args.index("--num-gpu-blocks-override") + 1] == str(4096 // 32 * 8)
    assert any(e["name"] == "VLLM_CACHE_ROOT" for e in c["env"])


def test_model_sources(settings: OperatorSettings) -> None:
    hf = _container(
        _children(factory([pool("a", "eu-west-1")], credentialsSecretRef={"name": "hf"}), settings)[
            ("Deployment", "llama-a")
        ]
    )
    assert hf["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}
    s3 = _container(
        _children(
            factory(
                [pool("a", "eu-west-1")],
                uri="s3://models/llama/8b",
                credentialsSecretRef={"name": "aws"},
            ),
            settings,
        )[("Deployment", "llama-a")]
    )
    assert s3["args"][s3["args"].index("--load-format") + 1] == "runai_streamer"
    assert s3["envFrom"] == [{"secretRef": {"name": "aws"}}]
    dep = _children(factory([pool("a", "eu-west-1")], uri="pvc://weights/llama/8b"), settings)[
        ("Deployment", "llama-a")
    ]
    pvc = _container(dep)
    assert pvc["args"][0] == "/models/llama/8b"
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "model")
    assert vol["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}


def test_pool_engine_merges_over_spec_engine(settings: OperatorSettings) -> None:
    f = factory(
        [
            pool(
                "a",
                "eu-west-1",
                engine={"args": {"maxNumSeqs": 8}, "env": [{"name": "X", "value": "pool"}]},
            )
        ],
        engine={
            "args": {"maxModelLen": 4096, "maxNumSeqs": 64},
            "env": [{"name": "X", "value": "spec"}, {"name": "Y", "value": "1"}],
        },
    )
    c = _container(_children(f, settings)[("Deployment", "llama-a")])
    assert c["args"][c["args"].index("--max-num-seqs") + 1] == "8"
    assert c["args"][c["args"].index("--max-model-len") + 1] == "4096"
    assert {e["name"]: e.get("value") for e in c["env"]} == {
        "X": "pool", "Y": "1", "VLLM_ENGINE_READY_TIMEOUT_S": "1800"
    }  # fmt: skip


def test_revision_stable_and_sensitive(settings: OperatorSettings) -> None:
    def rev(**kw: Any) -> str:
        kids = _children(factory([pool("a", "eu-west-1")], **kw), settings)
        dep = kids[("Deployment", "llama-a")]
        return str(dep["metadata"]["labels"]["inference.factory.dev/revision"])

    assert rev() == rev()
    assert rev() != rev(revision="v2")
    assert rev() != rev(engine={"args": {"maxModelLen": 1024}})
    assert rev() != rev(engine={"image": "vllm/vllm-openai:v0.13.0"})
    # replicas are not part of what a pod runs
    a = _children(factory([pool("a", "eu-west-1", replicas=1)]), settings)
    b = _children(factory([pool("a", "eu-west-1", replicas=3)]), settings)
    assert (
        a[("Deployment", "llama-a")]["metadata"]["labels"]
        == b[("Deployment", "llama-a")]["metadata"]["labels"]
    )


def test_vllm_waits_for_its_engine_as_long_as_the_startup_probe(
    settings: OperatorSettings,
) -> None:
    """vLLM's own engine-ready timeout (600 s by default) would end a Neuron compile or a
    large load that the startup probe still allows; a pool's own value wins."""
    f = factory([pool("a", "eu-west-1", startupSeconds=2400)])
    env = {e["name"]: e.get("value") for e in _container(_children(f, settings)[
        ("Deployment", "llama-a")])["env"]}  # fmt: skip
    assert env["VLLM_ENGINE_READY_TIMEOUT_S"] == "2400"
    own = factory(
        [
            pool(
                "a",
                "eu-west-1",
                engine={"env": [{"name": "VLLM_ENGINE_READY_TIMEOUT_S", "value": "60"}]},
            )
        ]
    )
    env = {e["name"]: e.get("value") for e in _container(_children(own, settings)[
        ("Deployment", "llama-a")])["env"]}  # fmt: skip
    assert env["VLLM_ENGINE_READY_TIMEOUT_S"] == "60"
