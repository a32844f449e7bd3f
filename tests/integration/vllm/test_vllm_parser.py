"""vLLM's own `vllm serve` parser validates every command line the operator generates.

The operator's pure planner renders the Deployments of every example in deploy/examples/ and
of a table of edge cases; each engine container's arguments then go through the pinned real
vLLM's parser, its serve-time validation and `AsyncEngineArgs.from_cli_args`, all in one
subprocess of the vLLM environment (importing vLLM takes about 30 s). Cases that vLLM must
reject (a misspelled flag, a value out of its choices, a removed flag) show the check can fail.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from factory_operator.api import FleetRegion, InferenceFactory
from factory_operator.plan import Observed, OperatorSettings, plan_factory
from factory_operator.plan.settings import VLLM_VERSION
from factoryctl.vllm_env import VllmEnv
from tests.support import vllm_argcheck

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "deploy" / "examples"
NOW = "2026-01-01T00:00:00Z"
# Import ~30 s, a parser per case ~1-2 s: generous, but bounded.
PARSE_DEADLINE_SECONDS = 300


def _documents() -> Iterator[dict[str, Any]]:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield {**doc, "_file": path.name}


def _regions() -> dict[str, FleetRegion]:
    docs = [d for d in _documents() if d["kind"] == "FleetRegion"]
    regions = [
        FleetRegion.model_validate({k: v for k, v in d.items() if k != "_file"}) for d in docs
    ]
    return {r.name: r for r in regions}


def _containers(factory: InferenceFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """(deployment name, engine container) of every Deployment the planner renders."""
    plan = plan_factory(factory, _regions(), Observed(now=NOW), OperatorSettings())
    for child in plan.apply:
        if child["kind"] == "Deployment":
            yield child["metadata"]["name"], child["spec"]["template"]["spec"]["containers"][0]


def _factory(
    engine: dict[str, Any],
    *,
    kind: str = "nvidia",
    type_: str = "H100",
    count: int = 1,
    region: str = "eu-west-1",
    uri: str = "hf://meta-llama/Llama-3.1-8B-Instruct",
    revision: str | None = None,
) -> InferenceFactory:
    model: dict[str, Any] = {"name": "llama-3.1-8b-instruct", "uri": uri}
    if revision:
        model["revision"] = revision
    return InferenceFactory.model_validate(
        {
            "apiVersion": "inference.factory.dev/v1alpha1",
            "kind": "InferenceFactory",
            "metadata": {"name": "edge", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": {
                "model": model,
                "engine": engine,
                "pools": [
                    {
                        "name": "pool",
                        "region": region,
                        "accelerator": {"kind": kind, "type": type_, "count": count},
                        "replicas": {"min": 1, "max": 1},
                    }
                ],
            },
        }
    )


# id -> (factory, what vLLM must have parsed: engine-args field -> value)
EDGE_CASES: dict[str, tuple[InferenceFactory, dict[str, Any]]] = {
    "tensor-parallel-8": (_factory({}, count=8), {"tensor_parallel_size": 8}),
    "quantization-fp8": (_factory({"args": {"quantization": "fp8"}}), {"quantization": "fp8"}),
    "quantization-awq": (_factory({"args": {"quantization": "awq"}}), {"quantization": "awq"}),
    **{
        f"kv-cache-{dtype}": (
            _factory({"args": {"kvCacheDtype": dtype}}),
            {"kv_cache_dtype": dtype},
        )
        for dtype in ("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")
    },
    "speculative-ngram": (
        _factory({"speculative": {"method": "ngram", "numSpeculativeTokens": 4}}),
        {"speculative_config": {"method": "ngram", "num_speculative_tokens": 4}},
    ),
    "speculative-eagle3": (
        _factory(
            {
                "speculative": {
                    "method": "eagle3",
                    "model": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",
                    "numSpeculativeTokens": 3,
                }
            }
        ),
        {
            "speculative_config": {
                "method": "eagle3",
                "model": "yuhuili/EAGLE3-LLaMA3.1-Instruct-8B",
                "num_speculative_tokens": 3,
            }
        },
    ),
    "prefix-caching-on": (
        _factory({"args": {"enablePrefixCaching": True}}),
        {"enable_prefix_caching": True},
    ),
    "prefix-caching-off": (
        _factory({"args": {"enablePrefixCaching": False}}),
        {"enable_prefix_caching": False},
    ),
    "max-model-len-128k": (
        _factory({"args": {"maxModelLen": 131072}}),
        {"max_model_len": 131072},
    ),
    "batching-and-memory": (
        _factory(
            {
                "args": {
                    "maxNumSeqs": 64,
                    "maxNumBatchedTokens": 8192,
                    "gpuMemoryUtilization": 0.85,
                }
            }
        ),
        {"max_num_seqs": 64, "max_num_batched_tokens": 8192, "gpu_memory_utilization": 0.85},
    ),
    "hf-revision": (
        _factory({}, revision="0e9e39f249a16976918f6564b8830bc894c89659"),
        {"revision": "0e9e39f249a16976918f6564b8830bc894c89659"},
    ),
    "s3-streamer": (
        _factory({}, uri="s3://models/llama-3.1-8b"),
        {"model": "s3://models/llama-3.1-8b", "load_format": "runai_streamer"},
    ),
    "pvc-path": (
        _factory({}, uri="pvc://models-pvc/llama/8b"),
        {"model": "/models/llama/8b"},
    ),
    "extra-args": (
        _factory({"extraArgs": ["--enable-chunked-prefill", "--max-num-seqs=32"]}),
        {"max_num_seqs": 32},
    ),
    "neuron-inf2-prefix": (
        _factory(
            {"args": {"maxModelLen": 4096, "maxNumSeqs": 8, "enablePrefixCaching": True}},
            kind="neuron",
            type_="inf2",
            region="eu-central-1",
        ),
        {"tensor_parallel_size": 2, "block_size": 32, "num_gpu_blocks_override": 1024},
    ),
    "neuron-inf2-no-prefix": (
        _factory(
            {"args": {"maxModelLen": 2048, "maxNumSeqs": 4}},
            kind="neuron",
            type_="inf2",
            region="eu-central-1",
        ),
        {"num_gpu_blocks_override": 4},
    ),
    "neuron-trn2-prefix": (
        _factory(
            {"args": {"maxModelLen": 4096, "maxNumSeqs": 8, "enablePrefixCaching": True}},
            kind="neuron",
            type_="trn2",
            region="us-east-1",
        ),
        {"block_size": 32, "tensor_parallel_size": 4},
    ),
}
# Command lines vLLM must refuse, with a piece of its error: the check is only worth something
# if it can fail. (factory, change to the rendered args or None, expected error)
MUST_FAIL: dict[str, tuple[InferenceFactory, Any, str]] = {
    "misspelled-extra-flag": (
        _factory({"extraArgs": ["--enable-prefix-cachng"]}),
        None,
        "unrecognized arguments: --enable-prefix-cachng",
    ),
    "kv-cache-dtype-out-of-choices": (
        _factory({"args": {"kvCacheDtype": "fp8"}}),
        ("--kv-cache-dtype", "fp7"),
        "argument --kv-cache-dtype: invalid choice: 'fp7'",
    ),
    "misspelled-generated-flag": (
        _factory({"args": {"maxModelLen": 4096}}),
        ("--max-model-len", "--max-modle-len"),
        "unrecognized arguments: --max-modle-len",
    ),
    # Removed in vLLM 0.10; the operator stopped generating it (see plan/engine.py).
    "removed-device-flag": (
        _factory({"extraArgs": ["--device", "neuron"]}),
        None,
        "ambiguous option: --device",
    ),
}


def _mutate(args: list[str], change: Any) -> list[str]:
    """Replace a flag's value (flag, value) or a flag itself (old flag, new flag)."""
    if change is None:
        return args
    first, second = change
    if second.startswith("--"):
        return [second if a == first else a for a in args]
    at = args.index(first)
    return [*args[: at + 1], second, *args[at + 2 :]]


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for doc in _documents():
        if doc["kind"] != "InferenceFactory":
            continue
        body = {k: v for k, v in doc.items() if k != "_file"}
        body["metadata"] = {**body["metadata"], "uid": "u-1", "generation": 1}
        for name, container in _containers(InferenceFactory.model_validate(body)):
            cases.append(_case(f"example:{doc['_file']}/{name}", container))
    for case_id, (factory, _) in EDGE_CASES.items():
        for _, container in _containers(factory):
            cases.append(_case(f"edge:{case_id}", container))
    for case_id, (factory, change, _) in MUST_FAIL.items():
        for _, container in _containers(factory):
            cases.append(_case(f"bad:{case_id}", container, change))
    return cases


def _case(case_id: str, container: dict[str, Any], change: Any = None) -> dict[str, Any]:
    return {
        "id": case_id,
        "command": container["command"],
        "args": _mutate(container["args"], change),
    }


def _real_engine_case(env: VllmEnv, work: Path) -> dict[str, Any]:
    """The local fleet's real-engine sample after the engines agent's substitutions."""
    from factoryctl.agents.vllm_command import RealEngineSetup, command_line  # noqa: PLC0415
    from factoryctl.vllm_env import tiny_model_dir  # noqa: PLC0415
    from tests.unit.factoryctl.test_real_engine import sample_container  # noqa: PLC0415

    setup = RealEngineSetup(env.vllm, tiny_model_dir(env), 2048, work)
    launch = command_line(sample_container(), setup, 18000, work / "engine")
    return {"id": "real-engine:tiny-llama", "command": ["vllm", "serve"], "args": launch.argv[2:]}


@pytest.fixture(scope="module")
def verdicts(vllm_env: VllmEnv, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case parsed by the real vLLM, in one subprocess."""
    work = tmp_path_factory.mktemp("vllm-parse")
    cases, results = work / "cases.json", work / "results.json"
    cases.write_text(json.dumps([*_cases(), _real_engine_case(vllm_env, work)]))
    done = subprocess.run(
        [str(vllm_env.python), vllm_argcheck.__file__, str(cases), str(results)],
        capture_output=True,
        text=True,
        timeout=PARSE_DEADLINE_SECONDS,
        cwd=work,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    verdicts: dict[str, Any] = json.loads(results.read_text())
    return verdicts


def test_the_parser_is_the_vllm_of_the_default_nvidia_image(verdicts: dict[str, Any]) -> None:
    assert verdicts["vllm"] == f"{VLLM_VERSION}+cpu"
    assert OperatorSettings().nvidia_image == f"vllm/vllm-openai:v{VLLM_VERSION}"


def test_every_example_deployment_parses(verdicts: dict[str, Any]) -> None:
    examples = {k: v for k, v in verdicts.items() if k.startswith("example:")}
    # llama-8b-eu, llama-8b-inf2, qwen-us-in: at least one Deployment each.
    assert len({k.split("/")[0] for k in examples}) == 3, sorted(verdicts)
    rejected = {k: v["error"] for k, v in examples.items() if not v["ok"]}
    assert rejected == {}


@pytest.mark.parametrize("case_id", sorted(EDGE_CASES))
def test_edge_case_parses_to_what_the_operator_meant(
    verdicts: dict[str, Any], case_id: str
) -> None:
    verdict = verdicts[f"edge:{case_id}"]
    assert verdict["ok"], verdict.get("error")
    expected = EDGE_CASES[case_id][1]
    assert {k: verdict["parsed"][k] for k in expected} == expected
    assert verdict["parsed"]["served_model_name"] == ["llama-3.1-8b-instruct"]


@pytest.mark.parametrize("case_id", sorted(MUST_FAIL))
def test_vllm_rejects_a_bad_command_line(verdicts: dict[str, Any], case_id: str) -> None:
    verdict = verdicts[f"bad:{case_id}"]
    assert not verdict["ok"]
    assert MUST_FAIL[case_id][2] in verdict["error"]


def test_the_real_engines_substituted_command_line_parses(verdicts: dict[str, Any]) -> None:
    """What the local fleet runs for deploy/local/tiny-llama.yaml: vLLM accepts it, and the
    substitutions mean what they say (CPU sizes, the sample's own limits)."""
    verdict = verdicts["real-engine:tiny-llama"]
    assert verdict["ok"], verdict.get("error")
    parsed = verdict["parsed"]
    assert parsed["served_model_name"] == ["tiny-llama"]
    assert parsed["tensor_parallel_size"] == 1 and parsed["max_model_len"] == 512
    assert parsed["max_num_seqs"] == 16 and parsed["enable_prefix_caching"] is True
    assert Path(parsed["model"]).name.startswith("tiny-llama-")  # the tiny model's folder
